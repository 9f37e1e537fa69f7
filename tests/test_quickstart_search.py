"""The quickstart's closing search: top hits carry their true labels and are checked against the asked colour and
kind (here with a tiny random model over real easy-vqa test images, so the labelling, not the ranking, is tested)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from _serve_helpers import tiny_model_dir

from btoks.data.mini_mmeb import Sources
from btoks.quickstart import print_search, search_report, shape_labels
from btoks.serve.index import build_index

pytestmark = pytest.mark.skipif(importlib.util.find_spec("easy_vqa") is None, reason="easy-vqa not installed")


def test_search_report_labels_and_checks_a_held_out_query(tmp_path: Path, capsys) -> None:
    items = Sources().shapes("test")[:6]
    folder = tmp_path / "data" / "images" / "easyvqa" / "test"
    folder.mkdir(parents=True)
    for it in items:
        shutil.copyfile(it.path, folder / f"{it.id}.png")
    labels = shape_labels(tmp_path / "data")
    assert labels == {f"{it.id}.png": it.caption for it in items}
    build_index(tiny_model_dir(), [folder], tmp_path / "index", show_progress_bar=False)
    query = f"a {items[0].color} {items[0].shape}"  # not one of the quickstart's own demo queries
    (report,) = search_report(tmp_path / "index", tiny_model_dir(), labels, queries=(query,), k=3)
    assert report["query"] == query and len(report["hits"]) == 3
    for hit in report["hits"]:
        assert hit["label"] == labels[hit["file"]]
        assert hit["match"] == (items[0].color in hit["label"].split() and items[0].shape in hit["label"].split())
    assert report["matches"] == sum(h["match"] for h in report["hits"])
    print_search([report])
    assert "true label" in capsys.readouterr().out
