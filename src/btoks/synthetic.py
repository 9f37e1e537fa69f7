"""Random-weight models of a real architecture and synthetic MMEB-shaped pairs, for checks at the paper's scale.

``make gpu-check`` and ``python -m bench.simulate`` need Qwen2-VL-2B's exact shapes without downloading anything:
the architecture comes from a config shipped with btoks (``presets/arch/<name>.json``, the published values), the
weights are random, and the tokenizer is btoks' tiny offline BPE whose special-token ids replace the real ones
(ids do not change compute). Pairs mimic MMEB-train: image queries with short text positives (i2t, VQA,
classification: the query's BToks generate the positive) and text queries with image candidates (t2i: the
candidate's BToks generate the query), with realistic pixel counts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from btoks.data.sample import IMAGE_TOKEN, Sample

ARCH_DIR = Path(__file__).resolve().parent / "presets" / "arch"
PAPER_ARCH = "qwen2-vl-2b"
MERGED_PATCH_PX = 28
"""Qwen2-VL: one LLM token per 2×2 patches of 14 px."""


def arch_names() -> list[str]:
    return sorted(p.stem for p in ARCH_DIR.glob("*.json"))


def arch_config(name: str = PAPER_ARCH, *, layers: int | None = None, vision_depth: int | None = None,
                attn_implementation: str = "sdpa", token_ids: dict[str, int] | None = None) -> Any:
    """The HF config of a shipped architecture; ``layers`` / ``vision_depth`` cut it (for extrapolation)."""
    from transformers import CONFIG_MAPPING

    path = ARCH_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown architecture {name!r}; shipped: {', '.join(arch_names())}")
    values = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    text, vision = values.pop("text_config"), values.pop("vision_config")
    if layers is not None:
        text["num_hidden_layers"] = text["max_window_layers"] = layers
    if vision_depth is not None:
        vision["depth"] = vision_depth
    for key, value in (token_ids or {}).items():
        (text if key in ("bos_token_id", "eos_token_id", "pad_token_id") else values)[key] = value
    cfg = CONFIG_MAPPING[values.pop("model_type")](text_config=text, vision_config=vision, **values)
    cfg._attn_implementation = attn_implementation
    return cfg


def real_shape_backbone(name: str = PAPER_ARCH, *, layers: int | None = None, vision_depth: int | None = None,
                        dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                        attn_implementation: str = "sdpa", seed: int = 0, init: bool = True) -> Any:
    """A Qwen-VL backbone adapter of architecture ``name`` with random weights (no download).

    ``init=False`` leaves the weights uninitialised (for shape-only measurements: much faster to build).
    """
    from transformers import AutoModelForImageTextToText

    from btoks.backbones import QwenVLBackbone
    from btoks.backbones.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
           "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
           "eos_token_id": "<|im_end|>", "bos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>"}
    cfg = arch_config(name, layers=layers, vision_depth=vision_depth, attn_implementation=attn_implementation,
                      token_ids={k: tok.convert_tokens_to_ids(t) for k, t in ids.items()})
    torch.manual_seed(seed)
    with torch.device(device if init else "meta"):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=dtype, attn_implementation=attn_implementation)
    if not init:
        model = model.to_empty(device=device)
        model.tie_weights()
    return QwenVLBackbone(model.eval(), tok)


# ------------------------------------------------------------------------------------------------ pairs


@dataclass(frozen=True)
class PairShape:
    """One MMEB-like pair kind: text lengths in words, image size in LLM tokens (0: no image)."""

    name: str
    query_words: int
    query_image_tokens: tuple[int, int]
    positive_words: int
    positive_image_tokens: tuple[int, int]
    target_side: str
    """``positive``: the query's BToks generate the positive text; ``query``: the candidate's generate the query."""


PAPER_PAIRS = {
    # VQA / classification / i2t: a ~628-token image query, a 15-token answer or label it generates.
    "image-query": PairShape("image-query", 24, (600, 600), 15, (0, 0), "positive"),
    # t2i / visual-document retrieval: a 25-token query, a ~806-token image candidate that generates it.
    "image-candidate": PairShape("image-candidate", 25, (0, 0), 8, (780, 780), "query"),
    # Images of mixed sizes (300-1,000 tokens): what padding inside a GradCache chunk costs.
    "mixed-sizes": PairShape("mixed-sizes", 24, (300, 1000), 15, (0, 0), "positive"),
}
TINY_PAIRS = {
    "image-query": PairShape("image-query", 6, (4, 4), 4, (0, 0), "positive"),
    "image-candidate": PairShape("image-candidate", 6, (0, 0), 3, (6, 6), "query"),
    "mixed-sizes": PairShape("mixed-sizes", 6, (2, 12), 4, (0, 0), "positive"),
}


def _words(tokenizer: Any, rng: random.Random, n: int) -> str:
    vocab = [w for w in sorted(tokenizer.get_vocab()) if w.startswith("Ġ") and w[1:].isalpha() and len(w) > 2]
    return " ".join(rng.choice(vocab)[1:] for _ in range(n))


def image_of_tokens(tokens: int, rng: np.random.Generator) -> Image.Image:
    """A noise image that a Qwen-VL processor turns into about ``tokens`` LLM tokens (28 px per token side)."""
    h = max(2, round(tokens**0.5))
    w = max(2, round(tokens / h))
    pixels = rng.integers(0, 256, (h * MERGED_PATCH_PX, w * MERGED_PATCH_PX, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _side(tokenizer: Any, rng: random.Random, nrng: np.random.Generator, words: int,
          image_tokens: tuple[int, int], sid: str) -> Sample:
    if image_tokens[1] <= 0:
        return Sample(text=_words(tokenizer, rng, words), id=sid)
    image = image_of_tokens(rng.randint(*image_tokens), nrng)
    return Sample(text=f"{IMAGE_TOKEN} {_words(tokenizer, rng, words)}", images=[image], id=sid)


def synthetic_pairs(shape: PairShape, n: int, tokenizer: Any, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """``n`` (query, positive) pairs of one kind, with GIC targets set per ``shape.target_side``."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    queries, positives = [], []
    for i in range(n):
        q = _side(tokenizer, rng, nrng, shape.query_words, shape.query_image_tokens, f"{shape.name}-q{i}")
        p = _side(tokenizer, rng, nrng, shape.positive_words, shape.positive_image_tokens, f"{shape.name}-p{i}")
        if shape.target_side == "positive":
            q.target = p.text.replace(IMAGE_TOKEN, "").strip()
        else:
            p.target = q.text.replace(IMAGE_TOKEN, "").strip()
        queries.append(q)
        positives.append(p)
    return queries, positives
