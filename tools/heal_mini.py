"""Reproduce the shipped btoks-mini delta (src/btoks/backbones/mini_delta.safetensors).

    python tools/heal_mini.py [--data DIR] [--steps 300] [--out src/btoks/backbones/mini_delta.safetensors]

Builds mini-MMEB (full, seed 0) unless --data names a build, composes the *raw* btoks-mini (no delta), measures
held-out target CE, heals + aligns it (btoks.backbones.mini_heal), measures again, and writes the delta with
its provenance (steps, seconds, CE before/after) in the safetensors metadata and next to it as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from btoks.backbones.composed import load_mini
from btoks.backbones.mini_heal import (
    HealConfig,
    heal,
    heldout_ce,
    mini_mmeb_examples,
    save_delta,
    text_examples,
)
from btoks.data.mini_mmeb import build_mini_mmeb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="a mini-MMEB build (default: build the full size into a temp folder)")
    parser.add_argument("--steps", type=int, default=HealConfig.steps)
    parser.add_argument("--batch-size", type=int, default=HealConfig.batch_size)
    parser.add_argument("--lr", type=float, default=HealConfig.lr)
    parser.add_argument("--eval-per-set", type=int, default=24, help="held-out examples per test set")
    parser.add_argument("--out", default="src/btoks/backbones/mini_delta.safetensors")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tmp = None
    if args.data:
        data = Path(args.data)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="heal-mini-")
        data = Path(tmp.name) / "data"
        build_mini_mmeb(data, seed=0, size="full")
    train = mini_mmeb_examples(data, "train")
    text = text_examples("train")
    held = mini_mmeb_examples(data, "test", limit_per_set=args.eval_per_set) + text_examples("test", limit=64)
    print(f"{len(train)} media examples, {len(text)} text chunks; {len(held)} held-out examples", flush=True)
    backbone = load_mini(delta=None)
    before = heldout_ce(backbone, held, progress=True)
    print("held-out CE before:", json.dumps({k: round(v, 3) for k, v in before.items()}), flush=True)
    cfg = HealConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    start = time.perf_counter()
    wrapped, history = heal(backbone, train, text, cfg, log=lambda m: print(m, flush=True))
    seconds = time.perf_counter() - start
    meta = {"num_layers": backbone.model.config.text_config.num_hidden_layers, "config": vars(cfg),
            "train_seconds": round(seconds, 1), "heldout_ce_before": before,
            "data": "mini-MMEB full seed 0 train split + gensim lee_background.cor", "threads": torch.get_num_threads()}
    out = Path(args.out)
    save_delta(out, backbone, wrapped, meta)  # saved before the (slow) held-out pass, then again with it
    after = heldout_ce(backbone, held, progress=True)
    print("held-out CE after:", json.dumps({k: round(v, 3) for k, v in after.items()}), flush=True)
    meta["heldout_ce_after"] = after
    save_delta(out, backbone, wrapped, meta)
    out.with_suffix(".json").write_text(json.dumps({**meta, "loss": [h["loss"] for h in history]}, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {seconds:.0f} s of training")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
