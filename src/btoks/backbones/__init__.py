"""Backbone adapters behind one protocol, and the registry that picks one for a model.

The registry is the only place that dispatches on model type; add a family by subclassing ``Backbone`` and
listing it in ``ADAPTERS`` (most specific first; ``CausalLMBackbone`` is the catch-all).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig

from btoks.backbones.base import Backbone, ModelInputs, Segment
from btoks.backbones.causal_lm import CausalLMBackbone
from btoks.backbones.composed import MINI_NAME, MINI_VARIANTS, MiniBackbone, load_mini
from btoks.backbones.qwen_vl import QwenVLBackbone
from btoks.backbones.tiny import tiny_backbone

ADAPTERS: list[type[Backbone]] = [QwenVLBackbone, MiniBackbone, CausalLMBackbone]


def adapter_for(config: Any) -> type[Backbone]:
    """The adapter class for a HF config (clear error when no family matches)."""
    for adapter in ADAPTERS:
        if adapter.matches(config):
            return adapter
    raise ValueError(
        f"no btoks backbone adapter for model_type={getattr(config, 'model_type', None)!r} "
        f"(architectures={getattr(config, 'architectures', None)}); supported: Qwen2/2.5/3-VL, btoks-mini and any *ForCausalLM"
    )


def load_backbone(name_or_path: str, *, trust_remote_code: bool = False, **kwargs: Any) -> Backbone:
    """Load a backbone by hub name or local path (weights stay safetensors; remote code off unless asked)."""
    if name_or_path in MINI_VARIANTS:
        return load_mini(**{**MINI_VARIANTS[name_or_path], **kwargs})
    if name_or_path.startswith("tiny:"):  # random-weight test backbones, e.g. "tiny:qwen2_vl"
        return tiny_backbone(name_or_path.removeprefix("tiny:"), **kwargs)
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    adapter = adapter_for(config)
    return adapter.load(name_or_path, trust_remote_code=trust_remote_code, **kwargs)


__all__ = ["ADAPTERS", "MINI_NAME", "Backbone", "CausalLMBackbone", "MiniBackbone", "ModelInputs", "QwenVLBackbone",
           "Segment",
           "adapter_for", "load_backbone"]
