"""Training-step cost at the paper's scale without a GPU: FLOPs and saved activations of Qwen2-VL-2B's shape.

btoks' own ``compute_gradients`` (GradCache chunks of 8, K = 4, λ = 5, LoRA/DoRA r16 on q, k, v, o, down_proj) is
driven on random-weight models of Qwen2-VL-2B's exact architecture (``btoks/presets/arch/qwen2-vl-2b.json``)
cut to 1-2 decoder layers and 1-2 vision blocks; each quantity is measured at (L, V) = (1, 1), (2, 1), (1, 2)
and extrapolated linearly to 28 layers and 32 blocks (per-layer cost = the difference). Pairs are MMEB-shaped
(``btoks.synthetic``): a ~630-token image query with a 15-word answer it generates, a 25-word text query with a
~790-token image candidate that generates it, and images of 300-1,000 tokens for padding.

* FLOPs: ``torch.utils.flop_counter`` over the whole step (forward and backward, both GradCache passes).
* Saved bytes: ``torch.autograd.graph.saved_tensors_hooks`` — the distinct storages autograd keeps for backward
  during one chunk's forward (parameters excluded), the largest over the step's chunks.

Matrix multiplies, convolutions and attention kernels do not run: their outputs are zeros of the shape and
dtype their meta kernels give (``ShapeOnly``). Counts depend on shapes only, so they are exact, and a step of
the real shape takes seconds on a CPU. Everything else (norms, activations, peft, losses) runs for real.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from tqdm.auto import tqdm

from bench.common import Table, base_parser, fmt_bytes, script_main

NAME = "simulate"
FULL_LAYERS, FULL_VISION = 28, 32
CONFIGS = ((1, 1), (2, 1), (1, 2))
"""(decoder layers, vision blocks) measured; the differences give one layer's and one block's cost."""


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


class ShapeOnly(TorchDispatchMode):
    """Skip the arithmetic of every op that only produces floating-point values.

    Such an op's output is an uninitialised tensor with the shape, dtype and strides its meta kernel gives; an
    in-place op on a floating tensor returns that tensor untouched. Views, and ops producing integer or boolean
    tensors or shapes that depend on data (positions, masks, indices, ``nonzero``, ``.item()``), run for real,
    so control flow and every shape are those of the real computation. Values are meaningless.
    """

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        schema = func._schema
        inputs = _tensors((args, kwargs))
        if not inputs or any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
            return func(*args, **kwargs)  # factories and views: cheap, and their results must be real
        if schema.is_mutable:
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if schema.name.endswith("_") and first is not None and first.is_floating_point() \
                    and len(schema.returns) == 1:
                return first  # in-place arithmetic on values nobody reads
            return func(*args, **kwargs)
        try:
            meta_args, meta_kwargs = tree_map_only(torch.Tensor, lambda t: t.to("meta"), (args, kwargs))
            out = func(*meta_args, **meta_kwargs)
        except (NotImplementedError, RuntimeError, TypeError):
            return func(*args, **kwargs)  # data-dependent (``.item()``, ``nonzero``): run it
        outs = _tensors(out)
        if not outs or not all(t.is_floating_point() for t in outs) \
                or len(outs) != len(torch.utils._pytree.tree_leaves(out)):
            return func(*args, **kwargs)
        device = inputs[0].device
        return tree_map_only(
            torch.Tensor, lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device), out)


@dataclass(frozen=True)
class Arm:
    """One way to run the step. Defaults: the paper recipe with btoks' current choices."""

    gen_weight: float = 5.0
    gic_impl: str = "cache"
    lora: str = "dora"
    """``lora``, ``dora`` (DoRA, dropout 0) or ``dora-dropout`` (DoRA with the paper's dropout 0.05)."""
    adapter_fp32: bool = False
    """peft's default: adapters autocast to fp32 on a bf16 model."""
    math_attention: bool = False
    """Force the math SDPA kernel (what an explicit 4-D mask can force on GPU): materialised attention."""
    sort: bool = False
    """Sort pairs by query length before chunking (``prepare_batch(sort_by_length=True)``)."""
    reuse_media: bool = True
    """GradCache pass 2 reuses pass 1's frozen vision features (``Backbone.precompute_media``)."""


@dataclass
class Measured:
    flops: float
    saved: float
    """Largest saved-activation bytes of one chunk forward."""

    def __add__(self, o: Measured) -> Measured:
        return Measured(self.flops + o.flops, self.saved + o.saved)

    def __sub__(self, o: Measured) -> Measured:
        return Measured(self.flops - o.flops, self.saved - o.saved)

    def __mul__(self, k: float) -> Measured:
        return Measured(self.flops * k, self.saved * k)


@contextlib.contextmanager
def saved_bytes(params: set[int]) -> Iterator[Callable[[], float]]:
    """Track bytes of distinct non-parameter storages autograd saves; the yielded function returns and resets."""
    seen: dict[int, Any] = {}  # holding the storages keeps their addresses from being reused while counting

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s
        return t

    def take() -> float:
        total = float(sum(s.nbytes() for s in seen.values()))
        seen.clear()
        return total

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield take


def _register_flops() -> None:
    from bench.profile_step import _register_cpu_attention_flops

    _register_cpu_attention_flops()


def build_model(arm: Arm, layers: int, vision: int, tiny: bool = False) -> Any:
    from btoks.backbones.tiny import tiny_backbone
    from btoks.config import BToksConfig
    from btoks.model import BToksModel
    from btoks.synthetic import real_shape_backbone

    backbone = tiny_backbone("qwen2_vl", attn_implementation="sdpa") if tiny else \
        real_shape_backbone(layers=layers, vision_depth=vision, dtype=torch.bfloat16, init=False)
    model = BToksModel(backbone, BToksConfig(num_btoks=4, gen_weight=arm.gen_weight, gic_impl=arm.gic_impl,
                                             max_length=4096, target_max_length=128))
    if arm.lora != "none":
        model.apply_lora(r=16, alpha=32, dropout=0.05 if arm.lora == "dora-dropout" else 0.0,
                         dora=arm.lora != "lora", autocast_adapter_dtype=arm.adapter_fp32)
    return model.train()


def prepare(model: Any, queries: list[Any], positives: list[Any], arm: Arm, chunk: int) -> Any:
    """The step's tokenised chunks (independent of depth and adapters, so shared by every measurement)."""
    from btoks.train.step import prepare_batch

    return prepare_batch(model, queries, positives, chunk_size=chunk, sort_by_length=arm.sort)


def measure(model: Any, batch: Any, arm: Arm) -> Measured:
    """FLOPs of one ``compute_gradients`` step and the largest saved bytes of a chunk forward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from btoks.train.step import compute_gradients

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    per_chunk: list[float] = []
    _register_flops()
    kernel = sdpa_kernel(SDPBackend.MATH) if arm.math_attention else contextlib.nullcontext()
    with ShapeOnly(), FlopCounterMode(display=False) as counter, kernel, saved_bytes(params) as take:
        def backward(loss: torch.Tensor) -> None:
            per_chunk.append(take())
            loss.backward()

        compute_gradients(model, batch, arm.gen_weight, backward=backward, reuse_media=arm.reuse_media)
    model.zero_grad(set_to_none=True)
    return Measured(float(counter.get_total_flops()), max(per_chunk))


def extrapolate(arm: Arm, pairs: tuple[list[Any], list[Any]], chunk: int,
                batches: dict[Any, Any], key: Any) -> dict[str, Measured]:
    """Measured at CONFIGS, extrapolated to the full depth: {"full", "layer", "block", "base"}."""
    got = {}
    for layers, vision in CONFIGS:
        model = build_model(arm, layers, vision)
        if (key, arm.sort) not in batches:
            batches[key, arm.sort] = prepare(model, *pairs, arm, chunk)
        got[layers, vision] = measure(model, batches[key, arm.sort], arm)
    layer = got[2, 1] - got[1, 1]
    block = got[1, 2] - got[1, 1]
    base = got[1, 1] - layer - block
    full = base + layer * FULL_LAYERS + block * FULL_VISION
    return {"full": full, "layer": layer, "block": block, "base": base}


COMPARISONS: list[tuple[str, str, Arm, Arm]] = [
    ("vision tower in both passes ÷ reused", "image-query", Arm(reuse_media=False), Arm()),
    ("vision tower in both passes ÷ reused", "image-candidate", Arm(reuse_media=False), Arm()),
    ("GIC (cache) ÷ contrastive-only", "image-query", Arm(), Arm(gen_weight=0.0)),
    ("GIC (cache) ÷ contrastive-only", "image-candidate", Arm(), Arm(gen_weight=0.0)),
    ("GIC cache ÷ explicit mask", "image-query", Arm(), Arm(gic_impl="mask")),
    ("DoRA dropout 0.05 ÷ DoRA dropout 0", "image-query", Arm(lora="dora-dropout"), Arm()),
    ("DoRA (dropout 0) ÷ LoRA", "image-query", Arm(), Arm(lora="lora")),
    ("adapters fp32 ÷ adapters bf16", "image-query", Arm(adapter_fp32=True), Arm()),
    ("math attention ÷ efficient kernel", "image-query", Arm(math_attention=True), Arm()),
    ("unsorted ÷ sorted by length", "mixed-sizes", Arm(), Arm(sort=True)),
]


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(NAME, __doc__.splitlines()[0], model=False)
    p.add_argument("--pairs", type=int, default=16, help="pairs per step (default 16: two chunks per side)")
    p.add_argument("--chunk", type=int, default=8, help="GradCache chunk (default 8, the paper's)")
    p.add_argument("--per-device", type=int, default=128, help="the paper's batch per device, to scale FLOPs to")
    p.add_argument("--only", default=None, help="run comparisons whose name contains this text")
    return p


def run(args: argparse.Namespace) -> Table:
    from bench.common import quiet_libraries
    from btoks.backbones.tiny import tiny_tokenizer
    from btoks.synthetic import PAPER_PAIRS, synthetic_pairs

    quiet_libraries()
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    pairs = {k: synthetic_pairs(s, args.pairs, tok, seed=1) for k, s in PAPER_PAIRS.items()}
    scale = args.per_device / args.pairs
    cache: dict[tuple[Arm, str], dict[str, Measured]] = {}
    batches: dict[Any, Any] = {}
    rows, data = [], {}
    todo = [c for c in COMPARISONS if not args.only or args.only in c[0]]
    for title, kind, a, b in tqdm(todo, desc="comparisons", file=sys.stderr):
        for arm in (a, b):
            if (arm, kind) not in cache:
                cache[arm, kind] = extrapolate(arm, pairs[kind], args.chunk, batches, kind)
        ma, mb = cache[a, kind]["full"], cache[b, kind]["full"]
        rows.append([title, kind, f"{ma.flops * scale / 1e15:.1f} / {mb.flops * scale / 1e15:.1f}",
                     f"**{ma.flops / mb.flops:.3f}**", f"{fmt_bytes(ma.saved)} / {fmt_bytes(mb.saved)}",
                     f"{ma.saved / mb.saved:.2f}"])
        data[f"{title} [{kind}]"] = {name: {k: dataclasses.asdict(v) for k, v in cache[arm, kind].items()}
                                     for name, arm in (("a", a), ("b", b))}
    return Table(
        NAME, "Training step at Qwen2-VL-2B's shape: FLOPs and saved activations (simulated)",
        ["comparison (A ÷ B)", "pairs", f"step PFLOP A / B ({args.per_device}/device)", "FLOPs A ÷ B",
         f"saved per chunk of {args.chunk}: A / B", "saved A ÷ B"],
        rows,
        [f"Qwen2-VL-2B shape (28 layers, hidden 1536, 32-block ViT), bf16, random weights; K = 4, λ = 5, "
         f"GradCache chunks of {args.chunk}; measured on {args.pairs} pairs at (layers, blocks) = "
         f"{', '.join(map(str, CONFIGS))} and extrapolated to 28 / 32; FLOPs scaled to {args.per_device} pairs.",
         "Unless the row varies it: DoRA r16 α32 dropout 0 with adapters in bf16, GIC cache path, sdpa, "
         "frozen vision features reused in GradCache's pass 2, pairs in batch order."],
        data,
    )


main = script_main(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
