"""Load a checkpoint written by the authors' code (``vlm2emb``, GitHub siryuson/BottleneckTokens).

Their training run leaves an HF-Trainer ``checkpoint-N/`` with a peft adapter (``adapter_config.json``,
``adapter_model.safetensors``; keys prefixed ``base_model.model._modules_dict.backbone.model.``,
``trainable_token_indices`` as a list of ids) next to a ``base_model/`` folder whose ``config.json``
(model_type ``btoks`` or ``vlm2emb``) lists the pipeline modules: the BTok injector (K), the backbone (hub
name or path), the pooling (mean of BToks, the v2 attention head, last token) and normalisation. This module
maps that onto a ``BToksModel`` with the authors' settings; ``BToksModel.from_pretrained`` calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from btoks.config import BToksConfig

BACKBONE_PREFIX = "base_model.model._modules_dict.backbone.model."
POOLING_PREFIX = "base_model.model._modules_dict.pooling."
_POOLINGS = {"BToksPooling": "btoks", "BToksAttentionPooling": "attention", "LastTokenPooling": "last",
             "MeanPooling": "mean"}


def find_checkpoint(path: str | Path) -> Path | None:
    """The adapter folder of an authors' run (``path`` itself, or its newest ``checkpoint-N``), else None."""
    path = Path(path)
    if _is_authors_adapter(path):
        return path
    steps = sorted((p for p in path.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and _is_authors_adapter(p)),
                   key=lambda p: int(p.name.split("-")[-1]))
    return steps[-1] if steps else None


def _is_authors_adapter(path: Path) -> bool:
    cfg = path / "adapter_config.json"
    if not cfg.is_file():
        return False
    mapping = json.loads(cfg.read_text()).get("auto_mapping") or {}
    return str(mapping.get("parent_library", "")).startswith("vlm2emb") or _base_dir(path) is not None


def _base_dir(checkpoint: Path) -> Path | None:
    """``base_model/`` of a run: the adapter's ``base_model_name_or_path`` (absolute, or relative to the run
    folder), else the run folder's ``base_model``; None unless its config is a vlm2emb pipeline."""
    name = json.loads((checkpoint / "adapter_config.json").read_text()).get("base_model_name_or_path") or ""
    named = (Path(name), checkpoint.parent / name, checkpoint / name) if name else ()
    for cand in (*named, checkpoint.parent / "base_model"):
        cfg = cand / "config.json"
        if cfg.is_file() and json.loads(cfg.read_text()).get("model_type") in ("btoks", "vlm2emb"):
            return cand
    return None


def authors_config(checkpoint: Path, base_model: str | None = None) -> tuple[BToksConfig, dict[str, Any]]:
    """btoks settings for an authors' run, and its adapter config."""
    adapter = json.loads((checkpoint / "adapter_config.json").read_text())
    base = _base_dir(checkpoint)
    if base is None:
        raise FileNotFoundError(f"{checkpoint}: no base_model/ folder with a vlm2emb config.json (looked for "
                                f"{adapter.get('base_model_name_or_path')!r} and ../base_model)")
    modules = json.loads((base / "config.json").read_text()).get("modules") or {}
    by_type = {m.get("type"): m for m in modules.values() if isinstance(m, dict)}
    backbone = next((m for m in modules.values() if isinstance(m, dict) and "model_name_or_path" in m), None)
    if backbone is None:
        raise ValueError(f"{base / 'config.json'}: no backbone module with model_name_or_path")
    pooling_mod = next((m for t, m in by_type.items() if t in _POOLINGS), {"type": "LastTokenPooling"})
    k = int(by_type.get("BToksTokenInjector", {}).get("num_tokens", 0))
    cfg = BToksConfig(num_btoks=k, pooling=_POOLINGS[pooling_mod["type"]], normalize="Normalize" in by_type,
                      base_model=base_model or backbone["model_name_or_path"],
                      pool_mlp_ratio=float(pooling_mod.get("mlp_ratio", 2.0)),
                      pool_dropout=float(pooling_mod.get("dropout", 0.1)),
                      pool_attention_scale=bool(pooling_mod.get("attention_scale", True)))
    cfg.extra["authors_checkpoint"] = str(checkpoint)
    return cfg, adapter


def load_authors_checkpoint(path: str | Path, *, base_model: str | None = None, merge: bool = False,
                            **load_kwargs: Any) -> Any:
    """A ``BToksModel`` from an authors' run folder or ``checkpoint-N``; ``base_model`` overrides where the
    backbone is loaded from (their config stores the hub name or the path used in training)."""
    import torch
    from safetensors.torch import load_file

    from btoks.backbones import load_backbone
    from btoks.model import BToksModel

    checkpoint = find_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"{path}: not an authors' (vlm2emb) checkpoint: no adapter_config.json here or in "
                                "a checkpoint-N/ folder")
    cfg, adapter = authors_config(checkpoint, base_model)
    assert cfg.base_model is not None
    model = BToksModel(load_backbone(cfg.base_model, **load_kwargs), cfg)
    ids = adapter.get("trainable_token_indices")
    if isinstance(ids, dict):
        ids = next(iter(ids.values()), None)
    if ids is not None and list(ids) != model.btok_ids:
        raise ValueError(f"{checkpoint}: BTok ids {list(ids)} differ from the tokenizer's {model.btok_ids} "
                         f"(backbone {cfg.base_model!r})")
    base = _base_dir(checkpoint)
    assert base is not None
    pool_state: dict[str, torch.Tensor] = {}
    if (base / "model.safetensors").is_file():
        pool_state = {k.removeprefix("_modules_dict.pooling."): v for k, v in load_file(base / "model.safetensors").items()
                      if k.startswith("_modules_dict.pooling.")}
    state = load_file(checkpoint / "adapter_model.safetensors")
    pool_state.update({k.removeprefix(POOLING_PREFIX): v for k, v in state.items() if k.startswith(POOLING_PREFIX)})
    if pool_state:
        model.pooler.load_state_dict({k: v.float() for k, v in pool_state.items()})
    model.apply_lora(int(adapter["r"]), int(adapter["lora_alpha"]), float(adapter.get("lora_dropout") or 0.0),
                     bool(adapter.get("use_dora")), init=adapter.get("init_lora_weights", True),
                     target_modules=list(adapter["target_modules"]))
    lora = {"base_model.model." + k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items()
            if k.startswith(BACKBONE_PREFIX)}
    model.load_adapter_state(lora, str(checkpoint))  # their trainable-token rows become model.btok_rows
    if merge:
        model.merge_adapters()
    return model
