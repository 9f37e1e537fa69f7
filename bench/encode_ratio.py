"""Table 1: encode throughput with K = 4 Bottleneck Tokens ÷ last-token pooling (K = 0), by input length.

Both arms call the public ``model.encode`` on the same texts with the same backbone weights; the only difference
is the K appended tokens and the pooling. A third arm encodes texts K tokens *longer* with last-token pooling:
BToks ÷ that control isolates any cost of the BToks machinery beyond "K more tokens through the decoder".
"""

from __future__ import annotations

import argparse
from functools import partial

from bench.common import (
    Table,
    base_parser,
    describe_backbone,
    exact_texts,
    goal_cell,
    interleaved,
    load_average,
    load_bench_backbone,
    repeats_of,
    script_main,
    speedup,
)

NAME = "encode_ratio"
LENGTHS = (32, 64, 256, 1024)
QUICK_LENGTHS = (32, 64)
K = 4
GOAL_LENGTH, GOAL = 64, 0.97


def build_parser() -> argparse.ArgumentParser:
    # Many short rounds: on a shared machine the median of 9 one-second calls is steadier than of 5 longer ones.
    p = base_parser(NAME, __doc__.splitlines()[0], default_repeats=9)
    p.add_argument("--lengths", type=int, nargs="+", default=None, help=f"input lengths (default {LENGTHS})")
    p.add_argument("--tokens", type=int, default=None,
                   help="input tokens per timed call; batch = tokens ÷ length (default 1024, quick 512)")
    return p


def run(args: argparse.Namespace) -> Table:
    from btoks.config import BToksConfig
    from btoks.model import BToksModel

    backbone, model_name = load_bench_backbone(args.model)
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS)
    tokens = args.tokens or (512 if args.quick else 1024)
    max_length = max(lengths) + 2 * K + 8  # nothing is ever truncated
    btoks = BToksModel(backbone, BToksConfig(num_btoks=K, max_length=max_length))
    last = BToksModel(backbone, BToksConfig(num_btoks=0, pooling="last", max_length=max_length))
    repeats = repeats_of(args)
    rows, data = [], {}
    for length in lengths:
        n = max(1, tokens // length)
        texts = exact_texts(backbone.tokenizer, length, n)
        longer = exact_texts(backbone.tokenizer, length + K, n, seed=1)
        arms = {
            "btoks": partial(btoks.encode, texts, batch_size=n, show_progress_bar=False),
            "last": partial(last.encode, texts, batch_size=n, show_progress_bar=False),
            "last_plus_k": partial(last.encode, longer, batch_size=n, show_progress_bar=False),
        }
        t = interleaved(arms, repeats, args.warmup, desc=f"{NAME} L={length}")
        r = speedup(t["btoks"], t["last"])
        control = speedup(t["btoks"], t["last_plus_k"])
        ideal = length / (length + K)
        goal = goal_cell(r.value, GOAL, True) if length == GOAL_LENGTH else ""
        rows.append([str(length), str(n), f"{t['last'].rate(n):.1f}", f"{t['btoks'].rate(n):.1f}",
                     r.cell(best=True), f"{ideal:.3f}", f"{control.value:.3f} (best {control.best:.3f})", goal])
        data[str(length)] = {"batch": n, "times": {k: v.samples for k, v in t.items()}, "ratio": r.to_dict(),
                             "control": control.to_dict(), "token_ratio": ideal}
    return Table(
        NAME, f"1. Encode throughput: BToks (K={K}) ÷ last-token pooling",
        ["input tokens", "batch", "last-token texts/s", "BToks texts/s", "BToks ÷ last (min–max; best)",
         f"tokens L÷(L+{K})", f"control: BToks ÷ last on L+{K} tokens", "goal"],
        rows,
        [f"model: {model_name} ({describe_backbone(backbone)}); `model.encode` on exact-length random-word texts, "
         f"one batch of ⌊{tokens}/L⌋ texts per call; median of {repeats} interleaved rounds after "
         f"{args.warmup} warm-up; range = min–max of per-round ratios; best = ratio of each arm's fastest round; "
         f"load average {load_average()}.",
         f"`tokens L÷(L+{K})` is the ratio if cost were proportional to tokens; the last column compares with "
         f"last-token pooling on texts {K} tokens longer (≈ 1.0 means the BToks cost is just their tokens)."],
        data,
    )


main = script_main(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
