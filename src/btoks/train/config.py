"""TrainConfig: the training recipe, read from YAML presets with ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from btoks.config import BToksConfig, check_ntp_side

_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
PRESETS = Path(__file__).resolve().parent.parent / "presets"


@dataclass
class DataSource:
    """One training dataset: MMEB-train rows (``path``), its sampling ``weight`` and GIC ``ntp_side``."""

    name: str
    path: str = ""
    weight: float = 1.0
    ntp_side: str = "positive"
    image_root: str | None = None

    def __post_init__(self) -> None:
        check_ntp_side(self.ntp_side)
        if self.weight <= 0:
            raise ValueError(f"dataset {self.name!r}: weight must be > 0, got {self.weight!r}")


@dataclass
class TrainConfig:
    """Everything ``btoks train`` needs; presets in ``configs/`` mirror the paper's recipe."""

    model: str = "tiny:llama"
    output_dir: str = "runs/train"
    btoks: BToksConfig = field(default_factory=BToksConfig)
    data: list[DataSource] = field(default_factory=list)
    data_root: str | None = None
    prompt_style: str = "btoks"
    examples: str | None = None
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    dora: bool = True
    lora_target_modules: list[str] | None = None
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 5000
    batch_size: int = 128
    grad_cache_chunk: int | None = 8
    sort_by_length: bool = True
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    hard_negatives: bool = False
    seed: int = 42
    dtype: str = "float32"
    attn_implementation: str = "sdpa"
    image_max_pixels: int | None = 28 * 28 * 1280
    video_frames: int = 8
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 2
    resume: bool = True

    def __post_init__(self) -> None:
        self._check_types()
        for name, ok, rule in _RANGES:
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ValueError(f"{name} must be {rule}, got {value!r}")
        if isinstance(self.btoks, dict):
            self.btoks = BToksConfig.from_dict(self.btoks)
        self.data = [DataSource(**d) if isinstance(d, dict) else d for d in self.data]
        if not self.data and not self.examples and self.data_root:
            self.data = manifest_sources(self.data_root)
        if self.prompt_style not in ("btoks", "authors"):
            raise ValueError(f"prompt_style must be btoks or authors, got {self.prompt_style!r}")
        if self.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ValueError(f"dtype must be float32, bfloat16, float16 or auto, got {self.dtype!r}")
        if not self.data and not self.examples:
            raise ValueError("no training data: set `data` (datasets), `data_root` (a folder whose manifest.json "
                             "lists `train` sets, e.g. mini-MMEB) or `examples` (a built-in example set)")

    def _check_types(self) -> None:
        """Numbers are numbers (integers where counted), switches are booleans: ``lora=maybe`` or ``seed=1e3``
        would otherwise be accepted and fail, or silently mean something else, much later."""
        for f in dataclasses.fields(self):
            kind = str(f.type).removesuffix(" | None")
            value = getattr(self, f.name)
            if value is None and str(f.type).endswith("| None"):
                continue
            if kind == "float" and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
                setattr(self, f.name, value := float(value))  # YAML 1.1 reads "2e-3" as a string
            if kind == "float" and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be an integer, got {value!r}")
            if kind == "bool" and not isinstance(value, bool):
                raise ValueError(f"{f.name} must be true or false, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        """Read a YAML file, or a preset shipped with btoks by name (``mini-quick``, ``mini-full``)."""
        file = preset_path(path)
        try:
            values = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{file}: invalid YAML ({_yaml_problem(e)})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{file}: expected a mapping of settings (key: value), got {type(values).__name__}")
        for item in overrides or []:
            apply_override(values, item)
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_POSITIVE_INTS = ("max_steps", "batch_size", "log_every", "save_every", "video_frames", "lora_r", "grad_cache_chunk",
                  "image_max_pixels")
_RANGES: list[tuple[str, Any, str]] = [
    *((name, lambda v: v >= 1, ">= 1") for name in _POSITIVE_INTS),
    ("lr", lambda v: v > 0, "> 0"),
    ("lora_alpha", lambda v: v > 0, "> 0"),
    ("lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("max_grad_norm", lambda v: v > 0, "> 0"),
    ("warmup_steps", lambda v: v >= 0, ">= 0"),
    ("seed", lambda v: v >= 0, ">= 0"),
    ("keep_checkpoints", lambda v: v >= 0, ">= 0 (0 keeps all)"),
]
"""(field, test, rule) checked after the types: values that would only fail (or mislead) deep in training."""


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line from a YAML error: the problem and its line/column, without the multi-line excerpt."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def preset_path(path: str | Path) -> Path:
    """``path`` itself if it exists, else ``btoks/presets/<path>.yaml``."""
    if Path(path).exists():
        return Path(path)
    preset = PRESETS / f"{Path(path).stem}.yaml"
    if preset.is_file():
        return preset
    names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise FileNotFoundError(f"no config file {str(path)!r} and no preset of that name (presets: {names})")


def manifest_sources(data_root: str | Path) -> list[DataSource]:
    """The ``train`` sets a benchmark folder's ``manifest.json`` lists (mini-MMEB writes one); [] if none."""
    path = Path(data_root) / "manifest.json"
    if not path.is_file():
        return []
    entries = json.loads(path.read_text()).get("train") or []
    return [DataSource(name=e["name"], path=e["path"], weight=e.get("weight", 1.0),
                       ntp_side=e.get("ntp_side", "positive")) for e in entries]


FIELD_HELP = {
    "model": "backbone: hub name or path (Qwen2/2.5/3-VL, any causal LM), btoks-mini, or tiny:<family>",
    "output_dir": "checkpoints/, log.jsonl and the final model/",
    "btoks.*": "method settings: num_btoks, pooling (btoks|last|mean), temperature, gen_weight (λ), gen_steps, "
               "kv_mode (compressed|full), gic_impl (cache|mask), max_length, target_max_length",
    "data": "list of {name, path, weight, ntp_side (positive|query|both|none)} MMEB-train sets under data_root; "
            "empty: the `train` sets of data_root/manifest.json (mini-MMEB)",
    "prompt_style": "btoks: MMEB-train text as published; authors: rendered as the authors' loader does (docs/parity.md)",
    "examples": "built-in example sets instead of data (shapes,text)",
    "lora / lora_r / lora_alpha / lora_dropout / dora": "LoRA(+DoRA) on the LLM projections; false = full FT. "
        "DoRA with lora_dropout > 0 (the paper's 0.05) re-runs every wrapped base layer on the dropped-out input: "
        "1.54x a step's FLOPs at Qwen2-VL-2B's shape; lora_dropout=0 avoids it (docs/benchmarks.md, table 7)",
    "lr / weight_decay / warmup_steps / max_steps": "AdamW with linear warmup and decay",
    "batch_size": "pairs per process per step (negatives are gathered across processes)",
    "grad_cache_chunk": "GradCache chunk size (null: no GradCache)",
    "sort_by_length": "sort pairs by query length before GradCache chunking (the authors' default)",
    "lora_target_modules": "module-name suffixes LoRA wraps (null: the backbone's LLM projections)",
    "max_grad_norm": "gradient clipping",
    "gradient_checkpointing": "recompute activations (uses the explicit-mask GIC path)",
    "hard_negatives": "add each row's neg_text/neg_image as an extra candidate",
    "seed / dtype / attn_implementation": "reproducibility, float32|bfloat16|float16|auto (bf16 where the hardware has it), sdpa|eager",
    "image_max_pixels": "largest image area after resizing (Qwen-VL dynamic resolution; btoks-mini is fixed)",
    "video_frames": "frames sampled uniformly per training video (btoks-mini uses at most 3 of them)",
    "log_every / save_every / keep_checkpoints / resume": "logging and atomic checkpoints; resume is exact",
}


def apply_override(values: dict[str, Any], item: str) -> None:
    """``a.b=value`` sets nested key ``b`` of ``a``; the value is parsed as YAML (numbers, null, lists)."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value (e.g. btoks.num_btoks=8)")
    key, raw = item.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = values
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {item!r}: {p!r} is not a section")
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"override {item!r}: invalid value ({_yaml_problem(e)})") from None
