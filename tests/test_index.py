"""btoks.serve.index: round trip, incremental updates, approximate indexes, crash safety, CLI."""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from _serve_helpers import color_image, make_corpus, tiny_model, tiny_model_dir

from btoks import BToksConfig, BToksModel
from btoks.backbones.tiny import tiny_backbone
from btoks.serve import cli
from btoks.serve.index import (
    CURRENT,
    BToksIndexError,
    Index,
    IndexParams,
    build_index,
    chunk_text,
    make_faiss_index,
    search,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus")


def _sources(index: Index) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for m in index.meta:
        out.setdefault(Path(m["source"]).name, []).append(m)
    return out


def test_round_trip(model, corpus: Path, tmp_path: Path) -> None:
    report = build_index(model, [corpus], tmp_path / "idx", model_path=str(tiny_model_dir()))
    assert (
        report.count == 8 and report.added == 8 and not report.skipped
    )  # 3 images + 2 pages + video + 2 texts
    index = Index.load(tmp_path / "idx")
    assert index.header["dim"] == 64 and index.header["count"] == 8 and index.header["index_type"] == "flat"
    assert index.header["model"] == str(tiny_model_dir())
    by_name = _sources(index)
    assert sorted(by_name) == [
        "clip.mp4",
        "doc.pdf",
        "img0.png",
        "img1.jpg",
        "img2.webp",
        "notes.txt",
        "readme.md",
    ]
    assert [m["page"] for m in by_name["doc.pdf"]] == [0, 1]
    assert by_name["clip.mp4"][0]["modality"] == "video" and by_name["clip.mp4"][0]["frames"] == 8
    assert len({m["id"] for m in index.meta}) == 8

    hits = search(tmp_path / "idx", model, query_image=corpus / "img0.png", k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert Path(hits[0].source).name == "img0.png" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].score >= hits[1].score >= hits[2].score
    hits = search(tmp_path / "idx", model, query_text=(corpus / "notes.txt").read_text(), k=100)
    assert Path(hits[0].source).name == "notes.txt" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 8  # k larger than the index: everything, no padding rows
    both = search(index, model, query_text="a cat", query_image=color_image(0), k=2)
    assert len(both) == 2


def test_incremental_add_change_delete(model, corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    build_index(model, [corpus], out)
    again = build_index(model, [corpus], out)
    assert again.written is False and again.added == 0 and again.unchanged_files == 7 and again.count == 8
    first_version = (out / CURRENT).read_text()

    color_image(9).save(corpus / "new.png")
    notes = corpus / "notes.txt"
    notes.write_text("now the text talks about a circle and a square")
    st = notes.stat()
    os.utime(notes, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    report = build_index(model, [corpus], out)
    assert (report.added, report.removed, report.new_files, report.count) == (2, 1, 2, 9)
    assert (out / CURRENT).read_text() != first_version
    index = Index.load(out)
    hits = index.search(model, query_text="now the text talks about a circle and a square", k=1)
    assert Path(hits[0].source).name == "notes.txt" and hits[0].score == pytest.approx(1.0, abs=1e-4)

    (corpus / "img1.jpg").unlink()
    report = build_index(model, [corpus], out)
    assert (report.added, report.removed, report.count) == (0, 1, 8)
    assert "img1.jpg" not in _sources(Index.load(out))

    # entries of another source survive a run over a different folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("left right up down")
    report = build_index(model, [other], out)
    assert (report.added, report.removed, report.count) == (1, 0, 9)
    versions = [p for p in out.iterdir() if p.name.startswith("v-")]
    assert len(versions) <= 2  # the live one and the previous one


def test_chunking_and_bad_files_are_skipped(model, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "long.md").write_text("\n\n".join(f"paragraph {i}: the quick brown fox jumps" for i in range(20)))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (src / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    report = build_index(model, [src], tmp_path / "idx", chunk_chars=200)
    assert {Path(s["source"]).name for s in report.skipped} == {"broken.png", "broken.pdf"}
    index = Index.load(tmp_path / "idx")
    chunks = [m for m in index.meta if m["modality"] == "text"]
    assert len(chunks) > 3 and all(m["end"] - m["start"] <= 200 for m in chunks)
    assert [m["chunk"] for m in chunks] == list(range(len(chunks)))
    assert chunk_text("a b c", None) == [(0, 5)] and chunk_text("   ", None) == []


def test_hnsw_and_ivf(model, tmp_path: Path) -> None:
    rng = np.random.default_rng(
        0
    )  # clustered like real embeddings (uniform noise on a sphere has no structure)
    centres = rng.standard_normal((60, 64)).astype(np.float32)
    x = centres[rng.integers(0, 60, 3000)] + 0.3 * rng.standard_normal((3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:100] + 0.05 * rng.standard_normal((100, 64)).astype(np.float32)
    exact = make_faiss_index(x, IndexParams("flat")).search(q, 10)[1]
    for kind in ("hnsw", "ivf"):
        approx = make_faiss_index(x, IndexParams(kind)).search(q, 10)[1]
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
        assert recall >= 0.9, (kind, recall)

    src = tmp_path / "texts"
    src.mkdir()
    texts = [
        f"document {i}: "
        + " ".join(["red", "green", "blue", "cat", "dog", "river", "bank"][j % 7] for j in range(i, i + 5))
        + f" number {i * 7}"
        for i in range(24)
    ]
    for i, t in enumerate(texts):
        (src / f"{i:02d}.txt").write_text(t)
    for kind in ("hnsw", "ivf"):
        out = tmp_path / kind
        report = build_index(model, [src], out, index_type=kind, ef_search=40)
        index = Index.load(out)
        assert index.header["index_type"] == kind and len(index) == 24
        assert report.index_type == kind and report.recall_at_10 == index.params.recall_at_10 is not None
        assert kind != "hnsw" or index.params.ef_search == 40  # stored, so search uses the build's setting
        top = [Path(index.search(model, query_text=t, k=1)[0].source).stem for t in texts[:6]]
        assert top == [f"{i:02d}" for i in range(6)]
    (src / "extra.txt").write_text("an added document about the central bank")
    report = build_index(model, [src], tmp_path / "hnsw", index_type="hnsw")
    assert report.added == 1 and not report.rebuilt and report.count == 25
    report = build_index(
        model, [src], tmp_path / "hnsw", index_type="flat"
    )  # type change: rebuilt, same rows
    assert report.rebuilt and Index.load(tmp_path / "hnsw").header["index_type"] == "flat"


def _clustered(rng: np.random.Generator, n: int, dim: int = 64, clusters: int = 80) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_auto_index_is_exact_when_small_and_hnsw_with_high_recall_when_large(monkeypatch) -> None:
    import btoks.serve.index as index_mod

    monkeypatch.setattr(index_mod, "AUTO_APPROXIMATE_FROM", 3000)
    rng = np.random.default_rng(0)
    small = IndexParams("auto")
    make_faiss_index(_clustered(rng, 500), small)
    assert small.index_type == "flat" and small.recall_at_10 is None
    x = _clustered(rng, 6000)
    params = IndexParams("auto")
    index = make_faiss_index(x, params)
    assert params.index_type == "hnsw" and params.recall_at_10 is not None
    # held-out queries near the data, scored against exact search
    q = x[rng.integers(0, len(x), 200)] + 0.2 * rng.standard_normal((200, x.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = make_faiss_index(x, IndexParams("flat")).search(q, 10)[1]
    header = {"params": asdict(params), "dim": x.shape[1]}
    found = index_mod.Index(Path("."), header, [], index).search_vectors(q, 10)[1]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact, strict=True)])
    assert recall >= 0.95, recall
    assert params.recall_at_10 >= 0.95 and abs(params.recall_at_10 - recall) < 0.05
    # a deliberately weak graph is reported as such, not hidden
    weak = IndexParams("hnsw", hnsw_m=2, ef_construction=4, ef_search=1)
    make_faiss_index(x, weak)
    assert weak.recall_at_10 < params.recall_at_10 - 0.1


@pytest.mark.parametrize("fail_at", ["faiss.write_index", "os.replace"])
def test_crash_mid_write_keeps_previous_index(
    model, corpus: Path, tmp_path: Path, monkeypatch, fail_at
) -> None:
    import faiss

    out = tmp_path / "idx"
    build_index(model, [corpus], out)
    before = (out / CURRENT).read_text()
    color_image(7).save(corpus / "late.png")

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    if fail_at == "faiss.write_index":
        monkeypatch.setattr(faiss, "write_index", boom)
    else:
        monkeypatch.setattr("btoks.serve.index.os.replace", boom)
    with pytest.raises(OSError, match="simulated"):
        build_index(model, [corpus], out)
    monkeypatch.undo()

    assert (out / CURRENT).read_text() == before
    index = Index.load(out)
    assert len(index) == 8 and "late.png" not in _sources(index)
    assert search(out, model, query_image=corpus / "img2.webp", k=1)[0].score == pytest.approx(1.0, abs=1e-4)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith((".tmp", f".{CURRENT}."))]
    assert leftovers == [] and len([p for p in out.iterdir() if p.name.startswith("v-")]) == 1
    report = build_index(model, [corpus], out)  # the next run picks the file up
    assert report.added == 1 and report.count == 9


def test_model_mismatch_and_not_an_index(model, corpus: Path, tmp_path: Path) -> None:
    build_index(model, [corpus / "notes.txt"], tmp_path / "idx")
    other = BToksModel(tiny_backbone("qwen2_vl", seed=1), BToksConfig(num_btoks=4))
    with pytest.raises(BToksIndexError, match="does not match"):
        search(tmp_path / "idx", other, query_text="a cat")
    with pytest.raises(BToksIndexError, match="does not match"):
        build_index(other, [corpus / "notes.txt"], tmp_path / "idx")
    with pytest.raises(BToksIndexError, match="not a btoks index"):
        Index.load(tmp_path)


def test_cli_index_and_search(corpus: Path, tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    cli.add_index_args(sub.add_parser("index"))
    cli.add_search_args(sub.add_parser("search"))
    for action in parser._subparsers._group_actions[0].choices["index"]._actions:
        assert action.help, action.dest  # every option documented
    out = tmp_path / "idx"
    args = parser.parse_args(
        [
            "index",
            str(tiny_model_dir()),
            str(corpus),
            "--out",
            str(out),
            "--no-progress",
            "--index-type",
            "hnsw",
            "--frames",
            "4",
        ]
    )
    t = time.perf_counter()
    assert cli.run_index(args) == 0
    assert "8 entries" in capsys.readouterr().out and time.perf_counter() - t < 30
    args = parser.parse_args(["search", str(out), "the quick brown fox jumps over the lazy dog", "-k", "3"])
    assert cli.run_search(args) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln[:4].strip().rstrip(".").isdigit()]
    assert len(lines) == 3 and lines[0].split()[0] == "1." and "notes.txt" in lines[0]
    args = parser.parse_args(["search", str(out), "--image", str(corpus / "img1.jpg"), "-k", "2", "--json"])
    assert cli.run_search(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert '"rank": 1' in first and "img1.jpg" in first
