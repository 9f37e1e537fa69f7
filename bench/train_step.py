"""Table 3: training step time, GIC fast path ÷ explicit-mask path, and GIC ÷ contrastive-only.

A step is ``compute_gradients`` (forward + backward, InfoNCE + λ·GIC) on one batch of query/positive pairs in
training mode with the project's CPU LoRA recipe (configs/mini-quick.yaml: r 16, α 32, no dropout, no DoRA;
``--dora`` gives the paper's DoRA + dropout 0.05) on 8 pairs, the paper's GradCache chunk (a GradCache step is
one graph-free embedding pass, identical in every arm, plus one such forward/backward per chunk); the optimiser
update is the same in every arm and is left out. The paper samples each batch from one source dataset, so targets within a batch are
alike: we time one batch per *kind* of MMEB-train set and weight the kinds into a mix:

* labels / answers (classification and VQA sets; the query's BToks generate the short positive text),
* captions / queries (i2t / t2i captions, grounding labels, ColPali / VisRAG queries),
* long texts (WebQA passages, VisDial dialogues, LLaVA-Hound video captions),
* no target (CIRR, NIGHTS: image → image, ``ntp_side = none``; all arms run the same contrastive code).

Inputs are text stand-ins of the same token count as the model's image tokens (an image is ``--image-tokens``
tokens; the frozen vision tower costs the same in every arm), so lengths are exact and batches unpadded except
for the targets, which are padded to the longest in the batch as in training.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from functools import partial
from typing import Any

from bench.common import (
    Table,
    Timing,
    base_parser,
    describe_backbone,
    exact_texts,
    fmt_seconds,
    goal_cell,
    interleaved,
    load_average,
    load_bench_backbone,
    ratio,
    repeats_of,
    script_main,
)

NAME = "train_step"
K = 4
GEN_WEIGHT = 5.0
GOAL_CACHE_VS_MASK, GOAL_GIC_VS_CON = 0.6, 1.35
MINI_IMAGE_TOKENS = 11  # btoks-mini: 3×3 pooled EfficientNet cells + <|vision_start|> + <|vision_end|>


def image_tokens_of(backbone: Any) -> int:
    """Tokens one image costs in ``backbone`` (btoks-mini: grid² + 2 wrappers); text-only models: as btoks-mini."""
    grid = getattr(getattr(backbone.model, "config", None), "image_grid", None)
    return grid * grid + 2 if isinstance(grid, int) else MINI_IMAGE_TOKENS


@dataclass(frozen=True)
class Kind:
    """One family of MMEB-train sets: input lengths and the GIC target length range (tokens, before wrapping)."""

    name: str
    weight: float
    query_text: int
    """text tokens of the query besides its image (instruction / question)."""
    positive_text: int | None
    """text tokens of the positive besides an image; ``None``: the positive *is* the target text."""
    positive_image: bool
    target: tuple[int, int] | None
    datasets: str


KINDS = (
    Kind("labels / answers", 0.50, 12, None, False, (1, 8),
         "ImageNet-1K, N24News, HatefulMemes, VOC2007, SUN397, OK-VQA, A-OKVQA, DocVQA, InfographicsVQA, ChartQA, "
         "Visual7W, video QA"),
    Kind("captions / queries", 0.30, 10, None, False, (8, 40),
         "MSCOCO / VisualNews i2t + t2i, MSCOCO grounding, ColPali, VisRAG"),
    Kind("long texts", 0.10, 10, None, False, (48, 120), "WebQA, VisDial, LLaVA-Hound captions"),
    Kind("no target", 0.10, 14, 6, True, None, "CIRR, NIGHTS"),
)


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(NAME, __doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8,
                   help="query/positive pairs per step (default 8: one GradCache chunk of the paper's recipe)")
    p.add_argument("--image-tokens", type=int, default=None,
                   help=f"tokens one image costs (default: the model's; btoks-mini {MINI_IMAGE_TOKENS})")
    p.add_argument("--dora", action="store_true", help="the paper's LoRA recipe: DoRA, dropout 0.05")
    p.add_argument("--no-lora", action="store_true", help="full fine-tuning instead of LoRA")
    return p


def make_samples(model: Any, kind: Kind, pairs: int, image_tokens: int, seed: int = 0) -> tuple[list, list]:
    """Query/positive samples of ``kind``; the positive's text is the query's GIC target."""
    from btoks.data.sample import Sample

    tok = model.backbone.tokenizer
    rng = random.Random(seed)
    queries, positives = [], []
    q_texts = exact_texts(tok, image_tokens + kind.query_text, pairs, seed=seed)
    for i in range(pairs):
        p_len = rng.randint(*kind.target) if kind.target else (kind.positive_text or 1)
        p_text = exact_texts(tok, p_len + (image_tokens if kind.positive_image else 0), 1, seed=seed * 7919 + i)[0]
        target = p_text.strip() if kind.target else None
        queries.append(Sample(text=q_texts[i], id=f"q{i}", target=target))
        positives.append(Sample(text=p_text, id=f"p{i}"))
    return queries, positives


def make_batch(model: Any, kind: Kind, pairs: int, image_tokens: int, seed: int = 0,
               chunk_size: int | None = None) -> Any:
    """A tokenised batch of ``kind`` (one chunk unless ``chunk_size``: GradCache)."""
    from btoks.train.step import prepare_batch

    return prepare_batch(model, *make_samples(model, kind, pairs, image_tokens, seed), chunk_size=chunk_size)


def _step(model: Any, batch: Any, gen_weight: float, impl: str) -> None:
    from btoks.train.step import compute_gradients

    model.config.gic_impl = impl
    compute_gradients(model, batch, gen_weight)
    model.zero_grad(set_to_none=True)


def _shape(batch: Any) -> str:
    q = batch.chunks["query"][0]
    p = batch.chunks["positive"][0]
    t = q.targets.input_ids.shape[1] if q.targets is not None else 0
    return f"{q.inputs.input_ids.shape[1]} / {p.inputs.input_ids.shape[1]} / {t}"


def run(args: argparse.Namespace) -> Table:
    from btoks.config import BToksConfig
    from btoks.model import BToksModel

    backbone, model_name = load_bench_backbone(args.model)
    pairs = args.pairs
    image_tokens = args.image_tokens or image_tokens_of(backbone)
    model = BToksModel(backbone, BToksConfig(num_btoks=K, gen_weight=GEN_WEIGHT, max_length=1024,
                                             target_max_length=128))
    if not args.no_lora:
        model.apply_lora(r=16, alpha=32, dropout=0.05 if args.dora else 0.0, dora=args.dora)
    model.train()
    repeats = repeats_of(args)
    kinds = KINDS[:2] + KINDS[3:] if args.quick else KINDS
    per_kind: dict[str, dict[str, Timing]] = {}
    rows, data = [], {}
    for kind in kinds:
        batch = make_batch(model, kind, pairs, image_tokens)
        arms = {"contrastive": partial(_step, model, batch, 0.0, "cache")}
        if kind.target is not None:
            arms["gic_cache"] = partial(_step, model, batch, GEN_WEIGHT, "cache")
            arms["gic_mask"] = partial(_step, model, batch, GEN_WEIGHT, "mask")
        t = interleaved(arms, repeats, args.warmup, desc=f"{NAME} {kind.name}")
        if kind.target is None:  # identical code path: no targets, so every arm is the contrastive step
            t["gic_cache"] = t["gic_mask"] = t["contrastive"]
        per_kind[kind.name] = t
        cvm, gvc = ratio(t["gic_cache"], t["gic_mask"]), ratio(t["gic_cache"], t["contrastive"])
        rows.append([kind.name, f"{kind.weight:.0%}", _shape(batch), t["contrastive"].cell(),
                     t["gic_cache"].cell() if kind.target else "= contrastive",
                     t["gic_mask"].cell() if kind.target else "= contrastive", cvm.cell(best=True),
                     gvc.cell(best=True)])
        data[kind.name] = {"weight": kind.weight, "shape_q_p_t": _shape(batch), "datasets": kind.datasets,
                           "times": {k: v.samples for k, v in t.items()}}
    weight = sum(k.weight for k in kinds)
    mix = {arm: [sum(k.weight * per_kind[k.name][arm].samples[r] for k in kinds) / weight for r in range(repeats)]
           for arm in ("contrastive", "gic_cache", "gic_mask")}
    cvm, gvc = ratio(mix["gic_cache"], mix["gic_mask"]), ratio(mix["gic_cache"], mix["contrastive"])
    rows.append(["**mix (weighted mean step)**", f"{weight:.0%}", "", fmt_seconds(Timing(mix["contrastive"]).median),
                 fmt_seconds(Timing(mix["gic_cache"]).median), fmt_seconds(Timing(mix["gic_mask"]).median),
                 f"**{cvm.cell(best=True)}**", f"**{gvc.cell(best=True)}**"])
    rows.append(["goal", "", "", "", "", "", goal_cell(cvm.value, GOAL_CACHE_VS_MASK, False),
                 goal_cell(gvc.value, GOAL_GIC_VS_CON, False)])
    data["mix"] = {"cache_vs_mask": cvm.to_dict(), "gic_vs_contrastive": gvc.to_dict(), "times": mix}
    lora = "full fine-tuning" if args.no_lora else (
        "LoRA r16 α32 " + ("+ DoRA, dropout 0.05" if args.dora else "(no DoRA, no dropout: configs/mini-quick.yaml)"))
    return Table(
        NAME, "3. Training step time: GIC fast path ÷ explicit mask, GIC ÷ contrastive-only",
        ["batch kind", "weight", "tokens q / p / target", "contrastive step", "GIC step (cache)", "GIC step (mask)",
         "cache ÷ mask", "GIC ÷ contrastive"],
        rows,
        [f"model: {model_name} ({describe_backbone(backbone)}); {lora}, train mode; K={K}, λ={GEN_WEIGHT}; "
         f"{pairs} pairs per step, no GradCache (one chunk), optimiser step excluded; an image = "
         f"{image_tokens} tokens; tokens are padded widths incl. BToks and the 4 target wrapping tokens.",
         "target lengths (tokens, uniform per sample): labels/answers 1–8, captions/queries 8–40, long texts "
         "48–120; the positive's text is the query's GIC target (ntp_side=positive; t2i-style sets mirror it).",
         f"median of {repeats} interleaved rounds after {args.warmup} warm-up; ranges = min–max of per-round "
         f"ratios; best = ratio of the fastest rounds; the mix weights each round's kind times; load average "
         f"{load_average()}."],
        data,
    )


main = script_main(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
