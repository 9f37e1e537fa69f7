"""``btoks ablate CONFIG --grid ...``: a matched ablation grid, trained, evaluated and tested against a reference.

Every cell is the YAML ``TrainConfig`` plus one combination of the grid's dotted overrides (cartesian product),
so all cells share data, steps, batch size and seed: the only differences are the ablated knobs. Typical axes:

* ``btoks.num_btoks=0,1,2,4,8,16``: K; K = 0 is last-token pooling (the VLM2Vec baseline) automatically
* ``btoks.kv_mode=compressed,full``: Condensation Mask on / off
* ``btoks.gen_weight=0,5``: GIC λ off / on
* ``btoks.pooling=btoks,last,mean``

Layout of ``OUT``::

    <cell>/            training run (checkpoints/, log.jsonl, model/), eval/ (btoks eval run), cell.json
    compare/<cell>/    paired tests vs the reference (btoks.eval.compare: compare.md/.json/.png)
    ablation.md/.json/.png

A cell whose ``cell.json`` matches its resolved config is skipped on a re-run (resume); an interrupted cell
resumes from its last training checkpoint and its cached evaluation. Cells with identical training runs (K = 0
with different λ or mask settings) are trained and evaluated once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from btoks.eval.compare import format_p, format_score

CELL_FILE = "cell.json"
SCHEMA = "btoks.analysis.ablate/v1"
# Varying these would break the matching (same data, steps, batch and seed in every cell).
UNMATCHED_KEYS = ("data", "data_root", "examples", "max_steps", "seed", "batch_size", "output_dir", "resume")


@dataclass
class Axis:
    key: str
    values: list[Any]


@dataclass
class Cell:
    name: str
    settings: dict[str, Any]  # dotted key -> value

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={_yaml_value(v)}" for k, v in self.settings.items()]


def _yaml_value(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def parse_grid(specs: Sequence[str]) -> list[Axis]:
    """``["btoks.num_btoks=0,1,4 btoks.gen_weight=0,5"]`` → axes; tokens may also come one per argument."""
    axes: list[Axis] = []
    for token in (t for spec in specs for t in spec.split()):
        if "=" not in token:
            raise ValueError(f"grid axis {token!r} must look like key=v1,v2 (e.g. btoks.num_btoks=0,1,4)")
        key, raw = token.split("=", 1)
        key = key.strip()
        if not key or not raw:
            raise ValueError(f"grid axis {token!r} has an empty key or no values")
        if key.split(".")[0] in UNMATCHED_KEYS:
            raise ValueError(f"grid axis {key!r} would change the data/steps/seed between cells; an ablation grid "
                             f"must be matched (fix it with --set instead)")
        if any(a.key == key for a in axes):
            raise ValueError(f"grid axis {key!r} given twice")
        values = [yaml.safe_load(v) for v in raw.split(",")]
        if len({_yaml_value(v) for v in values}) != len(values):
            raise ValueError(f"grid axis {key!r} repeats a value: {raw}")
        axes.append(Axis(key, values))
    if not axes:
        raise ValueError("empty grid: give at least one axis, e.g. --grid btoks.num_btoks=0,4")
    return axes


def _label(value: Any) -> str:
    return re.sub(r"[^\w.+-]", "_", _yaml_value(value))


def make_cells(axes: Sequence[Axis]) -> list[Cell]:
    """Cartesian product; cell names are ``leaf=value`` joined by ``__`` (full keys when leaves collide)."""
    leaves = [a.key.split(".")[-1] for a in axes]
    names = [a.key if leaves.count(leaf) > 1 else leaf for a, leaf in zip(axes, leaves, strict=True)]
    cells = []
    for combo in itertools.product(*(a.values for a in axes)):
        settings = {a.key: v for a, v in zip(axes, combo, strict=True)}
        cells.append(Cell("__".join(f"{n}={_label(v)}" for n, v in zip(names, combo, strict=True)), settings))
    return cells


def find_cell(cells: Sequence[Cell], ref: str | None) -> Cell:
    """The reference by name (``num_btoks=4__gen_weight=5``) or by settings (``btoks.num_btoks=4 gen_weight=5``,
    any unambiguous subset, leaf or dotted keys); default: the first cell."""
    if ref is None:
        return cells[0]
    for c in cells:
        if c.name == ref:
            return c
    wanted: dict[str, str] = {}
    for token in re.split(r"[\s,]+|__", ref.strip()):
        if "=" not in token:
            raise ValueError(f"reference {ref!r} is neither a cell name nor key=value settings "
                             f"(cells: {', '.join(c.name for c in cells)})")
        k, v = token.split("=", 1)
        wanted[k] = _label(yaml.safe_load(v))

    def matches(c: Cell) -> bool:
        for k, v in wanted.items():
            keys = [key for key in c.settings if key == k or key.split(".")[-1] == k]
            if not keys or _label(c.settings[keys[0]]) != v:
                return False
        return True

    hits = [c for c in cells if matches(c)]
    if len(hits) != 1:
        raise ValueError(f"reference {ref!r} matches {len(hits)} cells; cells: {', '.join(c.name for c in cells)}")
    return hits[0]


def _config_hash(cfg_dict: dict[str, Any]) -> str:
    """Hash of what makes a cell's training run: not where it is written, not the fields the trainer fills in
    itself, and for K = 0 not λ or the mask (last-token pooling has no BToks, so no generative loss)."""
    d = {k: v for k, v in cfg_dict.items() if k not in ("output_dir", "resume")}
    d["btoks"] = {k: v for k, v in (d.get("btoks") or {}).items() if k not in ("base_model", "backbone")}
    if d["btoks"].get("num_btoks") == 0:
        d["btoks"].update(gen_weight=0.0, gen_steps=None, kv_mode="compressed", gic_impl="cache")
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def _last_losses(run_dir: Path) -> dict[str, float]:
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return {}
    lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        return {}
    last = json.loads(lines[-1])
    return {k: float(last[k]) for k in ("loss", "contrastive", "generative", "elapsed_s") if k in last}


def cell_config(cell: Cell, config: str | Path, common: Sequence[str], out: Path) -> Any:
    """The cell's resolved ``TrainConfig``: the preset, then ``--set`` overrides, then the cell's settings."""
    from btoks.train.config import TrainConfig

    return TrainConfig.from_yaml(config, [*common, *cell.overrides, f"output_dir={out / cell.name}"])


def run_cell(cell: Cell, config: str | Path, common: Sequence[str], out: Path, eval_data: str | Path,
             datasets: Sequence[str] | None, *, batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """Train (resuming), evaluate and record one cell; returns its ``cell.json`` record."""
    from btoks.eval.runner import evaluate
    from btoks.train.trainer import Trainer

    cell_dir = out / cell.name
    cfg = cell_config(cell, config, common, out)
    cfg_hash = _config_hash(cfg.to_dict())
    marker = cell_dir / CELL_FILE
    if marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
        if record.get("config_hash") == cfg_hash:
            record["skipped"] = True
            return record
        raise ValueError(f"{cell_dir} holds a finished cell trained with a different configuration; use another "
                         f"--out or delete that folder")
    started = cell_dir / "train_config.json"
    if started.is_file() and _config_hash(json.loads(started.read_text(encoding="utf-8"))) != cfg_hash:
        raise ValueError(f"{cell_dir} holds a training run with a different configuration; use another --out or "
                         f"delete that folder")
    t0 = time.perf_counter()
    model_dir = cell_dir / "model"
    if not (model_dir / "btoks_config.json").is_file():
        Trainer(cfg).train()
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    summary = evaluate(model_dir, eval_data, datasets, out_dir=cell_dir / "eval", batch_size=batch_size,
                       progress=progress, log=None)
    losses = _last_losses(cell_dir)
    record = {
        "schema": SCHEMA, "cell": cell.name, "settings": cell.settings, "overrides": cell.overrides,
        "config_hash": cfg_hash, "effective": {"num_btoks": cfg.btoks.num_btoks, "pooling": cfg.btoks.pooling,
                                               "kv_mode": cfg.btoks.kv_mode, "gen_weight": cfg.btoks.gen_weight,
                                               "gen_steps": cfg.btoks.gen_steps},
        # the trainer's own wall time (log.jsonl) also covers runs resumed or trained before this call
        "train_s": round(losses.pop("elapsed_s", train_s), 2), "eval_s": round(time.perf_counter() - t1, 2),
        "final_losses": losses,
        "overall": summary.get("overall"),
        "modalities": {m: v.get("score") for m, v in (summary.get("modalities") or {}).items()},
        "datasets": {n: v.get("score") for n, v in (summary.get("datasets") or {}).items()},
    }
    marker.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    record["skipped"] = False
    return record


def ablate(config: str | Path, grid: Sequence[str], eval_data: str | Path, out: str | Path, *,
           datasets: Sequence[str] | None = None, reference: str | None = None, common: Sequence[str] = (),
           batch_size: int = 16, n_resamples: int = 2000, seed: int = 0, progress: bool = True,
           log: Any = print) -> dict[str, Any]:
    """Run the grid (see the module docstring); returns the ``ablation.json`` dict."""
    from btoks.eval.compare import compare

    if not Path(eval_data).is_dir():
        raise FileNotFoundError(f"eval data {eval_data} not found")
    for item in common:
        if "=" not in item:
            raise ValueError(f"--set {item!r} must look like key=value")
    cells = make_cells(parse_grid(grid))
    ref = find_cell(cells, reference)
    from btoks.eval.runner import discover

    discover(eval_data, datasets)  # fail before hours of training, not after
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log(f"ablation grid: {len(cells)} cells, reference {ref.name}")
    # cells whose training runs are identical (K = 0 ignores λ and the mask) are trained and evaluated once
    runs: dict[str, Cell] = {}
    runner: dict[str, Cell] = {}
    for cell in cells:
        runner[cell.name] = runs.setdefault(_config_hash(cell_config(cell, config, common, out).to_dict()), cell)
    records: dict[str, dict[str, Any]] = {}
    for i, cell in enumerate(cells, 1):
        log(f"[{i}/{len(cells)}] {cell.name}: {' '.join(cell.overrides)}")
        first = runner[cell.name]
        if first is not cell:
            records[cell.name] = {**records[first.name], "cell": cell.name, "settings": cell.settings,
                                  "overrides": cell.overrides, "same_as": first.name}
            log(f"[{i}/{len(cells)}] {cell.name}: same training run as {first.name} (K=0 ignores λ and the "
                "mask), reusing it")
            continue
        rec = run_cell(cell, config, common, out, eval_data, datasets, batch_size=batch_size, progress=progress)
        records[cell.name] = rec
        state = "done already, skipped" if rec["skipped"] else f"trained {rec['train_s']:.0f}s, " \
                                                                f"evaluated {rec['eval_s']:.0f}s"
        overall = rec["overall"]
        log(f"[{i}/{len(cells)}] {cell.name}: Overall {overall:.2f} ({state})" if overall is not None
            else f"[{i}/{len(cells)}] {cell.name}: no score ({state})")
    tests: dict[str, Any] = {}
    for cell in cells:
        if cell.name == ref.name:
            continue
        res = compare(out / runner[ref.name].name / "eval", out / runner[cell.name].name / "eval",
                      out / "compare" / cell.name,
                      n_resamples=n_resamples, seed=seed, labels=(ref.name, cell.name), progress=False)
        ov = res["overall"]
        tests[cell.name] = {
            "delta": ov["delta"], "lo": ov["lo"], "hi": ov["hi"], "significant": ov["significant"],
            "wilcoxon_p": ov["wilcoxon"]["p_value"], "n_datasets": ov["n"],
            "datasets": {n: {k: d[k] for k in ("delta", "lo", "hi", "p_value", "significant")}
                         for n, d in res["datasets"].items()},
            "report": str(Path(res["out"]) / "compare.md"),
        } if ov else {"note": "no common datasets"}
    result = {
        "schema": SCHEMA, "config": str(config), "grid": list(grid), "common_overrides": list(common),
        "eval_data": str(eval_data), "reference": ref.name, "axes": list(cells[0].settings),
        "cells": [{k: v for k, v in records[c.name].items() if k != "skipped"} for c in cells],
        "tests": tests, "settings": {"n_resamples": n_resamples, "seed": seed, "ci": 0.95},
    }
    (out / "ablation.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    (out / "ablation.md").write_text(ablation_markdown(result), encoding="utf-8")
    ablation_plot(result, out / "ablation.png")
    log(f"wrote {out / 'ablation.md'}, ablation.json, ablation.png and compare/<cell>/ paired tests")
    return result


def ablation_markdown(res: dict[str, Any]) -> str:
    """Cells × (settings, Overall, modalities, Δ vs reference with CI, Wilcoxon p, losses), then datasets."""
    cells, tests, ref = res["cells"], res["tests"], res["reference"]
    axes = res["axes"]
    mods = list(dict.fromkeys(m for c in cells for m in c["modalities"]))
    lines = [f"# Ablation grid ({len(cells)} cells, reference `{ref}`)", "",
             f"Config `{res['config']}`" + (f" with {' '.join(res['common_overrides'])}"
                                            if res["common_overrides"] else "")
             + f"; eval data `{res['eval_data']}`. Every cell has the same data, steps, batch and seed.",
             "Delta = cell - reference (percentage points); 95% CI from a paired bootstrap over queries, "
             "combined over datasets; Wilcoxon signed-rank across datasets. `*`: CI excludes 0.", "",
             "| Cell | " + " | ".join(axes) + " | Overall | " + "".join(f"{m} | " for m in mods)
             + "Δ vs ref | 95% CI | Wilcoxon p | final loss (con / gen) | train s |",
             "|---|" + "---|" * len(axes) + "---:|" + "---:|" * len(mods) + "---:|---|---:|---|---:|"]
    for c in cells:
        t = tests.get(c["cell"])
        if c["cell"] == ref:
            delta, ci, p = "ref", "", ""
        elif t and "delta" in t:
            delta = format_score(t["delta"], True) + ("*" if t["significant"] else "")
            ci, p = f"[{format_score(t['lo'], True)}, {format_score(t['hi'], True)}]", format_p(t["wilcoxon_p"])
        else:
            delta, ci, p = "-", "", ""
        fl = c.get("final_losses") or {}
        loss = f"{fl['contrastive']:.3f} / {fl.get('generative', 0.0):.3f}" if "contrastive" in fl else "-"
        same = f" (= `{c['same_as']}`)" if c.get("same_as") else ""
        lines.append(f"| `{c['cell']}`{same} | " + " | ".join(_yaml_value(c["settings"][a]) for a in axes)
                     + f" | {format_score(c['overall'])} | " + "".join(f"{format_score(c['modalities'].get(m))} | " for m in mods)
                     + f"{delta} | {ci} | {p} | {loss} | {c['train_s']:.1f} |")
    names = list(dict.fromkeys(n for c in cells for n in c["datasets"]))
    lines += ["", "Per-dataset scores (Δ vs reference, `*`: paired bootstrap CI excludes 0):", "",
              "| Dataset | " + " | ".join(f"`{c['cell']}`" for c in cells) + " |",
              "|---|" + "---:|" * len(cells)]
    for n in names:
        row = []
        for c in cells:
            s = c["datasets"].get(n)
            d = tests.get(c["cell"], {}).get("datasets", {}).get(n)
            extra = f" ({format_score(d['delta'], True)}{'*' if d['significant'] else ''})" if d else ""
            row.append(format_score(s) + extra)
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    lines += ["", "Paired-test reports: `compare/<cell>/compare.md`."]
    return "\n".join(lines) + "\n"


def ablation_plot(res: dict[str, Any], path: str | Path) -> Path:
    """Left: Overall per cell (reference dark). Right: Δ vs reference with the 95% bootstrap CI."""
    from matplotlib.figure import Figure

    cells, tests, ref = res["cells"], res["tests"], res["reference"]
    names = [c["cell"] for c in cells]
    scores = [c["overall"] if c["overall"] is not None else 0.0 for c in cells]
    h = max(2.5, 0.45 * len(cells) + 1.3)
    fig = Figure(figsize=(11, h), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    y = list(range(len(cells)))[::-1]
    colors = ["#333333" if n == ref else "#4C72B0" for n in names]
    ax1.barh(y, scores, color=colors)
    for yi, s in zip(y, scores, strict=True):
        ax1.text(s, yi, f" {s:.1f}", va="center", fontsize=8)
    ax1.set_yticks(y, names, fontsize=8)
    ax1.set_xlabel("Overall score")
    ax1.set_title("score per cell (dark: reference)")
    ax1.set_xlim(0, max([*scores, 1.0]) * 1.15)
    for yi, n in zip(y, names, strict=True):
        t = tests.get(n)
        if n == ref or not t or "delta" not in t:
            continue
        sig = t["significant"]
        ax2.barh(yi, t["delta"], color="#DD8452" if sig else "#CCCCCC", hatch=None if sig else "//",
                 edgecolor="white")
        ax2.plot([t["lo"], t["hi"]], [yi, yi], color="black", lw=1.2)
    ax2.axvline(0, color="black", lw=0.8)
    ax2.set_xlabel(f"Δ Overall vs {ref} (pp), 95% paired-bootstrap CI")
    ax2.set_title("difference to the reference (hatched: CI includes 0)")
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
