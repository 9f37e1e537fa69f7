"""Table 2: ``model.encode`` throughput ÷ the raw backbone forward on the same tokens.

The raw arm is the Hugging Face decoder alone (``backbone.base_model(input_ids, attention_mask)``, no KV cache,
inference mode) on the exact token ids ``encode`` builds, BToks included. The ratio is what the library adds on
top: parsing, tokenisation, length bucketing, padding, position ids, pooling, normalisation, copying to numpy.
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

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

NAME = "encode_overhead"
LENGTHS = (32, 64, 256, 1024)
QUICK_LENGTHS = (32, 256)
K = 4
GOAL = 0.95


def build_parser() -> argparse.ArgumentParser:
    # Many short rounds: on a shared machine the median of 9 one-second calls is steadier than of 5 longer ones.
    p = base_parser(NAME, __doc__.splitlines()[0], default_repeats=9)
    p.add_argument("--lengths", type=int, nargs="+", default=None, help=f"input lengths (default {LENGTHS})")
    p.add_argument("--tokens", type=int, default=None,
                   help="input tokens per timed call; batch = tokens ÷ length (default 1024, quick 512)")
    return p


def _raw_forward(base_model: Any, input_ids: Any, attention_mask: Any) -> Any:
    import torch

    with torch.inference_mode():
        return base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def run(args: argparse.Namespace) -> Table:
    from btoks.config import BToksConfig
    from btoks.data.sample import Sample
    from btoks.model import BToksModel

    backbone, model_name = load_bench_backbone(args.model)
    lengths = args.lengths or (QUICK_LENGTHS if args.quick else LENGTHS)
    tokens = args.tokens or (512 if args.quick else 1024)
    model = BToksModel(backbone, BToksConfig(num_btoks=K, max_length=max(lengths) + K + 8)).eval()
    repeats = repeats_of(args)
    rows, data = [], {}
    for length in lengths:
        n = max(1, tokens // length)
        texts = exact_texts(backbone.tokenizer, length, n)
        inputs = model.prepare([Sample(text=t) for t in texts])
        assert inputs.input_ids.shape == (n, length + K) and bool(inputs.attention_mask.all())
        arms = {
            "encode": partial(model.encode, texts, batch_size=n, show_progress_bar=False),
            "raw": partial(_raw_forward, backbone.base_model, inputs.input_ids, inputs.attention_mask),
        }
        t = interleaved(arms, repeats, args.warmup, desc=f"{NAME} L={length}")
        r = speedup(t["encode"], t["raw"])
        rows.append([str(length + K), str(n), f"{t['raw'].rate(n):.1f}", f"{t['encode'].rate(n):.1f}",
                     r.cell(best=True),
                     f"{(t['encode'].median - t['raw'].median) * 1e3 / n:+.2f}", goal_cell(r.value, GOAL, True)])
        data[str(length)] = {"batch": n, "times": {k: v.samples for k, v in t.items()}, "ratio": r.to_dict()}
    return Table(
        NAME, "2. Encode throughput ÷ raw backbone forward on the same tokens",
        ["tokens (text + BToks)", "batch", "raw forward texts/s", "encode texts/s", "encode ÷ raw (min–max; best)",
         "overhead ms/text", "goal"],
        rows,
        [f"model: {model_name} ({describe_backbone(backbone)}); BToks K={K}; one batch of ⌊{tokens}/L⌋ "
         f"exact-length texts per call; median of {repeats} interleaved rounds after {args.warmup} warm-up; "
         f"range = min–max of per-round ratios; best = ratio of each arm's fastest round; load average "
         f"{load_average()}."],
        data,
    )


main = script_main(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
