"""Run summaries (MMEB-V2 aggregation) and run comparison (paired bootstrap, Wilcoxon)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import wilcoxon

from btoks.eval import registry
from btoks.eval.cli import add_compare_args, add_report_args, run_compare, run_report
from btoks.eval.compare import compare, compare_results, paired_bootstrap
from btoks.eval.report import (
    SCHEMA,
    DatasetResult,
    aggregate,
    load_run,
    save_result,
    write_summary,
)


def result(name: str, per_query: list[float], **kw: object) -> DatasetResult:
    spec = registry.get(name)
    return DatasetResult.from_metrics(spec, {spec.metric: np.asarray(per_query, dtype=float)}, **kw)


def make_run(folder: Path, scores: dict[str, list[float]]) -> Path:
    for name, pq in scores.items():
        save_result(folder, result(name, pq, skipped={"missing_file": 1} if name == "VOC2007" else None,
                                   wall_time_s=1.5))
    return folder


BASE = {
    "ImageNet-1K": [1, 1, 0, 1, 0],          # 60
    "VOC2007": [1, 1, 1, 1, 0],              # 80
    "OK-VQA": [1, 0, 0, 1, 0],               # 40
    "K700": [1, 1, 1, 1, 1],                 # 100
    "ViDoRe_arxivqa": [0.5, 0.5, 1.0, 0.0],  # 50
}


def test_dataset_result_schema_roundtrip(tmp_path: Path) -> None:
    r = result("ImageNet-1K", [1, 0, 1, 1], skipped={"corrupt_image": 2}, wall_time_s=3.0,
               query_ids=["a", "b", "c", "d"], extra={"model": "m"})
    assert r.score == pytest.approx(75.0) and r.n_queries == 4 and r.metric == "hit@1"
    assert r.metrics == {"hit@1": pytest.approx(75.0)} and r.n_skipped == 2
    path = save_result(tmp_path, r)
    data = json.loads(path.read_text())
    assert data["schema"] == SCHEMA and data["per_query"] == [1, 0, 1, 1] and data["query_ids"][0] == "a"
    assert DatasetResult.from_dict(data) == r
    with pytest.raises(ValueError, match="n_queries"):
        DatasetResult("x", "image", "vqa", "hit@1", 50.0, [1, 0], 3)
    with pytest.raises(ValueError, match="score"):
        DatasetResult("x", "image", "vqa", "hit@1", 40.0, [1, 0], 2)


def test_aggregate_like_mmeb(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", BASE)
    (run / "notes.json").write_text('{"unrelated": true}')  # ignored
    res = load_run(run)
    assert list(res) == ["ImageNet-1K", "VOC2007", "OK-VQA", "K700", "ViDoRe_arxivqa"]  # MMEB order
    s = aggregate(res)
    assert s["meta_tasks"]["image/classification"]["score"] == pytest.approx(70.0)
    assert s["meta_tasks"]["image/vqa"]["score"] == pytest.approx(40.0)
    # modality = mean over its datasets (60, 80, 40), NOT over its meta-tasks (70, 40)
    assert s["modalities"]["image"]["score"] == pytest.approx(60.0)
    assert s["modalities"]["video"]["score"] == pytest.approx(100.0)
    assert s["modalities"]["visdoc"]["score"] == pytest.approx(50.0)
    assert s["overall"] == pytest.approx((60 + 80 + 40 + 100 + 50) / 5)
    assert s["n_datasets"] == 5 and s["skipped_total"] == 1
    assert s["mmeb_v2"]["present"] == 5 and len(s["mmeb_v2"]["missing"]) == 73


def test_write_summary_files(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", BASE)
    s = write_summary(run)
    md = (run / "summary.md").read_text()
    assert "**Overall: 66.0**" in md and "Partial MMEB-V2 run: 5 of 78" in md
    assert "| image/classification | 70.0 | 2 |" in md and "missing_file: 1" in md
    assert json.loads((run / "summary.json").read_text())["overall"] == pytest.approx(s["overall"])
    with Image.open(run / "summary.png") as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert set(load_run(run)) == set(BASE)  # summary.json is not mistaken for a result
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no per-dataset result"):
        write_summary(tmp_path / "empty")


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path / "run", BASE)
    p = add_report_args(argparse.ArgumentParser())
    assert all(a.help for a in p._actions if a.dest != "help")
    assert run_report(p.parse_args([str(run), "--out", str(tmp_path / "rep")])) == 0
    assert (tmp_path / "rep" / "summary.png").exists() and "Overall 66.0" in capsys.readouterr().out


def test_paired_bootstrap_properties() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(400) < 0.5).astype(float)
    same = paired_bootstrap(a, a, n_resamples=500, seed=1)
    assert same.delta == 0 and same.lo == 0 and same.hi == 0 and same.p_value == 1.0
    b = a.copy()
    b[a == 0] = (rng.random(int((a == 0).sum())) < 0.5).astype(float)  # B fixes ~half of A's misses
    r1 = paired_bootstrap(a, b, n_resamples=2000, seed=3)
    r2 = paired_bootstrap(a, b, n_resamples=2000, seed=3)
    assert r1.delta == pytest.approx(100 * (b.mean() - a.mean()))
    assert (r1.lo, r1.hi, r1.p_value) == (r2.lo, r2.hi, r2.p_value)  # seeded
    assert 0 < r1.lo < r1.delta < r1.hi and r1.p_value < 0.01
    # the CI of a paired test is much narrower than the spread of either run
    assert r1.hi - r1.lo < 100 * 4 * a.std() / np.sqrt(len(a))
    with pytest.raises(ValueError, match="equal-length"):
        paired_bootstrap([1, 0], [1])


def test_compare_runs(tmp_path: Path) -> None:
    run_a = make_run(tmp_path / "A", BASE)
    better = dict(BASE)
    better["ImageNet-1K"] = [1, 1, 1, 1, 0]   # +20
    better["OK-VQA"] = [1, 0, 0, 1, 1]        # +20
    better["ViDoRe_arxivqa"] = [0.5, 0.5, 1.0, 0.5]  # +12.5
    better.pop("K700")
    better["MSCOCO_t2i"] = [1, 0]
    run_b = make_run(tmp_path / "B", better)
    save_result(run_b, result("VOC2007", [1, 1, 1, 1, 1, 1]))  # different query count -> unpaired
    res = compare(run_a, run_b, tmp_path / "cmp", n_resamples=300, seed=0)
    assert res["only_in_a"] == ["K700"] and res["only_in_b"] == ["MSCOCO_t2i"] and res["unpaired"] == ["VOC2007"]
    ds = res["datasets"]
    assert ds["ImageNet-1K"]["delta"] == pytest.approx(20.0) and ds["ImageNet-1K"]["paired"]
    assert ds["VOC2007"]["delta"] == pytest.approx(20.0) and ds["VOC2007"]["lo"] is None
    # aggregates are over the common datasets, MMEB-style means
    assert res["meta_tasks"]["image/classification"]["delta"] == pytest.approx(20.0)
    assert res["modalities"]["image"]["delta"] == pytest.approx(20.0)
    assert res["overall"]["delta"] == pytest.approx((20 + 20 + 20 + 12.5) / 4)
    assert res["overall"]["n"] == 4
    w = res["overall"]["wilcoxon"]
    ref = wilcoxon([20, 20, 20, 12.5])
    assert w["p_value"] == pytest.approx(ref.pvalue) and w["n_nonzero"] == 4 and "fewer than 6" in w["note"]
    out = tmp_path / "cmp"
    assert json.loads((out / "compare.json").read_text())["overall"]["delta"] == pytest.approx(18.125)
    md = (out / "compare.md").read_text()
    assert "| ImageNet-1K |" in md and "unpaired: query counts differ" in md and "only in A" in md
    with Image.open(out / "compare.png") as img:
        assert img.format == "PNG"


def test_compare_identical_runs_and_order_independence(tmp_path: Path) -> None:
    a = load_run(make_run(tmp_path / "A", BASE))
    res = compare_results(a, a, n_resamples=200)
    assert res["overall"]["delta"] == 0 and res["overall"]["wilcoxon"]["p_value"] is None
    assert all(d["p_value"] == 1.0 and not d["significant"] for d in res["datasets"].values())
    # a dataset's bootstrap does not depend on which other datasets are compared
    b = {k: result(k, [1.0] * len(v)) for k, v in BASE.items()}
    full = compare_results(a, b, n_resamples=200, seed=5)["datasets"]["OK-VQA"]
    part = compare_results({"OK-VQA": a["OK-VQA"]}, {"OK-VQA": b["OK-VQA"]}, n_resamples=200, seed=5)
    assert (full["lo"], full["hi"]) == (part["datasets"]["OK-VQA"]["lo"], part["datasets"]["OK-VQA"]["hi"])


def test_compare_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_a = make_run(tmp_path / "A", BASE)
    run_b = make_run(tmp_path / "B", {**BASE, "OK-VQA": [1, 1, 1, 1, 0]})
    parser = add_compare_args(argparse.ArgumentParser(prog="btoks compare"))
    assert all(a.help for a in parser._actions if a.dest != "help")
    args = parser.parse_args([str(run_a), str(run_b), "--resamples", "100", "--seed", "2", "--labels", "base", "new"])
    assert run_compare(args) == 0
    out = run_b / "compare_vs_A"
    assert (out / "compare.md").exists() and "Comparison: new vs base" in (out / "compare.md").read_text()
    assert "Overall delta +8.00" in capsys.readouterr().out
