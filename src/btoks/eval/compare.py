"""Compare two evaluation runs with paired significance tests.

Per dataset: the score delta (B - A, percentage points) and a paired bootstrap over queries (resample query
indices, same indices for both runs) giving a confidence interval and a two-sided p-value. Across datasets: a
Wilcoxon signed-rank test on the per-dataset deltas (does B beat A consistently, not just on average?).
Aggregates (meta-task, modality, Overall) get the delta of the MMEB-style means and a CI from combining the
per-dataset bootstrap draws (each aggregate draw is the mean of the datasets' draws, i.e. a stratified
bootstrap). Only datasets present in both runs are compared; the rest are listed.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from btoks.eval.registry import MODALITIES
from btoks.eval.report import MODALITY_COLORS, DatasetResult, load_run, meta_key

COMPARE_SCHEMA = "btoks.eval.compare/v1"
_MAX_CELLS = 20_000_000  # bootstrap index block size bound (memory: 8 bytes per cell)


@dataclass
class BootstrapResult:
    delta: float
    lo: float
    hi: float
    p_value: float
    n: int
    samples: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples")
        return d


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 2000, seed: int = 0,
                     ci: float = 0.95, scale: float = 100.0) -> BootstrapResult:
    """Paired bootstrap of ``mean(b) - mean(a)`` over queries (vectorised, memory-bounded).

    The CI is the percentile interval; the p-value tests delta = 0 with the shifted-distribution method,
    ``(1 + #|d* - d| >= |d|) / (1 + B)``, so it is never exactly 0. ``scale=100`` reports percentage points.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired bootstrap needs equal-length 1-D arrays, got {a.shape} and {b.shape}")
    n = len(a)
    if n == 0:
        raise ValueError("paired bootstrap needs at least one query")
    d = (b - a) * scale
    delta = float(d.mean())
    rng = np.random.default_rng(seed)
    rows = max(1, _MAX_CELLS // n)
    samples = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(n_resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        samples[start:stop] = d[idx].mean(axis=1)
    alpha = (1 - ci) / 2
    lo, hi = np.quantile(samples, [alpha, 1 - alpha])
    p = (1 + int((np.abs(samples - delta) >= abs(delta) - 1e-12).sum())) / (n_resamples + 1)
    return BootstrapResult(delta, float(lo), float(hi), min(1.0, p), n, samples)


def wilcoxon_across(deltas: Sequence[float]) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test on per-dataset deltas (zero deltas dropped, scipy's ``wilcox``)."""
    from scipy.stats import wilcoxon

    d = np.asarray([x for x in deltas if not math.isnan(x)], dtype=np.float64)
    nonzero = int((d != 0).sum())
    if nonzero == 0:
        return {"n": len(d), "n_nonzero": 0, "statistic": None, "p_value": None,
                "note": "no non-zero deltas: test undefined"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    note = "fewer than 6 non-zero deltas: p cannot reach 0.05" if nonzero < 6 else ""
    return {"n": len(d), "n_nonzero": nonzero, "statistic": float(res.statistic), "p_value": float(res.pvalue),
            "note": note}


def _paired(ra: DatasetResult, rb: DatasetResult) -> tuple[bool, str]:
    if ra.n_queries != rb.n_queries:
        return False, f"query counts differ ({ra.n_queries} vs {rb.n_queries})"
    if ra.query_ids is not None and rb.query_ids is not None and ra.query_ids != rb.query_ids:
        return False, "query ids differ"
    if ra.metric != rb.metric:
        return False, f"metrics differ ({ra.metric} vs {rb.metric})"
    return True, ""


def _dataset_seed(seed: int, name: str) -> int:
    """Per-dataset stream independent of which other datasets are compared (stable across runs)."""
    return int(seed) * 1_000_003 + zlib.crc32(name.encode())


def compare_results(a: Mapping[str, DatasetResult], b: Mapping[str, DatasetResult], *, n_resamples: int = 2000,
                    seed: int = 0, ci: float = 0.95, labels: tuple[str, str] = ("A", "B"),
                    progress: bool | None = None) -> dict[str, Any]:
    """The comparison as a JSON-able dict (see :func:`compare` for the files)."""
    common = [n for n in b if n in a]
    datasets: dict[str, Any] = {}
    draws: dict[str, np.ndarray] = {}
    for name in tqdm(common, desc="bootstrap", unit="dataset", disable=None if progress is None else not progress,
                     leave=False):
        ra, rb = a[name], b[name]
        ok, why = _paired(ra, rb)
        entry: dict[str, Any] = {
            "modality": rb.modality, "meta_task": rb.meta_task, "metric": rb.metric,
            "score_a": ra.score, "score_b": rb.score, "delta": rb.score - ra.score, "n_queries": rb.n_queries,
            "paired": ok, "note": why, "lo": None, "hi": None, "p_value": None, "significant": None,
        }
        if ok and rb.n_queries > 0:
            bs = paired_bootstrap(ra.per_query, rb.per_query, n_resamples=n_resamples,
                                  seed=_dataset_seed(seed, name), ci=ci)
            entry.update(delta=bs.delta, lo=bs.lo, hi=bs.hi, p_value=bs.p_value,
                         significant=bool(bs.lo > 0 or bs.hi < 0))
            draws[name] = bs.samples  # type: ignore[assignment]
        else:
            draws[name] = np.full(n_resamples, entry["delta"])  # no resampling possible: fixed delta
        datasets[name] = entry

    def group(members: list[str]) -> dict[str, Any]:
        sa = float(np.mean([a[n].score for n in members]))
        sb = float(np.mean([b[n].score for n in members]))
        samples = np.mean([draws[n] for n in members], axis=0)
        alpha = (1 - ci) / 2
        lo, hi = np.quantile(samples, [alpha, 1 - alpha])
        return {"score_a": sa, "score_b": sb, "delta": sb - sa, "lo": float(lo), "hi": float(hi),
                "significant": bool(lo > 0 or hi < 0), "n": len(members),
                "wilcoxon": wilcoxon_across([datasets[n]["delta"] for n in members])}

    mods: dict[str, list[str]] = {}
    metas: dict[str, list[str]] = {}
    for n in common:
        mods.setdefault(datasets[n]["modality"], []).append(n)
        metas.setdefault(meta_key(datasets[n]["modality"], datasets[n]["meta_task"]), []).append(n)
    mod_order = [m for m in MODALITIES if m in mods] + sorted(set(mods) - set(MODALITIES))
    return {
        "schema": COMPARE_SCHEMA,
        "labels": list(labels),
        "settings": {"n_resamples": n_resamples, "seed": seed, "ci": ci, "delta": "B - A, percentage points"},
        "overall": group(common) if common else None,
        "modalities": {m: group(mods[m]) for m in mod_order},
        "meta_tasks": {k: group(metas[k]) for k in sorted(metas, key=lambda k: (mod_order.index(k.split("/")[0]), k))},
        "datasets": datasets,
        "only_in_a": [n for n in a if n not in b],
        "only_in_b": [n for n in b if n not in a],
        "unpaired": [n for n in common if not datasets[n]["paired"]],
    }


def format_score(x: float | None, signed: bool = False) -> str:
    """Two decimals (signed for deltas); ``-`` for a missing value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def format_p(x: float | None) -> str:
    """A p-value to three decimals (``<0.001`` below that)."""
    return "-" if x is None else (f"{x:.3f}" if x >= 0.001 else "<0.001")


def compare_markdown(res: Mapping[str, Any]) -> str:
    la, lb = res["labels"]
    ci = round(res["settings"]["ci"] * 100)
    lines = [f"# Comparison: {lb} vs {la}", "",
             f"Delta = {lb} - {la} in percentage points; {ci}% CI from a paired bootstrap over queries "
             f"({res['settings']['n_resamples']} resamples, seed {res['settings']['seed']}); aggregate CIs combine "
             "per-dataset draws; Wilcoxon signed-rank across datasets. `*` marks a CI excluding 0.", ""]
    for key, title in (("only_in_a", f"only in {la}"), ("only_in_b", f"only in {lb}"), ("unpaired", "unpaired")):
        if res[key]:
            lines.append(f"> {len(res[key])} dataset(s) {title} (excluded or not resampled): {', '.join(res[key])}")
    lines += ["", f"| Group | Datasets | {la} | {lb} | Delta | {ci}% CI | Wilcoxon p |", "|---|---:|---:|---:|---:|---|---:|"]

    def row(name: str, g: Mapping[str, Any] | None) -> None:
        if g is None:
            return
        star = "*" if g["significant"] else ""
        lines.append(f"| {name} | {g['n']} | {format_score(g['score_a'])} | {format_score(g['score_b'])} | {format_score(g['delta'], True)}{star} | "
                     f"[{format_score(g['lo'], True)}, {format_score(g['hi'], True)}] | {format_p(g['wilcoxon']['p_value'])} |")

    row("**Overall**", res["overall"])
    for m, g in res["modalities"].items():
        row(m, g)
    for k, g in res["meta_tasks"].items():
        row(k, g)
    lines += ["", f"| Dataset | Meta-task | Metric | {la} | {lb} | Delta | {ci}% CI | p | Queries |",
              "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for n, d in res["datasets"].items():
        star = "*" if d["significant"] else ""
        ci_txt = f"[{format_score(d['lo'], True)}, {format_score(d['hi'], True)}]" if d["paired"] else f"unpaired: {d['note']}"
        lines.append(f"| {n} | {d['modality']}/{d['meta_task']} | {d['metric']} | {format_score(d['score_a'])} | "
                     f"{format_score(d['score_b'])} | {format_score(d['delta'], True)}{star} | {ci_txt} | {format_p(d['p_value'])} | "
                     f"{d['n_queries']} |")
    return "\n".join(lines) + "\n"


def compare_plot(res: Mapping[str, Any], path: str | Path) -> Path:
    """Per-dataset and aggregate deltas with CI whiskers; hatched bars are not significant."""
    from matplotlib.figure import Figure

    la, lb = res["labels"]
    groups = [("Overall", res["overall"])] if res["overall"] else []
    groups += list(res["modalities"].items()) + list(res["meta_tasks"].items())
    items = [(k, g, "#333333" if k == "Overall" else MODALITY_COLORS.get(g.get("modality", k.split("/")[0]), "#999"))
             for k, g in groups]
    items += [(n, d, MODALITY_COLORS.get(d["modality"], "#999999")) for n, d in res["datasets"].items()]
    h = max(3.0, 0.2 * len(items) + 1.5)
    fig = Figure(figsize=(8, h), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(items))[::-1]
    for yi, (_, g, color) in zip(y, items, strict=True):
        lo = g["delta"] if g["lo"] is None else g["lo"]
        hi = g["delta"] if g["hi"] is None else g["hi"]
        ax.barh(yi, g["delta"], color=color, alpha=1.0 if g["significant"] else 0.45,
                hatch=None if g["significant"] else "//", edgecolor="white")
        ax.plot([lo, hi], [yi, yi], color="black", lw=1)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [k for k, _, _ in items], fontsize=6 if len(items) > 40 else 8)
    ax.set_xlabel(f"{lb} - {la} (percentage points)")
    ax.set_title(f"{lb} vs {la}")
    ax.grid(axis="x", alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def compare(run_a: str | Path, run_b: str | Path, out: str | Path | None = None, *, n_resamples: int = 2000,
            seed: int = 0, ci: float = 0.95, labels: tuple[str, str] | None = None,
            progress: bool | None = None) -> dict[str, Any]:
    """Compare two run directories; writes ``compare.md``, ``compare.json`` and ``compare.png`` into ``out``
    (default: ``<run_b>/compare_vs_<run_a name>``) and returns the JSON dict."""
    run_a, run_b = Path(run_a), Path(run_b)
    a, b = load_run(run_a), load_run(run_b)
    if not a or not b:
        raise ValueError(f"nothing to compare: {len(a)} result(s) in {run_a}, {len(b)} in {run_b}")
    if not set(a) & set(b):
        raise ValueError(f"nothing to compare: no dataset in common ({run_a}: {', '.join(sorted(a))}; "
                         f"{run_b}: {', '.join(sorted(b))})")
    labels = labels or (run_a.name, run_b.name)
    res = compare_results(a, b, n_resamples=n_resamples, seed=seed, ci=ci, labels=labels, progress=progress)
    out = Path(out) if out is not None else run_b / f"compare_vs_{run_a.name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    (out / "compare.md").write_text(compare_markdown(res), encoding="utf-8")
    compare_plot(res, out / "compare.png")
    res["out"] = str(out)
    return res
