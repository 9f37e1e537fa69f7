"""BToksConfig: every knob of the method in one place, so an ablation is one changed value."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Pooling = Literal["btoks", "last", "mean", "attention"]
KVMode = Literal["compressed", "full"]
GICImpl = Literal["cache", "mask"]
BTokInit = Literal["spare", "eos"]
GicPositions = Literal["count", "continue"]
GicTarget = Literal["input", "text"]
GenLossNorm = Literal["chunk", "batch"]
GenSides = Literal["sum", "mean"]
_CHOICES = {"pooling": ("btoks", "last", "mean", "attention"), "kv_mode": ("compressed", "full"),
            "gic_impl": ("cache", "mask"), "btok_init_mode": ("spare", "eos"),
            "gic_positions": ("count", "continue"), "gic_target": ("input", "text"),
            "gen_loss_norm": ("chunk", "batch"), "gen_sides": ("sum", "mean")}
NTP_SIDES = ("positive", "query", "both", "none")

CONFIG_NAME = "btoks_config.json"


@dataclass
class BToksConfig:
    """Method hyper-parameters (design §1). Training-loop settings live in ``btoks.train.TrainConfig``.

    ``num_btoks`` K appended tokens; K = 0 means last-token pooling (the VLM2Vec baseline).
    ``kv_mode``: ``compressed`` = the Condensation Mask (targets see only the BToks), ``full`` = the
    "no mask" ablation (targets see the whole input). ``gic_impl``: ``cache`` runs targets as a continuation of
    the BTok KV cache (fast path); ``mask`` runs one pass over ``[X|B|T]`` with an explicit 4D mask (reference,
    and the path used with gradient checkpointing, which disables KV caches in transformers). Both do the same
    FLOPs within 1 %; on CPU ``mask`` is as fast (one decoder call), ``cache`` saves memory on long inputs.
    ``gen_weight`` λ is applied for the first ``gen_steps`` optimiser steps (``None``: always).

    Defaults follow the authors' code (docs/parity.md has the table); the alternatives are kept as options:
    ``pooling="attention"`` is their v2 head (``pool_mlp_ratio``, ``pool_dropout``, ``pool_attention_scale``).
    ``btok_init_mode``: ``spare`` = tokens take unused embedding rows when the matrix has them, else the
    matrix grows (HF mean-resizing) and the new input rows copy EOS (authors); ``eos`` = input and LM-head
    rows always copy EOS (the paper text; ``btok_init`` names another token). ``gic_target``: ``input`` =
    the other side's full processed input incl. its images (authors), ``text`` = ``Sample.target`` text.
    ``gic_positions``: ``count`` = targets start at the number of valid ``[X|B]`` tokens (authors),
    ``continue`` = last ``[X|B]`` position + 1. ``gen_loss_norm``: ``chunk`` = token mean per GradCache
    chunk × chunk rows ÷ batch (authors), ``batch`` = one token mean over the batch × target rows ÷ batch.
    ``gen_sides``: ``sum`` (authors) or ``mean`` of the two sides' losses when both carry targets.
    """

    num_btoks: int = 4
    pooling: Pooling = "btoks"
    normalize: bool = True
    temperature: float = 0.02
    symmetric_loss: bool = False
    gen_weight: float = 5.0
    gen_steps: int | None = 2000
    kv_mode: KVMode = "compressed"
    gic_impl: GICImpl = "cache"
    btok_init: str | None = None
    btok_init_mode: BTokInit = "spare"
    pool_mlp_ratio: float = 4.0
    pool_dropout: float = 0.1
    pool_attention_scale: bool = True
    gic_target: GicTarget = "input"
    gic_positions: GicPositions = "count"
    gen_loss_norm: GenLossNorm = "chunk"
    gen_sides: GenSides = "sum"
    max_length: int = 1024
    target_max_length: int = 128
    truncate_targets: bool = False
    target_prefix: str | None = None
    target_suffix: str | None = None
    base_model: str | None = None
    backbone: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.num_btoks, int) or self.num_btoks < 0:
            raise ValueError(f"num_btoks must be an integer >= 0, got {self.num_btoks!r}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {getattr(self, name)!r}")
        if self.pooling in ("btoks", "attention") and self.num_btoks == 0:
            self.pooling = "last"  # K = 0 is the last-token baseline by definition
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.gen_weight < 0:
            raise ValueError(f"gen_weight must be >= 0, got {self.gen_weight!r}")
        if self.gen_steps is not None and self.gen_steps < 0:
            raise ValueError(f"gen_steps must be >= 0 or null, got {self.gen_steps!r}")
        for name in ("max_length", "target_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def gen_weight_at(self, step: int) -> float:
        """λ at optimiser step ``step`` (0-based): on for the first ``gen_steps`` steps, then off."""
        if self.num_btoks == 0 or (self.gen_steps is not None and step >= self.gen_steps):
            return 0.0
        return self.gen_weight

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BToksConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown BToksConfig field(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: str | Path) -> None:
        Path(directory, CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> BToksConfig:
        path = Path(directory, CONFIG_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a btoks model directory")
        return cls.from_dict(json.loads(path.read_text()))


def check_ntp_side(value: str) -> str:
    if value not in NTP_SIDES:
        raise ValueError(f"unknown ntp_side {value!r}; expected one of {', '.join(NTP_SIDES)}")
    return value
