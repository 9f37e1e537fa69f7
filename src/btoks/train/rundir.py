"""One output folder holds one training run: its configuration is fingerprinted, recorded, and checked on resume.

Without this, ``btoks train`` resumed from whatever checkpoint sat in ``output_dir``: a changed ``num_btoks``
crashed on a tensor shape, a changed λ or lr resumed silently, and the saved model then claimed a configuration
the run mostly did not use. Here every checkpoint (``trainer.json``) and ``train_config.json`` record the
settings that change what is trained (and their fingerprint); resuming with any of them changed is refused with
a message that names them and says how to start fresh or pick another folder. Leftovers of a killed run
(half-written checkpoints and models) are removed, and ``log.jsonl`` is cut back to the resumed step so no step
is logged twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from btoks.errors import BToksError
from btoks.train.checkpoint import LATEST, latest_checkpoint

log = logging.getLogger(__name__)

RUN_ONLY = frozenset({"output_dir", "resume", "log_every", "save_every", "keep_checkpoints"})
"""Fields that change where and how often a run writes, not what it trains: free to change on resume."""
CONFIG_FILE, LOG_FILE = "train_config.json", "log.jsonl"
_HINT = ("to start fresh there and delete its checkpoints use --no-resume (resume=false), or choose another folder "
         "with --output-dir DIR (output_dir=DIR)")


class ConfigMismatchError(BToksError):
    """``output_dir`` holds a run of a different configuration."""


def identity(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """The part of a ``TrainConfig.to_dict()`` that decides what is trained (see :data:`RUN_ONLY`)."""
    plain = json.loads(json.dumps(cfg_dict, default=str))  # tuples → lists, as read back from JSON
    if isinstance(plain.get("btoks"), dict):  # filled in when the model is built: `model` already names it
        plain["btoks"] = {k: v for k, v in plain["btoks"].items() if k not in ("base_model", "backbone")}
    return {k: v for k, v in plain.items() if k not in RUN_ONLY and k != "fingerprint"}


def fingerprint(cfg_dict: dict[str, Any]) -> str:
    blob = json.dumps(identity(cfg_dict), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


def differences(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """``key old → new`` for the first ``limit`` differing (dotted) keys of two config dicts; "" if none.

    Only keys both record are compared: a setting added to (or dropped from) btoks since ``old`` was written
    does not make an older run a different one.
    """
    a, b = _flatten(identity(old)), _flatten(identity(new))
    keys = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    parts = [f"{k} {a[k]!r} → {b[k]!r}" for k in keys[:limit]]
    return ", ".join(parts) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _recorded(out: Path) -> tuple[dict[str, Any], str] | None:
    """(config, where) of the run recorded in ``out``: the latest checkpoint first, else train_config.json."""
    ckpt = latest_checkpoint(out / "checkpoints")
    candidates = ([ckpt / "trainer.json"] if ckpt is not None else []) + [out / CONFIG_FILE]
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        cfg = data.get("config") if path.name == "trainer.json" else data
        if isinstance(cfg, dict):
            return cfg, str(path)
    return None


def clean_stale(out: Path) -> list[Path]:
    """Remove what a killed run leaves behind: ``.tmp-checkpoint-*``, ``.latest.tmp``, ``.model.*`` folders."""
    stale = [*out.glob(".model.*"), *(out / "checkpoints").glob(".tmp-checkpoint-*"),
             *(out / "checkpoints").glob(f".{LATEST}.tmp")]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d leftover(s) of an interrupted run in %s", len(stale), out)
    return stale


def check_same_run(out: Path, cfg_dict: dict[str, Any], hint: str = _HINT) -> None:
    """Raise :class:`ConfigMismatchError` when ``out`` records a run of another configuration."""
    recorded = _recorded(out)
    diff = differences(recorded[0], cfg_dict) if recorded is not None else ""
    if recorded is not None and diff:
        raise ConfigMismatchError(
            f"{out} holds a training run with a different configuration ({diff}; recorded in {recorded[1]}); {hint}"
        )


def prepare(out: Path, cfg_dict: dict[str, Any], resume: bool) -> None:
    """Make ``out`` ready for this configuration (main process only; call before resuming).

    ``resume``: a recorded run of a different configuration is refused (:class:`ConfigMismatchError`); the
    same one resumes. Not ``resume``: the previous run's checkpoints and log are deleted (start fresh).
    """
    out.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    if resume:
        check_same_run(out, cfg_dict)
    else:
        if (out / "checkpoints").exists():
            log.info("resume=false: deleting the previous run's checkpoints in %s", out / "checkpoints")
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / LOG_FILE).unlink(missing_ok=True)
    record = {**cfg_dict, "fingerprint": fingerprint(cfg_dict)}
    tmp = out / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, out / CONFIG_FILE)


def trim_log(out: Path, step: int) -> None:
    """Drop ``log.jsonl`` rows past ``step`` (logged after the checkpoint a resume starts from)."""
    path = out / LOG_FILE
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            row_step = json.loads(line).get("step", 0)
        except ValueError:
            continue  # a line cut by a kill mid-write
        if row_step <= step:
            keep.append(line)
    if len(keep) != len(lines):
        tmp = path.with_name(f".{LOG_FILE}.tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, path)
