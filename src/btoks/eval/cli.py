"""``btoks eval``: evaluate a saved model on MMEB-V2 style data (mount with :func:`add_eval_args` /
:func:`run_eval`; ``compare`` and ``report`` live in :mod:`btoks.eval.compare` and :mod:`btoks.eval.report`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


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
    parser.add_argument("--batch-size", type=int, default=16, help="encoding batch size (default: 16)")
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

    if args.batch_size < 1:
        raise SystemExit("--batch-size must be >= 1")
    summary = evaluate(args.model, args.data, args.datasets, args.out, batch_size=args.batch_size,
                       on_error=args.on_error, use_cache=not args.no_cache, resume=not args.no_resume,
                       progress=not args.no_progress, device=args.device, media_root=args.media_root,
                       tie_policy=args.tie_policy)

    def f(x: float) -> str:
        return "n/a" if x is None or math.isnan(x) else f"{x:.2f}"

    mods = ", ".join(f"{m} {f(v['score'])} ({v['n']})" for m, v in summary["modalities"].items())
    print(f"Overall {f(summary['overall'])} over {summary['n_datasets']} datasets [{mods}] -> "
          f"{Path(args.out) / 'summary.md'}")
    if summary["skipped_total"]:
        print(f"{summary['skipped_total']} row(s) skipped; see the per-dataset 'skipped' counts")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m btoks.eval.cli``)."""
    parser = add_eval_args(argparse.ArgumentParser(prog="btoks eval", description=__doc__))
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
