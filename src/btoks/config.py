"""BToksConfig: every knob of the method in one place, so an ablation is one changed value."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Pooling = Literal["btoks", "last", "mean"]
KVMode = Literal["compressed", "full"]
GICImpl = Literal["cache", "mask"]
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
        if self.pooling not in ("btoks", "last", "mean"):
            raise ValueError(f"pooling must be 'btoks', 'last' or 'mean', got {self.pooling!r}")
        if self.pooling == "btoks" and self.num_btoks == 0:
            self.pooling = "last"  # K = 0 is the last-token baseline by definition
        if self.kv_mode not in ("compressed", "full"):
            raise ValueError(f"kv_mode must be 'compressed' or 'full', got {self.kv_mode!r}")
        if self.gic_impl not in ("cache", "mask"):
            raise ValueError(f"gic_impl must be 'cache' or 'mask', got {self.gic_impl!r}")
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
