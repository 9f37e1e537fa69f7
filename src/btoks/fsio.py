"""Durability helpers shared by every atomic writer (checkpoints, indexes)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Persist a rename inside ``path``; silently skipped where directories cannot be fsynced."""
    with contextlib.suppress(OSError):
        fsync_file(path)
