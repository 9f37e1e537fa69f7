"""The ``btoks`` command. Subcommands live next to the code they drive; this file only mounts them."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from btoks.errors import USER_ERRORS

# (name, module, add_args function, run function, one-line help) — modules are imported lazily so `--help` is fast
# and a missing optional dependency only breaks its own subcommand.
COMMANDS: list[tuple[str, str, str, str, str]] = [
    ("train", "btoks.train.cli", "add_train_args", "run_train",
     "train a BToks embedder from a YAML preset (InfoNCE + Generative Information Condensation)"),
    ("eval", "btoks.eval.cli", "add_eval_args", "run_eval",
     "evaluate a model on MMEB-V2-format data (cached, resumable) and write Markdown/JSON/PNG reports"),
    ("compare", "btoks.eval.cli", "add_compare_args", "run_compare",
     "compare two eval runs: per-dataset deltas, paired bootstrap CIs, Wilcoxon signed-rank"),
    ("report", "btoks.eval.cli", "add_report_args", "run_report", "re-write the summary of an eval run"),
    ("index", "btoks.serve.cli", "add_index_args", "run_index",
     "embed folders of images, PDFs, videos and text into a FAISS index"),
    ("search", "btoks.serve.cli", "add_search_args", "run_search", "search an index with text and/or an image"),
    ("serve", "btoks.serve.cli", "add_serve_args", "run_serve",
     "HTTP server: OpenAI-compatible /v1/embeddings, /search, /health (binds 127.0.0.1)"),
    ("data", "btoks.data.cli", "add_data_args", "run_data",
     "data: `mini-mmeb` builds the offline benchmark, `download mmeb-v2` fetches MMEB-V2, `check ROOT` checks it"),
    ("analyze", "btoks.analysis.cli", "add_analyze_args", "run_analyze",
     "attention analysis: where target tokens and BToks put their attention, with and without the mask"),
    ("decode", "btoks.analysis.cli", "add_decode_args", "run_decode",
     "generate text from the BTok-only KV cache of an input (what did the bottleneck keep?)"),
    ("quickstart", "btoks.quickstart", "add_quickstart_args", "run_quickstart",
     "the whole workflow offline: build mini-MMEB, train BToks+GIC and last-token, evaluate, compare, search"),
    ("ablate", "btoks.analysis.cli", "add_ablate_args", "run_ablate",
     "run a matched ablation grid (K, mask, λ, pooling), evaluate each cell, write table + plot + paired tests"),
]


def positive_int(value: str) -> int:
    """argparse ``type`` for counts and sizes: an integer >= 1 (a usage error naming the option otherwise)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return n


def _optional(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="btoks",
        description="Bottleneck Tokens: train, evaluate and serve embedding models built from decoder LLMs. "
                    "Run `btoks COMMAND --help` for the options of a command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module, add, run, help_ in COMMANDS:
        if not _optional(module):
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        getattr(mod, add)(p)
        p.set_defaults(_run=getattr(mod, run))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    run: Callable[[argparse.Namespace], int | None] = args._run
    try:
        return int(run(args) or 0)
    except USER_ERRORS as e:  # the user's to fix: one line, no traceback (-v shows it)
        if args.verbose:
            logging.exception("details")
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"btoks {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
