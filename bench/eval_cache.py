"""Table 6: evaluation harness, cold run vs cached re-runs on mini-MMEB (``btoks.eval.runner.evaluate``).

The model is saved once with ``save_pretrained`` and evaluated by path, as ``btoks eval`` does. Arms:

* cold: ``evaluate`` into a fresh output directory (loads the model, reads and decodes every sample, encodes,
  scores, writes results and embedding caches);
* resume: ``evaluate`` again into a directory that already holds this run's results (the default ``resume``
  finds every result's fingerprint current and skips the dataset);
* re-score: ``evaluate(..., resume=False)`` into that directory: results are recomputed from the cached
  embeddings (``cache/<dataset>.npz``) without loading the model.

Warm-up: one untimed cold run, which fills the directory the two cached arms use.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    Table,
    base_parser,
    interleaved,
    load_average,
    load_bench_backbone,
    repeats_of,
    script_main,
    speedup,
)

NAME = "eval_cache"
K = 4
DATASETS = ("mini-Digits-cls", "mini-EasyVQA", "mini-Motion-cls", "mini-LeeNews-docs")
"""Image classification, image VQA, video classification, visual-document retrieval (global ranking): every
reader / scoring path at ~1/10 of the full quick build's encoding time (mini-Moment alone encodes 272 clips)."""
QUICK_DATASETS = ("mini-Digits-cls", "mini-LeeNews-docs")


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="an existing mini-MMEB / MMEB folder (default: build mini-MMEB "
                                                "quick into a temporary folder)")
    p.add_argument("--datasets", nargs="+", default=None,
                   help=f"datasets to evaluate, or 'all' (default: {' '.join(DATASETS)})")
    p.add_argument("--batch-size", type=int, default=16, help="encode batch size (evaluate's default 16)")
    return p


def _backbone(model: str) -> tuple[Any, str]:
    """``auto``: btoks-mini, else the tiny random Qwen2-VL (the harness needs a model that takes images)."""
    if model != "auto":
        return load_bench_backbone(model)
    try:
        return load_bench_backbone("btoks-mini")
    except Exception as e:  # not available on this checkout: harness costs are still measurable
        print(f"[bench] btoks-mini unavailable ({type(e).__name__}: {e}); using tiny:qwen2_vl", file=sys.stderr)
        return load_bench_backbone("tiny:qwen2_vl")


def _scores(summary: dict[str, Any]) -> str:
    """Per-dataset scores and Overall (wall times differ between runs by design)."""
    return json.dumps({"overall": summary["overall"],
                       "datasets": {n: d["score"] for n, d in summary["datasets"].items()}}, sort_keys=True)


def run(args: argparse.Namespace) -> Table:
    from btoks.config import BToksConfig
    from btoks.eval.runner import evaluate
    from btoks.model import BToksModel

    repeats = repeats_of(args)
    work = Path(tempfile.mkdtemp(prefix="btoks-bench-eval-"))
    try:
        data = Path(args.data) if args.data else work / "mini-mmeb"
        if not args.data:
            from btoks.data.mini_mmeb import build_mini_mmeb

            print(f"[bench] building mini-MMEB (quick) in {data}", file=sys.stderr)
            build_mini_mmeb(data, size="quick")
        backbone, model_name = _backbone(args.model)
        model_dir = work / "model"
        BToksModel(backbone, BToksConfig(num_btoks=K)).save_pretrained(model_dir)
        del backbone
        chosen = args.datasets or list(QUICK_DATASETS if args.quick else DATASETS)
        kwargs = dict(datasets=None if chosen == ["all"] else chosen, batch_size=args.batch_size, progress=False,
                      log=None)
        fresh = (work / f"cold-{i}" for i in itertools.count())

        def cold() -> dict[str, Any]:
            out = next(fresh)
            try:
                return evaluate(str(model_dir), data, out_dir=out, **kwargs)
            finally:
                shutil.rmtree(out, ignore_errors=True)

        cached = work / "cached"
        print("[bench] warm-up: one cold evaluation", file=sys.stderr)
        reference = evaluate(str(model_dir), data, out_dir=cached, **kwargs)
        outputs: dict[str, Any] = {}

        def recorded(name: str, fn: Any) -> Any:
            def call() -> None:
                outputs[name] = fn()
            return call

        arms = {
            "cold": recorded("cold", cold),
            "resume": recorded("resume", partial(evaluate, str(model_dir), data, out_dir=cached, **kwargs)),
            "rescore": recorded("rescore", partial(evaluate, str(model_dir), data, out_dir=cached, resume=False,
                                                   **kwargs)),
        }
        t = interleaved(arms, repeats, 0, desc=NAME)
        same = {n: _scores(o) == _scores(reference) for n, o in outputs.items()}
        n_sets = reference["n_datasets"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    labels = {"cold": "cold (fresh output dir)", "resume": "re-run, results current (resume: skip)",
              "rescore": "re-run, `resume=False` (re-score from embedding cache)"}
    rows = []
    for name, timing in t.items():
        rows.append([labels[name], timing.cell(), speedup(timing, t["cold"]).cell(1),
                     "yes" if same[name] else "**no**"])
    return Table(
        NAME, "6. Eval harness: cold run vs cached re-runs on mini-MMEB",
        ["run", "wall time (min–max)", "speed-up vs cold (min–max)", "same summary as warm-up"],
        rows,
        [f"model: {model_name} with K={K} fresh BToks, evaluated from a saved folder; data: "
         f"{'mini-MMEB quick' if not args.data else args.data}"
         f" — {', '.join(chosen)} ({n_sets} datasets); batch "
         f"{args.batch_size}; median of {repeats} interleaved rounds after one untimed cold run; load average "
         f"{load_average()}."],
        {"times": {k: v.samples for k, v in t.items()}, "same": same},
    )


main = script_main(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
