"""Atomic training checkpoints that resume bit-for-bit: trainable weights, optimizer, scheduler, RNGs, data
position. A checkpoint directory appears under its final name only once complete (write to a temp dir, fsync,
rename), and ``latest`` is switched with ``os.replace``, so a crash at any point leaves the previous one usable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from btoks.fsio import fsync_dir, fsync_file

LATEST = "latest"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: str | Path, step: int, params: dict[str, torch.Tensor], optimizer: Any,
                    scheduler: Any, extra: dict[str, Any], keep: int = 2) -> Path:
    """Write ``root/checkpoint-{step}`` atomically and point ``root/latest`` at it; keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-checkpoint-", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in params.items()}, tmp / "trainable.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state()}, tmp / "state.pt")
        (tmp / "trainer.json").write_text(json.dumps({"step": step, **extra}, indent=2))
        for f in tmp.iterdir():
            fsync_file(f)
        final = root / f"checkpoint-{step}"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, root / LATEST)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done = sorted((p for p in root.glob("checkpoint-*")), key=lambda p: int(p.name.split("-")[1]))
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    pointer = Path(root, LATEST)
    if not pointer.is_file():
        return None
    path = Path(root, pointer.read_text().strip())
    return path if (path / "trainer.json").is_file() else None


def load_checkpoint(path: str | Path, params: dict[str, torch.Tensor], optimizer: Any,
                    scheduler: Any) -> dict[str, Any]:
    """Restore into live objects; returns ``trainer.json`` (step, sampler state, ...)."""
    path = Path(path)
    weights = load_file(path / "trainable.safetensors")
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ValueError(f"checkpoint {path} lacks trainable parameters: {missing[:5]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    state = torch.load(path / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / "trainer.json").read_text())
