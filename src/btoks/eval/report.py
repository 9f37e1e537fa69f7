"""Per-dataset result files and the MMEB-V2 style summary of a run directory.

A run directory holds one JSON file per evaluated dataset (schema below, written by :func:`save_result`).
Aggregation follows MMEB-V2 exactly: a meta-task score is the unweighted mean of its datasets, a modality score
the unweighted mean of its datasets (not of its meta-tasks), Overall the unweighted mean over all datasets
present. A partial run is still summarised, but the summary says which MMEB-V2 datasets are missing, because
an Overall over a subset is not comparable with published numbers.

Per-dataset JSON (``schema = "btoks.eval.dataset/v1"``)::

    dataset      str    registry name
    modality     str    image | video | visdoc
    meta_task    str    e.g. classification, vqa, visdoc
    metric       str    headline metric, e.g. hit@1, ndcg@5
    score        float  headline metric in percent (MMEB convention), = 100 * mean(per_query)
    per_query    list   headline metric per query in [0, 1], in query order (paired bootstrap needs it)
    n_queries    int    len(per_query)
    query_ids    list?  optional ids aligned with per_query (compare checks them before pairing)
    metrics      dict   other metrics in percent (hit@5, mrr, ...), optional
    skipped      dict   rows skipped per reason (missing_file, corrupt_image, empty, no_qrels, ...)
    wall_time_s  float  seconds spent on the dataset
    extra        dict   free-form (model, checkpoint, git sha, ...)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from btoks.eval.registry import MMEB_V2, MMEB_V2_NAMES, MODALITIES

SCHEMA = "btoks.eval.dataset/v1"
SUMMARY_SCHEMA = "btoks.eval.summary/v1"
_ORDER = {s.name: i for i, s in enumerate(MMEB_V2)}
MODALITY_COLORS = {"image": "#4C72B0", "video": "#DD8452", "visdoc": "#55A868"}


@dataclass
class DatasetResult:
    """One dataset's evaluation outcome (see the module docstring for the on-disk schema)."""

    dataset: str
    modality: str
    meta_task: str
    metric: str
    score: float
    per_query: list[float]
    n_queries: int
    skipped: dict[str, int] = field(default_factory=dict)
    wall_time_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    query_ids: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_queries != len(self.per_query):
            raise ValueError(f"{self.dataset}: n_queries={self.n_queries} but {len(self.per_query)} per-query scores")
        if self.query_ids is not None and len(self.query_ids) != len(self.per_query):
            raise ValueError(f"{self.dataset}: {len(self.query_ids)} query_ids for {len(self.per_query)} scores")
        if self.per_query and not math.isclose(self.score, 100 * float(np.mean(self.per_query)), abs_tol=1e-6):
            raise ValueError(f"{self.dataset}: score {self.score} != 100 * mean(per_query)")

    @classmethod
    def from_metrics(cls, spec: Any, per_query: Mapping[str, Sequence[float]], *,
                     skipped: Mapping[str, int] | None = None,
                     wall_time_s: float = 0.0, query_ids: Sequence[str] | None = None,
                     extra: Mapping[str, Any] | None = None) -> DatasetResult:
        """Build from a registry spec and the per-query arrays of :mod:`btoks.eval.metrics`."""
        main = np.asarray(per_query[spec.metric], dtype=np.float64)
        return cls(
            dataset=spec.name, modality=spec.modality, meta_task=spec.meta_task, metric=spec.metric,
            score=float(main.mean() * 100) if len(main) else float("nan"),
            per_query=main.tolist(), n_queries=len(main), skipped=dict(skipped or {}), wall_time_s=float(wall_time_s),
            metrics={k: float(np.mean(v) * 100) for k, v in per_query.items() if len(v)},
            query_ids=None if query_ids is None else [str(q) for q in query_ids], extra=dict(extra or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DatasetResult:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"not a btoks dataset result (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        known = {k: v for k, v in d.items() if k != "schema" and k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def n_skipped(self) -> int:
        return int(sum(self.skipped.values()))


def result_filename(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name) + ".json"


def save_result(run_dir: str | Path, result: DatasetResult) -> Path:
    """Write ``run_dir/<dataset>.json`` (atomically, so a killed run never leaves half a file)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / result_filename(result.dataset)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def _sort_key(name: str) -> tuple[int, str]:
    return (_ORDER.get(name, len(_ORDER)), name)


def load_run(run_dir: str | Path) -> dict[str, DatasetResult]:
    """All per-dataset results of a run directory (other JSON files are ignored), in MMEB-V2 order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    out: dict[str, DatasetResult] = {}
    for f in sorted(run_dir.glob("*.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: invalid JSON ({e})") from e
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            continue
        r = DatasetResult.from_dict(data)
        if r.dataset in out:
            raise ValueError(f"{run_dir}: dataset {r.dataset!r} appears in two files")
        out[r.dataset] = r
    return {k: out[k] for k in sorted(out, key=_sort_key)}


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def meta_key(modality: str, meta_task: str) -> str:
    """Meta-tasks share names across modalities (classification, retrieval), so keys carry both."""
    return f"{modality}/{meta_task}"


def aggregate(results: Mapping[str, DatasetResult]) -> dict[str, Any]:
    """MMEB-V2 aggregation: meta-task, modality and Overall are unweighted means over datasets."""
    by_mod: dict[str, list[float]] = {}
    by_meta: dict[str, list[float]] = {}
    for r in results.values():
        by_mod.setdefault(r.modality, []).append(r.score)
        by_meta.setdefault(meta_key(r.modality, r.meta_task), []).append(r.score)
    mods = [m for m in MODALITIES if m in by_mod] + sorted(set(by_mod) - set(MODALITIES))
    present_mmeb = [n for n in results if n in MMEB_V2_NAMES]
    return {
        "schema": SUMMARY_SCHEMA,
        "overall": _mean([r.score for r in results.values()]),
        "n_datasets": len(results),
        "modalities": {m: {"score": _mean(by_mod[m]), "n": len(by_mod[m])} for m in mods},
        "meta_tasks": {
            k: {"modality": k.split("/")[0], "meta_task": k.split("/", 1)[1], "score": _mean(v), "n": len(v)}
            for k, v in sorted(by_meta.items(), key=lambda kv: (mods.index(kv[0].split("/")[0]), kv[0]))
        },
        "datasets": {
            n: {"modality": r.modality, "meta_task": r.meta_task, "metric": r.metric, "score": r.score,
                "n_queries": r.n_queries, "skipped": r.skipped, "wall_time_s": r.wall_time_s}
            for n, r in results.items()
        },
        "mmeb_v2": {
            "present": len(present_mmeb),
            "total": len(MMEB_V2_NAMES),
            "missing": [s.name for s in MMEB_V2 if s.name not in results] if present_mmeb else [],
        },
        "skipped_total": int(sum(r.n_skipped for r in results.values())),
        "wall_time_s": float(sum(r.wall_time_s for r in results.values())),
    }


def _fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_markdown(summary: Mapping[str, Any], title: str = "Evaluation summary") -> str:
    lines = [f"# {title}", ""]
    mm = summary["mmeb_v2"]
    lines.append(f"**Overall: {_fmt(summary['overall'])}** over {summary['n_datasets']} dataset(s)")
    if mm["present"] and mm["missing"]:
        lines.append(f"\n> Partial MMEB-V2 run: {mm['present']} of {mm['total']} datasets; Overall is NOT comparable "
                     f"with published numbers. Missing: {', '.join(mm['missing'])}.")
    if summary["skipped_total"]:
        lines.append(f"\n> {summary['skipped_total']} row(s) skipped in total (per dataset below).")
    lines += ["", "| Modality | Score | Datasets |", "|---|---:|---:|"]
    lines += [f"| {m} | {_fmt(v['score'])} | {v['n']} |" for m, v in summary["modalities"].items()]
    lines += ["", "| Meta-task | Score | Datasets |", "|---|---:|---:|"]
    lines += [f"| {k} | {_fmt(v['score'])} | {v['n']} |" for k, v in summary["meta_tasks"].items()]
    lines += ["", "| Dataset | Modality | Meta-task | Metric | Score | Queries | Skipped | Time (s) |",
              "|---|---|---|---|---:|---:|---|---:|"]
    for n, d in summary["datasets"].items():
        sk = ", ".join(f"{k}: {v}" for k, v in d["skipped"].items() if v) or "-"
        lines.append(f"| {n} | {d['modality']} | {d['meta_task']} | {d['metric']} | {_fmt(d['score'])} | "
                     f"{d['n_queries']} | {sk} | {_fmt(d['wall_time_s'])} |")
    return "\n".join(lines) + "\n"


def summary_plot(summary: Mapping[str, Any], path: str | Path, title: str = "Evaluation summary") -> Path:
    """Bar charts: aggregates on top, every dataset below, coloured by modality (Agg canvas, no display)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    ds = summary["datasets"]
    n = max(1, len(ds))
    fig = Figure(figsize=(max(8.0, 0.22 * n + 2), 8.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[1, 1.4])
    agg_labels = ["Overall", *summary["modalities"], *summary["meta_tasks"]]
    agg_vals = [summary["overall"], *(v["score"] for v in summary["modalities"].values()),
                *(v["score"] for v in summary["meta_tasks"].values())]
    agg_colors = ["#333333", *(MODALITY_COLORS.get(m, "#999999") for m in summary["modalities"]),
                  *(MODALITY_COLORS.get(v["modality"], "#999999") for v in summary["meta_tasks"].values())]
    top.bar(range(len(agg_vals)), np.nan_to_num(agg_vals), color=agg_colors)
    top.set_xticks(range(len(agg_vals)), agg_labels, rotation=35, ha="right", fontsize=8)
    top.set_ylabel("score (%)")
    top.set_title(title)
    for i, v in enumerate(agg_vals):
        top.text(i, np.nan_to_num(v), _fmt(v), ha="center", va="bottom", fontsize=7)
    names = list(ds)
    bottom.bar(range(len(names)), [ds[k]["score"] for k in names],
               color=[MODALITY_COLORS.get(ds[k]["modality"], "#999999") for k in names])
    bottom.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    bottom.set_ylabel("score (%)")
    bottom.legend(handles=[Patch(color=c, label=m) for m, c in MODALITY_COLORS.items()
                           if m in summary["modalities"]], fontsize=8)
    for ax in (top, bottom):
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def write_summary(run_dir: str | Path, out_dir: str | Path | None = None, *, title: str | None = None,
                  ) -> dict[str, Any]:
    """Aggregate a run directory and write ``summary.md``, ``summary.json`` and ``summary.png``."""
    run_dir = Path(run_dir)
    results = load_run(run_dir)
    if not results:
        raise ValueError(f"{run_dir}: no per-dataset result files (schema {SCHEMA})")
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"Evaluation summary: {run_dir.name}"
    summary = aggregate(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (out / "summary.md").write_text(summary_markdown(summary, title), encoding="utf-8")
    summary_plot(summary, out / "summary.png", title)
    return summary
