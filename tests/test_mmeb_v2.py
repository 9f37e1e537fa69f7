"""MMEB-V2 as published: every family read from its published layout, ranked as the reference, scored end to end
with a tiny model; bad input named or counted."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from _published_layout import EXPECTED, build_published, png

from btoks.data.errors import InputError
from btoks.data.mmeb_v2 import read_dataset
from btoks.data.readers import EvalGlobal, EvalLocal
from btoks.eval import registry, runner


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_published(tmp_path_factory.mktemp("pub") / "MMEB-V2")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from btoks import BToksConfig, BToksModel
    from btoks.backbones.tiny import tiny_backbone

    path = tmp_path_factory.mktemp("model") / "tiny"
    BToksModel(tiny_backbone("qwen2_vl"), BToksConfig(num_btoks=4)).save_pretrained(path)
    return path


def hash_encode(model, samples, **kw) -> np.ndarray:
    """A model-free encoder: a fixed random unit vector per distinct prompt + media (fast, deterministic)."""
    out = []
    for s in samples:
        key = f"{s.prompt}|{len(s.images)}|{len(s.video or [])}|{s.images[0].getpixel((0, 0)) if s.images else ''}"
        seed = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)
        out.append(np.random.default_rng(seed).standard_normal(16))
    v = np.asarray(out, np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class _NoModel:
    def eval(self) -> _NoModel:
        return self


def read(name: str, root: Path, **kw) -> EvalLocal | EvalGlobal:
    return read_dataset(registry.get(name), root, progress=False, **kw)


def test_every_family_reads_as_published(tree: Path) -> None:
    found = {s.name for s in runner.discover(tree)}
    assert found == set(EXPECTED)
    for name in EXPECTED:
        ev = read(name, tree)
        assert not ev.skipped, (name, ev.skipped.examples)
        assert len(ev) == (6 if name == "MVBench" else 3), name


def test_image_family_details(tree: Path) -> None:
    ok = read("OK-VQA", tree)
    assert isinstance(ok, EvalLocal)
    assert [c.text for c in ok.candidates[0]] == ["answer 0", " ", " ", "answer 0", "other"]  # blanks are candidates
    q = ok.queries[0]
    assert q.instruction.endswith("Represent the given image with the following question:")
    assert q.text == "what is shown 0?" and len(q.images) == 1  # image from the shared image-tasks/ root
    _, per_row, names = ok.dedup_candidates()
    assert names[:3] == ["answer 0", "", "other"] and per_row[0].tolist() == [0, 1, 1, 0, 2]
    t2i = read("MSCOCO_t2i", tree)
    assert not t2i.queries[0].images and t2i.names(0)[0] == "MSCOCO_t2i/c0.jpg"
    assert t2i.candidates[0][0].prompt == "Represent the given image." and len(t2i.candidates[0][0].images) == 1
    ref = read("RefCOCO-Matching", tree)  # same image, two captions: two candidates
    assert ref.names(0) == ["RefCOCO-Matching/c0.jpg:object 0", "RefCOCO-Matching/c0.jpg:object 1"]
    assert ref.candidates[0][0].text == '"object 0"'


def test_video_family_details(tree: Path) -> None:
    ucf = read("UCF101", tree)
    assert isinstance(ucf, EvalLocal) and len(ucf.corpus) == 101  # the reference's label set
    q = ucf.queries[0]
    assert q.instruction == "What activities or sports are being performed by the person in the video?"
    assert len(q.video) == 8  # 3 frame_%04d.jpg frames sampled to 8
    glob = ucf.to_global()
    assert glob.corpus_ids[:3] == ["Kayaking", "PlayingDaf", "BoxingSpeedBag"] and len(glob.corpus_ids) == 101
    nq = read("NExTQA", tree)
    assert nq.queries[0].text == ("why 0\nOptions:\n(A) option 0\n(B) option 1\n(C) option 2\n(D) option 3\n"
                                  "(E) option 4")
    assert nq.queries[0].prompt.startswith("Given a video and a question, select the most accurate answer from the "
                                           "provided candidates. Return only the exact text of your chosen answer. "
                                           "Question:  why 0")
    vm = read("Video-MME", tree)
    assert [c.text for c in vm.candidates[1]] == ["red", "green", "blue", "none"] and vm.label(1) == {"B. green": 1}
    mv = read("MVBench", tree)
    assert mv.label(1) == {"(B) right": 1.0} and mv.queries[0].video is not None
    anq = read("ActivityNetQA", tree)
    assert anq.queries[0].text == "is it sunny 0? (A) yes; (B) no." and anq.label(0) == {"no": 1.0}
    mr = read("Charades-STA", tree)  # published frame folder Charades_STA
    assert mr.label(0) == {"clip0/positive_clip": 1.0} and len(mr.candidates[0]) == 3
    assert mr.queries[0].prompt.endswith("in the given video: a person opens a door 0")
    ms = read("MomentSeeker", tree)
    insts = [ms.queries[i].instruction for i in range(3)]
    assert insts == ["Find the clip that corresponds to the given text:",
                     "Find the clip that corresponds to the given sentence and video segment:",
                     "Select the video clip that aligns with the given text and image:"]
    assert ms.queries[1].video is not None and len(ms.queries[2].images) == 1
    vtt = read("MSR-VTT", tree)  # HF config sub-folder test_1k
    assert isinstance(vtt, EvalLocal) and vtt.to_global().corpus_ids == ["vid0", "vid1", "vid2"]


def test_visdoc_details(tree: Path) -> None:
    arx = read("ViDoRe_arxivqa", tree)
    assert isinstance(arx, EvalGlobal)
    assert arx.corpus_ids == ["10", "11", "12", "13"] and arx.qrels["0"] == {"10": 1.0}  # int ids as published
    esg = read("ViDoRe_esg_reports_v2_multilingual", tree)
    assert esg.query_ids == ["0", "1", "2"] and esg.qrels["0"] == {"0": 2.0, "1": 1.0}
    en = read("ViDoRe_esg_reports_v2", tree)  # the reference's English-only subset of the same repository
    assert en.query_ids == ["0"] and en.n_filtered == 2
    rag = read("VisRAG_ArxivQA", tree)  # train split, string ids
    assert rag.corpus_ids == ["a.png", "b.png", "c.png"] and rag.corpus[0].images[0].size == (28, 28)


def test_eval_end_to_end_tiny_model(tree: Path, tiny_model: Path, tmp_path: Path) -> None:
    summary = runner.evaluate(tiny_model, tree, out_dir=tmp_path / "run", progress=False, log=None)
    assert summary["n_datasets"] == len(EXPECTED)
    from btoks.eval.report import load_run

    results = load_run(tmp_path / "run")
    assert set(results) == set(EXPECTED)
    for name, r in results.items():
        assert (r.modality, r.meta_task) == EXPECTED[name], name
        assert r.n_skipped == 0 and r.n_queries == (6 if name == "MVBench" else 3), name
        assert r.metric == ("ndcg@5" if r.modality == "visdoc" else "hit@1")
        assert r.extra["ranking"] == registry.get(name).ranking and r.extra["tie_policy"] == "reference"
        assert 0 <= r.score <= 100 and "map@5" in r.metrics
    assert set(summary["modalities"]) == {"image", "video", "visdoc"}


def test_ranking_mode_global_vs_local(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """UCF101 ranks every query against all 101 labels (global): each row alone (local) has only its own label."""
    monkeypatch.setattr(runner, "encode", hash_encode)
    spec = registry.get("UCF101")
    scores = {}
    for ranking in ("global", "local"):
        res, _ = runner.evaluate_dataset(dataclasses.replace(spec, ranking=ranking), tree, runner._LazyModel(_NoModel(), None),
                                         out_dir=tmp_path / ranking, fingerprint=ranking, use_cache=False,
                                         progress=False)
        scores[ranking] = res.score
    assert scores["local"] == 100.0 and scores["global"] < 100.0


def test_media_root_elsewhere(tree: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tree / "ImageNet-1K", data / "ImageNet-1K")
    with pytest.raises(InputError, match=r"ImageNet-1K: row 0: .*q0.jpg"):
        read("ImageNet-1K", data)
    ev = read("ImageNet-1K", data, media_root=tree)
    assert len(ev) == 3 and not ev.skipped


def _copy(tree: Path, tmp_path: Path, *parts: str) -> Path:
    data = tmp_path / "data"
    for p in parts:
        shutil.copytree(tree / p, data / p)
    return data


def test_missing_frame_folder(tree: Path, tmp_path: Path) -> None:
    data = _copy(tree, tmp_path, "MSR-VTT", "video-tasks")
    shutil.rmtree(data / "video-tasks/frames/video_ret/MSR-VTT/vid1")
    with pytest.raises(InputError, match=r"MSR-VTT: row 1: .*video_ret/MSR-VTT/vid1: video not found") as e:
        read("MSR-VTT", data)
    assert e.value.reason == "missing_file"
    ev = read("MSR-VTT", data, on_error="skip")
    assert len(ev) == 2 and ev.skipped.as_dict() == {"missing_file": 1}


def test_truncated_parquet(tree: Path, tmp_path: Path) -> None:
    data = _copy(tree, tmp_path, "ImageNet-1K")
    f = next((data / "ImageNet-1K").glob("*.parquet"))
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(InputError, match=r"ImageNet-1K: .*test-00000-of-00001.parquet: cannot read table"):
        read("ImageNet-1K", data, media_root=tree)


def test_qrels_id_not_in_corpus(tree: Path, tmp_path: Path) -> None:
    from _published_layout import table

    data = _copy(tree, tmp_path, "arxivqa_test_subsampled_beir")
    table(data / "arxivqa_test_subsampled_beir/qrels/test-00000-of-00001.parquet",
          [{"query-id": 0, "corpus-id": 10, "score": 1}, {"query-id": 1, "corpus-id": 99, "score": 1},
           {"query-id": 2, "corpus-id": 12, "score": 1}])
    with pytest.raises(InputError, match=r"ViDoRe_arxivqa: row qrels 1: .*qrels.*corpus-id '99' \(query '1'\) is not"):
        read("ViDoRe_arxivqa", data)
    ev = read("ViDoRe_arxivqa", data, on_error="skip")
    assert ev.query_ids == ["0", "2"] and ev.skipped.as_dict() == {"no_qrels": 1, "unknown_id": 1}


def test_every_row_unreadable(tree: Path, tmp_path: Path, tiny_model: Path) -> None:
    data = _copy(tree, tmp_path, "ImageNet-1K", "image-tasks")
    for k in range(3):
        png(data / "image-tasks/ImageNet-1K" / f"q{k}.jpg", k)
        (data / "image-tasks/ImageNet-1K" / f"q{k}.jpg").write_bytes(b"not an image")
    with pytest.raises(InputError, match=r"ImageNet-1K: row 0: .*q0.jpg: cannot decode image"):
        runner.evaluate(tiny_model, data, out_dir=tmp_path / "r", progress=False, log=None)
    with pytest.raises(ValueError, match=r"'ImageNet-1K'.*no query left to score \(skipped corrupt_image: 3\)"):
        runner.evaluate(tiny_model, data, out_dir=tmp_path / "r", on_error="skip", progress=False, log=None)


# ---------------------------------------------------------------- download / check


def test_download_offline_is_one_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    from btoks.cli import main
    from btoks.data.download import DownloadError, download_mmeb_v2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"cannot download VLM2Vec/MSR-VTT from the Hugging Face Hub"):
        download_mmeb_v2(tmp_path / "root", datasets=["MSR-VTT"], log=None)
    assert main(["data", "download", "mmeb-v2", "--out", str(tmp_path / "root"), "--datasets", "MSR-VTT"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("btoks data: error: cannot download VLM2Vec/MSR-VTT")


def test_download_with_substituted_fetch(tree: Path, tmp_path: Path) -> None:
    """The plan fetches each annotation repo into ROOT/<repo name> and the media archives into ROOT; archives
    are unpacked as the VLM2Vec script does. A fake hub built from the test tree stands in for the network."""
    import tarfile

    from btoks.data.download import MEDIA_REPO, check_root, download_mmeb_v2

    calls = []

    def fake_fetch(repo: str, *, repo_type: str, local_dir: str, allow_patterns: list[str]) -> str:
        calls.append((repo, Path(local_dir).relative_to(tmp_path / "root").as_posix(), tuple(allow_patterns)))
        dest = Path(local_dir)
        if repo == MEDIA_REPO:
            (dest / "image-tasks").mkdir(parents=True)
            with tarfile.open(dest / "image-tasks/mmeb_v1.tar.gz", "w:gz") as t:
                t.add(tree / "image-tasks/ImageNet-1K", "MMEB/ImageNet-1K")
            (dest / "video-tasks/frames").mkdir(parents=True)
            with tarfile.open(dest / "video-tasks/frames/video_ret.tar.gz", "w:gz") as t:
                t.add(tree / "video-tasks/frames/video_ret/MSR-VTT", "MSR-VTT")
        elif repo.endswith("MMEB_Test_Instruct"):  # the test tree keeps image subsets at its top level
            for config in {p.split("/")[0] for p in allow_patterns}:
                shutil.copytree(tree / config, dest / config, dirs_exist_ok=True)
        else:
            shutil.copytree(tree / repo.split("/")[1], dest, dirs_exist_ok=True)
        return local_dir

    download_mmeb_v2(tmp_path / "root", datasets=["ImageNet-1K", "MSR-VTT"], fetch=fake_fetch, log=None)
    assert calls == [
        ("ziyjiang/MMEB_Test_Instruct", "MMEB_Test_Instruct",
         ("ImageNet-1K/*.parquet", "ImageNet-1K/*.jsonl", "ImageNet-1K/*.json", "ImageNet-1K/*.arrow")),
        ("VLM2Vec/MSR-VTT", "MSR-VTT", ("test_1k/*.parquet", "test_1k/*.jsonl", "test_1k/*.json", "test_1k/*.arrow")),
        (MEDIA_REPO, ".", ("image-tasks/*", "video-tasks/frames/video_ret*")),
    ]
    assert (tmp_path / "root/image-tasks/ImageNet-1K/q0.jpg").is_file()  # MMEB/* moved up, as the script does
    rows = {r.name: r for r in check_root(tmp_path / "root", datasets=["ImageNet-1K", "MSR-VTT", "OK-VQA"])}
    assert rows["ImageNet-1K"].status == rows["MSR-VTT"].status == "ok" and rows["OK-VQA"].status == "missing"


def test_check_root(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from btoks.cli import main
    from btoks.data.download import check_root

    rows = {r.name: r for r in check_root(tree)}
    assert len(rows) == 78
    assert {n for n, r in rows.items() if r.status == "ok"} == set(EXPECTED)
    assert all(r.status == "missing" for n, r in rows.items() if n not in EXPECTED)
    data = _copy(tree, tmp_path, "MSR-VTT", "UCF101", "video-tasks")
    shutil.rmtree(data / "video-tasks/frames/video_ret/MSR-VTT/vid2")
    assert main(["data", "check", str(data), "--datasets", "MSR-VTT", "UCF101"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"incomplete\s+video\s+MSR-VTT\s+2 queries, skipped missing_file: 1", out)
    assert re.search(r"ok\s+video\s+UCF101\s+3 queries", out) and "incomplete: 1 ok: 1 (of 2)" in out


# ---------------------------------------------------------------- multi-process


def test_two_processes_give_the_same_scores(tree: Path, tiny_model: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): each embeds a shard, the scores equal a one-process run."""
    import os
    import subprocess
    import sys

    from btoks.eval.report import load_run

    names = ["ImageNet-1K", "MSR-VTT", "ViDoRe_arxivqa"]
    runner.evaluate(tiny_model, tree, names, out_dir=tmp_path / "one", progress=False, log=None)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "btoks.cli",
         "eval", str(tiny_model), "--data", str(tree), "--out", str(tmp_path / "two"), "--no-progress",
         "--datasets", *names], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("Overall") == 1  # only process 0 reports
    one, two = load_run(tmp_path / "one"), load_run(tmp_path / "two")
    assert set(one) == set(two) == set(names)
    for n in names:
        assert two[n].per_query == pytest.approx(one[n].per_query, abs=1e-6), n
        assert two[n].metrics == pytest.approx(one[n].metrics, abs=1e-4), n
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["processes"] == 2


def test_frames_picked_like_the_reference(tree: Path) -> None:
    """The reference takes np.linspace(0, n-1, 8) of a frame folder's frames (first and last included)."""
    from btoks.data.media import uniform_indices

    assert uniform_indices(64, 8, "linspace") == [0, 9, 18, 27, 36, 45, 54, 63]
    assert uniform_indices(64, 8) == [4, 12, 20, 28, 36, 44, 52, 60]
    assert uniform_indices(3, 8, "linspace") == uniform_indices(3, 8)  # too few frames: repeat, as before
    ev = read("MSR-VTT", tree)
    assert ev.queries.media.frame_sampling == "linspace"
