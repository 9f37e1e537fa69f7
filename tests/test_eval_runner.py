"""End-to-end tests of ``btoks.eval.runner``: fixture datasets in every published format, the tiny model,
cache, resume, error handling and a scoring-wiring check with one-hot embeddings."""

from __future__ import annotations

import argparse
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from btoks.data.readers import InputError
from btoks.eval import registry, runner
from btoks.eval.cli import add_eval_args, run_eval

N = 4  # rows / queries per dataset
IMG_Q = "<|image_1|> Represent the given image for classification"


def _png(path: Path, color: tuple[int, int, int], size: int = 28) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), color).save(buf, format="PNG")
    return buf.getvalue()


def _mp4(path: Path, n: int = 10, size: int = 32) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _image_rows(folder: Path, n: int = N) -> list[dict]:
    """MMEB-V2 image eval rows: query image + "#k", candidates "#k" (positive first) and two negatives."""
    rows = []
    for k in range(n):
        _png(folder / "images" / f"{k}.png", (60 * k, 255 - 60 * k, 90))
        cands = [f"#{k}", f"#{(k + 1) % n}", f"#{(k + 2) % n}"]
        rows.append({"qry_inst": IMG_Q, "qry_text": f"#{k}", "qry_img_path": f"images/{k}.png",
                     "tgt_inst": "", "tgt_text": cands, "tgt_img_path": ["", "", ""]})
    return rows


def build_data(root: Path) -> Path:
    """A data dir with a manifest: image (parquet), video (frame folders + mp4, JSONL), visdoc (BEIR)."""
    root.mkdir(parents=True, exist_ok=True)
    img = root / "img"
    img.mkdir()
    pq.write_table(pa.Table.from_pylist(_image_rows(img)), img / "test.parquet")

    vid = root / "vid"
    clips = []
    for k in range(N):
        if k % 2:
            _mp4(vid / "clips" / f"c{k}.mp4", n=10)
            clips.append(f"clips/c{k}.mp4")
        else:
            for f in range(8):
                _png(vid / "clips" / f"c{k}" / f"f{f}.png", (30 * f, 20 * k, 0), size=32)
            clips.append(f"clips/c{k}")
    _jsonl(vid / "test.jsonl", [
        {"qry_inst": "Find a video that contains the following visual content:", "qry_text": f"#{k} a clip",
         "qry_video_path": None, "tgt_inst": "", "tgt_text": [f"<|video_1|> #{j}" for j in (k, (k + 1) % N)],
         "tgt_img_path": None, "tgt_video_path": [clips[k], clips[(k + 1) % N]]}
        for k in range(N)])

    doc = root / "doc"
    corpus = [{"corpus-id": f"c{k}", "image": {"bytes": _png_bytes((40 * k, 0, 200)), "path": None}}
              for k in range(N + 2)]
    pq.write_table(pa.Table.from_pylist(corpus), _mk(doc) / "corpus.parquet")
    _jsonl(doc / "queries.jsonl", [{"query-id": f"q{k}", "query": f"what is on page {k}?"} for k in range(N)])
    (doc / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{k}\tc{k}\t2\nq{k}\tc{N + (k % 2)}\t1\n" for k in range(N)), encoding="utf-8")

    (root / "manifest.json").write_text(json.dumps({"datasets": [
        {"name": "tst-img", "modality": "image", "meta_task": "classification", "metric": "hit@1", "path": "img"},
        {"name": "tst-img-vqa", "modality": "image", "meta_task": "vqa", "metric": "hit@1", "path": "img"},
        {"name": "tst-vid", "modality": "video", "meta_task": "retrieval", "metric": "hit@1", "path": "vid"},
        {"name": "tst-doc", "modality": "visdoc", "meta_task": "visdoc", "metric": "ndcg@5", "path": "doc",
         "format": "visdoc", "query_instruction": "Find a document image that matches the given query:"},
    ]}), encoding="utf-8")
    return root


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from btoks import BToksConfig, BToksModel
    from btoks.backbones.tiny import tiny_backbone

    path = tmp_path_factory.mktemp("model") / "tiny"
    BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=4)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = build_data(tmp_path_factory.mktemp("eval") / "data")
    yield d
    for name in ("tst-img", "tst-img-vqa", "tst-vid", "tst-doc", "bad-img"):
        registry.unregister(name)


def _tag(sample) -> int:
    """The item number a fixture sample stands for: from its id (q3, c3) or a "#3" tag in its text."""
    m = re.search(r"(\d+)$", sample.id or "") or re.search(r"#(\d+)", sample.text)
    assert m, f"untagged sample {sample!r}"
    return int(m.group(1))


def onehot_encode(model, samples, **kw) -> np.ndarray:
    """An oracle encoder: item k -> e_k, so the positive is the only candidate with cosine 1. Document query
    q_k also leans a little towards its grade-1 page c_{N + k % 2}, so the ideal nDCG order is reachable."""
    out = np.zeros((len(samples), 16), np.float32)
    for i, s in enumerate(samples):
        out[i, _tag(s)] = 1.0
        if re.fullmatch(r"q\d+", s.id):
            out[i, N + _tag(s) % 2] = 0.3
    return out / np.linalg.norm(out, axis=1, keepdims=True)


class Counting:
    def __init__(self, fn=None) -> None:
        self.fn, self.calls, self.samples = fn, 0, 0

    def __call__(self, model, samples, **kw):
        self.calls += 1
        self.samples += len(samples)
        if self.fn is None:
            raise AssertionError("encode must not be called")
        return self.fn(model, samples, **kw)


@pytest.fixture(scope="module")
def cold_run(tiny_model: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("run") / "run"
    mp = pytest.MonkeyPatch()
    counter = Counting(runner.encode)
    mp.setattr(runner, "encode", counter)
    t0 = time.perf_counter()
    summary = runner.evaluate(tiny_model, data_dir, out_dir=out, batch_size=4, progress=False)
    dt = time.perf_counter() - t0
    mp.undo()
    assert counter.calls > 0
    return out, summary, dt


def test_end_to_end_results_and_summary(cold_run: tuple[Path, dict, float]) -> None:
    out, summary, _ = cold_run
    results = {}
    for name in ("tst-img", "tst-img-vqa", "tst-vid", "tst-doc"):
        d = json.loads((out / f"{name}.json").read_text())
        assert 0 <= d["score"] <= 100 and d["n_queries"] == N and d["skipped"] == {}
        assert d["wall_time_s"] > 0 and d["extra"]["fingerprint"]
        results[name] = d
    assert results["tst-doc"]["metric"] == "ndcg@5" and results["tst-vid"]["metric"] == "hit@1"
    on_disk = json.loads((out / "summary.json").read_text())
    assert (out / "summary.md").is_file() and (out / "summary.png").is_file()
    s = {k: v["score"] for k, v in results.items()}
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    for got in (summary, on_disk):
        assert got["overall"] == pytest.approx(mean(list(s.values())))
        assert got["modalities"]["image"]["score"] == pytest.approx(mean([s["tst-img"], s["tst-img-vqa"]]))
        assert got["modalities"]["video"]["score"] == pytest.approx(s["tst-vid"])
        assert got["modalities"]["visdoc"]["score"] == pytest.approx(s["tst-doc"])
        assert got["meta_tasks"]["image/classification"]["score"] == pytest.approx(s["tst-img"])
        assert got["meta_tasks"]["image/vqa"]["score"] == pytest.approx(s["tst-img-vqa"])
        assert got["meta_tasks"]["visdoc/visdoc"]["score"] == pytest.approx(s["tst-doc"])
    assert (out / "cache" / "tst-img.npz").is_file()


def test_cache_skips_encoding(cold_run: tuple[Path, dict, float], tiny_model: Path, data_dir: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    out, summary, cold = cold_run
    from btoks.model import BToksModel

    monkeypatch.setattr(runner, "encode", Counting())  # any encode call fails the test
    monkeypatch.setattr(BToksModel, "from_pretrained", Counting())  # and so does loading the model
    t0 = time.perf_counter()
    again = runner.evaluate(tiny_model, data_dir, out_dir=out, resume=False, progress=False, log=None)
    warm = time.perf_counter() - t0
    # per-dataset wall time (read + embed + score) excludes the shared summary plot, which costs the same
    per_ds = [sum(r["wall_time_s"] for r in s["datasets"].values()) for s in (summary, again)]
    print(f"\ncold {cold:.2f}s, cached {warm:.2f}s (incl. summary plot); per-dataset work {per_ds[0]:.2f}s -> "
          f"{per_ds[1]:.3f}s, speed-up {per_ds[0] / per_ds[1]:.0f}x")
    assert again["datasets"].keys() == summary["datasets"].keys()
    for name, d in summary["datasets"].items():
        assert again["datasets"][name]["score"] == pytest.approx(d["score"])
    assert json.loads((out / "tst-vid.json").read_text())["extra"]["encoded"] == 0


def test_resume_after_interruption(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"

    def crash_on_video(model, samples, **kw):
        if any(s.video for s in samples):
            raise RuntimeError("killed")
        return onehot_encode(model, samples)

    first = Counting(crash_on_video)
    monkeypatch.setattr(runner, "encode", first)
    with pytest.raises(RuntimeError, match="killed"):
        runner.evaluate(tiny_model, data_dir, out_dir=out, progress=False, log=None)
    assert (out / "tst-img.json").is_file() and not (out / "tst-vid.json").exists()
    done_mtime = (out / "tst-img.json").stat().st_mtime_ns

    second = Counting(onehot_encode)
    monkeypatch.setattr(runner, "encode", second)
    logs: list[str] = []
    summary = runner.evaluate(tiny_model, data_dir, out_dir=out, progress=False, log=logs.append)
    assert any("tst-img: done already" in m for m in logs) and any("tst-img-vqa: done already" in m for m in logs)
    assert (out / "tst-img.json").stat().st_mtime_ns == done_mtime
    vid = json.loads((out / "tst-vid.json").read_text())
    assert vid["extra"]["cached"] == N  # the query side encoded before the crash came from the cache
    assert summary["n_datasets"] == 4

    third = Counting()
    monkeypatch.setattr(runner, "encode", third)
    runner.evaluate(tiny_model, data_dir, out_dir=out, progress=False, log=None)  # all done: nothing to do
    assert third.calls == 0


def test_oracle_embeddings_score_100(tmp_path: Path, tiny_model: Path, data_dir: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "encode", onehot_encode)
    summary = runner.evaluate(tiny_model, data_dir, out_dir=tmp_path / "oracle", use_cache=False, progress=False,
                              log=None)
    assert {k: v["score"] for k, v in summary["datasets"].items()} == pytest.approx(
        {"tst-img": 100.0, "tst-img-vqa": 100.0, "tst-vid": 100.0, "tst-doc": 100.0})
    # and an anti-oracle (image queries pushed away from their positive) scores 0
    monkeypatch.setattr(runner, "encode", lambda m, s, **kw: onehot_encode(m, s) * np.array(
        [[-1.0 if x.images else 1.0] for x in s], np.float32))
    anti = runner.evaluate(tiny_model, data_dir, ["tst-img"], tmp_path / "anti", use_cache=False, progress=False,
                           log=None)
    assert anti["datasets"]["tst-img"]["score"] == 0.0


def _bad_data(root: Path, how: str) -> Path:
    img = root / "bad"
    rows = _image_rows(img)
    bad = img / "images" / "1.png"
    if how == "garbage":
        bad.write_bytes(b"not a png at all")
    else:  # valid header, truncated pixel data: passes the reader's header check, fails at decode time
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:200])
    _jsonl(img / "test.jsonl", rows)
    (root / "manifest.json").write_text(json.dumps([{"name": "bad-img", "modality": "image",
                                                     "meta_task": "classification", "metric": "hit@1",
                                                     "path": "bad"}]))
    return root


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_on_error(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    data = _bad_data(tmp_path / "data", how)
    monkeypatch.setattr(runner, "encode", onehot_encode)
    with pytest.raises(InputError, match=r"bad-img: row 1: .*1\.png") as e:
        runner.evaluate(tiny_model, data, out_dir=tmp_path / "r1", progress=False, log=None)
    assert e.value.dataset == "bad-img" and e.value.row == 1
    summary = runner.evaluate(tiny_model, data, out_dir=tmp_path / "r2", on_error="skip", progress=False, log=None)
    d = json.loads((tmp_path / "r2" / "bad-img.json").read_text())
    assert d["skipped"] == {"corrupt_image": 1} and d["n_queries"] == N - 1 and d["score"] == 100.0
    assert summary["skipped_total"] == 1
    registry.unregister("bad-img")


def test_all_rows_skipped_is_an_error(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skipping every row must not yield a NaN score that silently drags down the averages."""
    data = _bad_data(tmp_path / "data", "garbage")
    for png in (data / "bad" / "images").glob("*.png"):
        png.write_bytes(b"not a png at all")
    monkeypatch.setattr(runner, "encode", onehot_encode)
    with pytest.raises(ValueError, match=rf"'bad-img'.*no query left to score \(skipped corrupt_image: {N}\)"):
        runner.evaluate(tiny_model, data, out_dir=tmp_path / "r", on_error="skip", progress=False, log=None)
    assert not (tmp_path / "r" / "bad-img.json").exists()
    registry.unregister("bad-img")


def test_discover_published_layout(tmp_path: Path) -> None:
    """Without a manifest, registry datasets are found by folder (or table file) name, aliases included."""
    data = tmp_path / "mmeb"
    pq.write_table(pa.Table.from_pylist(_image_rows(data / "ImageNet-1K")), data / "ImageNet-1K" / "test.parquet")
    _jsonl(data / "N24News.jsonl", [{"qry_text": "x", "tgt_text": ["a", "b"]}])
    _jsonl(data / "arxivqa" / "corpus.jsonl", [{"corpus-id": "d1", "image": "d1.png"}])  # a BEIR folder
    _mk(data / "docvqa")  # not BEIR: not taken for ViDoRe_docvqa (on a case-insensitive disk it is DocVQA/)
    found = {s.name: s for s in runner.discover(data)}
    assert set(found) == {"ImageNet-1K", "N24News", "ViDoRe_arxivqa"}
    assert runner.locate(found["N24News"], data).name == "N24News.jsonl"
    assert runner.locate(found["ViDoRe_arxivqa"], data).name == "arxivqa"
    assert [s.name for s in runner.discover(data, ["imagenet-1k"])] == ["ImageNet-1K"]
    with pytest.raises(FileNotFoundError, match="MSCOCO_t2i"):
        runner.discover(data, ["MSCOCO_t2i"])


def test_cli(tmp_path: Path, tiny_model: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture) -> None:
    parser = add_eval_args(argparse.ArgumentParser())
    for action in parser._actions:
        assert action.help, action.dest
    monkeypatch.setattr(runner, "encode", onehot_encode)
    args = parser.parse_args([str(tiny_model), "--data", str(data_dir), "--datasets", "tst-doc", "--out",
                              str(tmp_path / "cli"), "--batch-size", "2", "--no-cache", "--no-progress"])
    assert run_eval(args) == 0
    assert "Overall 100.00 over 1 datasets" in capsys.readouterr().out
    assert not (tmp_path / "cli" / "cache").exists()
