"""Shared plumbing of the analysis tools: GIC samples (models come from :func:`btoks.load`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from btoks.config import check_ntp_side
from btoks.data.readers import read_train
from btoks.data.sample import Sample

log = logging.getLogger(__name__)


@dataclass
class GicSample:
    """A sample whose BToks were trained to generate ``sample.target``, with the dataset it came from."""

    dataset: str
    sample: Sample


def _gic_side(query: Sample, positive: Sample) -> Sample | None:
    """The side that carries a GIC target: the query (``ntp_side`` positive/both) or the candidate (query)."""
    if query.target is not None:
        return query
    return positive if positive.target is not None else None


def load_gic_samples(data: str | Path, *, datasets: list[str] | None = None, limit: int | None = 8,
                     ntp_side: str = "positive") -> list[GicSample]:
    """The first ``limit`` samples with a GIC target of each training set in ``data``.

    ``data`` is a mini-MMEB folder (``manifest.json`` with a ``train`` list: every set's own ``ntp_side`` is
    used) or one MMEB-train table / folder of tables (read with ``ntp_side``).
    """
    check_ntp_side(ntp_side)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit!r}")
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: data not found")
    manifest = data / "manifest.json"
    sources: list[tuple[str, Path, Path | None, str]] = []
    if manifest.is_file():
        entries = json.loads(manifest.read_text(encoding="utf-8")).get("train") or []
        if not entries:
            raise ValueError(f"{manifest} lists no training sets (no 'train' entries)")
        sources = [(e["name"], data / e["path"], data, e.get("ntp_side", ntp_side)) for e in entries]
    else:
        name = data.stem if data.is_file() else data.name
        sources = [(name, data, None, ntp_side)]
    if datasets:
        known = [s[0] for s in sources]
        unknown = [d for d in datasets if d not in known]
        if unknown:
            raise ValueError(f"dataset(s) {', '.join(map(repr, unknown))} not in {data} (have: {', '.join(known)})")
        sources = [s for s in sources if s[0] in datasets]
    out: list[GicSample] = []
    for name, path, root, side in sources:
        if side == "none":
            log.info("%s: ntp_side none (no GIC target), skipped", name)
            continue
        train_set = read_train(path, dataset=name, root=root, ntp_side=side, limit=limit, progress=False)
        for i in range(len(train_set)):
            pair = train_set[i]
            chosen = _gic_side(pair.query, pair.positive)
            if chosen is None:
                continue
            chosen.id = chosen.id or f"{name}:{i}"
            out.append(GicSample(name, chosen))
    if not out:
        raise ValueError(f"{data}: no samples with a GIC target (check ntp_side / --datasets)")
    return out


def batched(items: list, size: int) -> list[list]:
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size!r}")
    return [items[i:i + size] for i in range(0, len(items), size)]
