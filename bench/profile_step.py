"""Evidence for tables 1 and 3: exact FLOP counts of each arm, and where a training step's time goes.

Not one of the six tables (``run_all`` does not run it): this is the evidence behind the explanations in
docs/benchmarks.md, and unlike wall-clock ratios it is immune to a noisy machine.

*FLOPs* (``torch.utils.flop_counter``; CPU flash attention registered here, counted as dense attention): the
encode forward with K = 4 BToks vs last-token pooling at each input length (the compute-bound expectation of
table 1), and the contrastive, GIC-cache and GIC-mask training steps of table 3's batch kinds.

*Profile* (``torch.profiler``, one step per arm after a warm-up): self CPU time of every op is put in one bucket:

* vocab: any op with a vocabulary-sized operand (LM-head matmuls forward/backward, log-softmax, NLL) — the part
  of GIC that scales with target tokens × vocabulary;
* attention: scaled-dot-product attention kernels (forward and backward) and the mask building around them;
* matmul: every other matrix multiply (the decoder's projections and MLPs, LoRA);
* other: element-wise ops, norms, RoPE, copies, autograd bookkeeping, Python dispatch.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import (
    Table,
    base_parser,
    describe_backbone,
    emit,
    load_average,
    load_bench_backbone,
    script_main,
)

NAME = "profile_step"
LENGTHS = (32, 64, 256, 1024)
ATTENTION = ("scaled_dot_product", "flash_attention", "efficient_attention", "_safe_softmax", "attention")
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")


def build_parser() -> argparse.ArgumentParser:
    from bench.train_step import KINDS

    p = base_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--kind", default=KINDS[1].name, choices=[k.name for k in KINDS if k.target],
                   help="batch kind from the training-step table (default: captions / queries)")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--image-tokens", type=int, default=None, help="tokens one image costs (default: the model's)")
    p.add_argument("--top", type=int, default=0, help="also print the top-N ops of each arm")
    p.add_argument("--what", choices=("flops", "profile", "both"), default="both")
    return p


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode knows the CUDA attention kernels only; count the CPU flash kernel (dense) too."""
    import torch
    from torch.utils import flop_counter
    from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count

    fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if fwd in flop_counter.flop_registry:
        return

    @register_flop_formula(fwd)
    def _fwd(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _bwd(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None,
             **kwargs: Any) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)


def count_flops(fn: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flop_table(backbone: Any, model_name: str, pairs: int, image_tokens: int) -> Table:
    """Exact FLOPs: encode K=4 vs K=0 per length; contrastive / GIC-cache / GIC-mask steps per batch kind."""
    import torch

    from bench.common import exact_texts
    from bench.train_step import GEN_WEIGHT, KINDS, K, _shape, _step, make_batch
    from btoks.config import BToksConfig
    from btoks.data.sample import Sample
    from btoks.model import BToksModel

    rows, data = [], {}
    btoks = BToksModel(backbone, BToksConfig(num_btoks=K, max_length=max(LENGTHS) + 16)).eval()
    last = BToksModel(backbone, BToksConfig(num_btoks=0, pooling="last", max_length=max(LENGTHS) + 16)).eval()
    for length in LENGTHS:
        samples = [Sample(text=t) for t in exact_texts(backbone.tokenizer, length, 1)]
        f = {}
        for name, m in (("btoks", btoks), ("last", last)):
            inputs = m.prepare(samples)
            with torch.inference_mode():
                f[name] = count_flops(lambda m=m, inputs=inputs: m(inputs))
        rows.append([f"encode, {length} input tokens", f"last-token {f['last'] / 1e9:.2f}",
                     f"BToks {f['btoks'] / 1e9:.2f}", f"last ÷ BToks = {f['last'] / f['btoks']:.3f}"])
        data[f"encode{length}"] = f
    model = BToksModel(backbone, BToksConfig(num_btoks=K, gen_weight=GEN_WEIGHT))
    model.apply_lora(r=16, alpha=32, dropout=0.0, dora=False)
    model.train()
    mix = {"contrastive": 0.0, "cache": 0.0, "mask": 0.0}
    for kind in KINDS:
        batch = make_batch(model, kind, pairs, image_tokens)
        f = {"contrastive": count_flops(lambda batch=batch: _step(model, batch, 0.0, "cache"))}
        if kind.target is None:
            f["cache"] = f["mask"] = f["contrastive"]
        else:
            f["cache"] = count_flops(lambda batch=batch: _step(model, batch, GEN_WEIGHT, "cache"))
            f["mask"] = count_flops(lambda batch=batch: _step(model, batch, GEN_WEIGHT, "mask"))
        for k in mix:
            mix[k] += kind.weight * f[k]
        rows.append([f"train step, {kind.name} ({_shape(batch)})", f"contrastive {f['contrastive'] / 1e9:.1f}",
                     f"GIC cache {f['cache'] / 1e9:.1f} / mask {f['mask'] / 1e9:.1f}",
                     f"cache ÷ mask = {f['cache'] / f['mask']:.3f}; GIC ÷ contrastive = "
                     f"{f['cache'] / f['contrastive']:.3f}"])
        data[kind.name] = f
    rows.append(["train step, weighted mix", f"contrastive {mix['contrastive'] / 1e9:.1f}",
                 f"GIC cache {mix['cache'] / 1e9:.1f} / mask {mix['mask'] / 1e9:.1f}",
                 f"cache ÷ mask = {mix['cache'] / mix['mask']:.3f}; GIC ÷ contrastive = "
                 f"{mix['cache'] / mix['contrastive']:.3f}"])
    return Table(
        "flop_counts", "FLOP counts per call (GFLOP; noise-free compute of tables 1 and 3)",
        ["work", "arm A", "arm B", "ratio"], rows,
        [f"model: {model_name} ({describe_backbone(backbone)}); torch.utils.flop_counter (matmuls, attention "
         f"counted dense incl. backward); encode = one text; training: {pairs} pairs, LoRA r16, same batches "
         "as table 3."],
        data,
    )


def bucket(name: str, shapes: list[Any], vocab: int) -> str:
    flat = [d for s in shapes if isinstance(s, list | tuple) for d in s if isinstance(d, int)]
    if vocab in flat:
        return "vocab"
    low = name.lower()
    if any(a in low for a in ATTENTION):
        return "attention"
    if name in MATMUL:
        return "matmul"
    return "other"


def profile(fn: Any, vocab: int, top: int = 0) -> dict[str, float]:
    """Self CPU seconds per bucket for one call of ``fn`` (after it was warmed up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    out = {"vocab": 0.0, "attention": 0.0, "matmul": 0.0, "other": 0.0}
    for evt in prof.key_averages(group_by_input_shape=True):
        out[bucket(evt.key, evt.input_shapes or [], vocab)] += evt.self_cpu_time_total / 1e6
    if top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return out


def run(args: argparse.Namespace) -> Table:
    from bench.train_step import GEN_WEIGHT, KINDS, K, _shape, _step, image_tokens_of, make_batch
    from btoks.config import BToksConfig
    from btoks.model import BToksModel

    backbone, model_name = load_bench_backbone(args.model)
    if args.what in ("flops", "both"):
        emit(flop_table(backbone, model_name, args.pairs, args.image_tokens or image_tokens_of(backbone)),
             args.save)
        if args.what == "flops":
            raise SystemExit(0)
        backbone, model_name = load_bench_backbone(args.model)  # fresh weights: no LoRA applied twice
    model = BToksModel(backbone, BToksConfig(num_btoks=K, gen_weight=GEN_WEIGHT))
    model.apply_lora(r=16, alpha=32, dropout=0.0, dora=False)
    model.train()
    kind = next(k for k in KINDS if k.name == args.kind)
    batch = make_batch(model, kind, args.pairs, args.image_tokens or image_tokens_of(backbone))
    vocab = model.backbone.lm_head.weight.shape[0]
    arms = {"contrastive": (0.0, "cache"), "GIC (cache)": (GEN_WEIGHT, "cache"), "GIC (mask)": (GEN_WEIGHT, "mask")}
    rows, data = [], {}
    for name, (gw, impl) in arms.items():
        _step(model, batch, gw, impl)  # warm-up
        b = profile(lambda gw=gw, impl=impl: _step(model, batch, gw, impl), vocab, args.top)
        total = sum(b.values())
        rows.append([name, f"{total:.2f} s"] + [f"{b[k]:.2f} s ({b[k] / total:.0%})"
                                               for k in ("matmul", "vocab", "attention", "other")])
        data[name] = b
    return Table(
        NAME, f"Profile of one training step ({kind.name}, {args.pairs} pairs)",
        ["arm", "self CPU total", "matmul (decoder, LoRA)", "vocab (LM head, CE)", "attention", "other"],
        rows,
        [f"model: {model_name} ({describe_backbone(backbone)}); LoRA r16; batch q / p / target widths "
         f"{_shape(batch)}; torch.profiler self CPU time (summed over threads' ops, one call per arm after a "
         f"warm-up); load average {load_average()}."],
        data,
    )


main = script_main(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
