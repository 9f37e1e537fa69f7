"""``btoks eval`` / ``btoks compare`` / ``btoks report``: argparse wiring, mounted by ``btoks.cli``.

Each ``add_*_args(parser)`` fills a sub-parser; each ``run_*(args)`` executes it and returns an exit code. The
domain code (:mod:`btoks.eval.runner`, :mod:`btoks.eval.compare`, :mod:`btoks.eval.report`) has no argparse.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from btoks.cli import positive_int


def add_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``btoks eval MODEL --data DIR --out RUN_DIR``."""
    parser.add_argument("model", help="model folder written by BToksModel.save_pretrained (or a training run's "
                                      "checkpoint folder)")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="data directory: MMEB-V2 subsets laid out as published (one folder per dataset, "
                             "e.g. ImageNet-1K/, ViDoRe_arxivqa/) or a folder with a manifest.json")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                        help="evaluate only these datasets (registry names or aliases; default: all found)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run directory for <dataset>.json results, summary.md/.json/.png and cache/")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="encoding batch size (default: 16)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="unusable rows (missing/corrupt media, empty samples): stop with an error naming "
                             "dataset/row/file (raise, default) or drop and count them in the results (skip)")
    parser.add_argument("--no-cache", action="store_true",
                        help="do not read or write the embedding cache (RUN_DIR/cache/<dataset>.npz)")
    parser.add_argument("--no-resume", action="store_true",
                        help="re-score datasets even when RUN_DIR already holds their result for this model/data")
    parser.add_argument("--device", default=None,
                        help="torch device for the model (default: cuda when available, else cpu)")
    parser.add_argument("--media-root", default=None, metavar="DIR",
                        help="folder holding the published image-tasks/ and video-tasks/ media (default: --data)")
    parser.add_argument("--tie-policy", choices=("reference", "pessimistic"), default="reference",
                        help="order of tied scores: as the reference harness (numpy argsort, default) or "
                             "relevant items after tied non-relevant ones (pessimistic)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run_eval(args: argparse.Namespace) -> int:
    """Run ``btoks eval``; prints the aggregate scores and returns the exit code."""
    from btoks.eval.runner import evaluate

    summary = evaluate(args.model, args.data, args.datasets, args.out, batch_size=args.batch_size,
                       on_error=args.on_error, use_cache=not args.no_cache, resume=not args.no_resume,
                       progress=not args.no_progress, device=args.device, media_root=args.media_root,
                       tie_policy=args.tie_policy)

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun / accelerate only process 0 reports
        return 0

    def f(x: float) -> str:
        return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"

    mods = ", ".join(f"{m} {f(v['score'])} ({v['n']})" for m, v in summary["modalities"].items())
    print(f"Overall {f(summary['overall'])} over {summary['n_datasets']} datasets [{mods}] -> "
          f"{Path(args.out) / 'summary.md'}")
    if summary["skipped_total"]:
        print(f"{summary['skipped_total']} row(s) skipped; see the per-dataset 'skipped' counts")
    return 0


def add_compare_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``btoks compare`` (mountable as a sub-command)."""
    parser.add_argument("run_a", help="baseline run directory (per-dataset result JSON files)")
    parser.add_argument("run_b", help="run directory compared against the baseline; deltas are B - A")
    parser.add_argument("--out", default=None,
                        help="output folder for compare.md/.json/.png (default: RUN_B/compare_vs_<RUN_A name>)")
    parser.add_argument("--resamples", type=positive_int, default=2000, help="paired bootstrap resamples per dataset")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (results are reproducible given it)")
    parser.add_argument("--ci", type=float, default=0.95, help="confidence level of the bootstrap intervals")
    parser.add_argument("--labels", nargs=2, metavar=("A", "B"), default=None,
                        help="names shown for the two runs (default: the folder names)")
    return parser


def run_compare(args: argparse.Namespace) -> int:
    from btoks.eval.compare import compare, format_p

    res = compare(args.run_a, args.run_b, args.out, n_resamples=args.resamples, seed=args.seed, ci=args.ci,
                  labels=tuple(args.labels) if args.labels else None)
    ov = res["overall"]
    if ov is not None:
        print(f"Overall delta {ov['delta']:+.2f} [{ov['lo']:+.2f}, {ov['hi']:+.2f}] over {ov['n']} datasets; "
              f"Wilcoxon p={format_p(ov['wilcoxon']['p_value'])} -> {res['out']}/compare.md")
    return 0


def add_report_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``btoks report`` (mountable as a sub-command)."""
    parser.add_argument("run_dir", help="run directory holding one <dataset>.json result file per dataset")
    parser.add_argument("--out", default=None, help="where to write summary.md/.json/.png (default: run_dir)")
    parser.add_argument("--title", default=None, help="title of the Markdown report and the chart")
    return parser


def run_report(args: argparse.Namespace) -> int:
    from btoks.eval.compare import format_score
    from btoks.eval.report import write_summary

    summary = write_summary(args.run_dir, args.out, title=args.title)
    print(f"Overall {format_score(summary['overall'])} over {summary['n_datasets']} datasets -> "
          f"{Path(args.out or args.run_dir) / 'summary.md'}")
    return 0
