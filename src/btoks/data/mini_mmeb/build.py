"""Assembly: run every set builder, write the tables and the manifest, atomically."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from btoks.data.mini_mmeb.common import NAME, SIZES, VERSION, Built, Ctx, Writer
from btoks.data.mini_mmeb.doc_sets import build_slides_docs
from btoks.data.mini_mmeb.image_sets import (
    build_digits_cls,
    build_easyvqa,
    build_grounding,
    build_shapes_cls,
    build_shapes_edit,
    build_shapes_i2t,
    build_shapes_t2i,
)
from btoks.data.mini_mmeb.sources import Sources
from btoks.data.mini_mmeb.video_sets import build_moment, build_motion_cls, build_motion_qa, build_motion_t2v

BUILDERS = [
    build_shapes_cls,
    build_digits_cls,
    build_easyvqa,
    build_shapes_t2i,
    build_shapes_i2t,
    build_shapes_edit,
    build_grounding,
    build_motion_cls,
    build_motion_qa,
    build_motion_t2v,
    build_moment,
    build_slides_docs,
]


def _write(ctx: Ctx, built: list[Built], seed: int, size: str) -> dict[str, Any]:
    datasets, train = [], []
    total_train = sum(len(b.train_rows) for b in built)
    for b in built:
        s = b.spec
        if s.format == "visdoc":
            assert b.visdoc is not None
            path = f"eval/{s.name}"
            for table in ("queries", "corpus", "qrels"):
                ctx.out.jsonl(f"{path}/{table}.jsonl", b.visdoc[table])
            num = len(b.visdoc["queries"])
        else:
            assert b.eval_rows is not None
            path = ctx.out.jsonl(f"eval/{s.name}.jsonl", b.eval_rows)
            num = len(b.eval_rows)
        datasets.append({
            "name": s.name, "modality": s.modality, "meta_task": s.meta_task, "metric": s.metric,
            "query_instruction": s.query_instruction, "target_instruction": s.target_instruction,
            "ntp_side": s.ntp_side, "format": s.format, "path": path, "media_root": ".", "num_queries": num,
        })
        if b.train_rows:
            train.append({
                "name": s.name, "path": ctx.out.jsonl(f"train/{s.name}.jsonl", b.train_rows),
                "weight": round(len(b.train_rows) / total_train, 6), "ntp_side": s.ntp_side,
                "modality": s.modality, "num_rows": len(b.train_rows),
            })
    sources = {
        "eval": {b.spec.name: sorted(b.eval_sources) for b in built},
        "train": {b.spec.name: sorted(b.train_sources) for b in built},
    }
    (ctx.out.root / "sources.json").write_text(json.dumps(sources, indent=1) + "\n")
    manifest = {"name": NAME, "version": VERSION, "seed": seed, "size": size, "datasets": datasets, "train": train}
    (ctx.out.root / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def build_mini_mmeb(
    out_dir: str | Path, seed: int = 0, size: str = "quick", *, overwrite: bool = False
) -> dict[str, Any]:
    """Build mini-MMEB into ``out_dir`` and return its manifest.

    The build happens in a temporary sibling folder that is renamed into place at the end, so a crashed or
    interrupted build never looks like a finished benchmark. An existing non-empty ``out_dir`` is replaced
    only with ``overwrite=True`` and only if it holds a mini-MMEB manifest (never an unrelated folder).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        manifest = out / "manifest.json"
        is_ours = manifest.is_file() and json.loads(manifest.read_text()).get("name") == NAME
        if not overwrite or not is_ours:
            raise FileExistsError(f"{out} is not empty" + ("" if is_ours else " (and is not a mini-MMEB build)"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        ctx = Ctx(seed, SIZES[size], Writer(tmp), Sources())
        built = [builder(ctx) for builder in BUILDERS]
        manifest = _write(ctx, built, seed, size)
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def describe(manifest: dict[str, Any]) -> str:
    """One line for people: set, query and training-row counts of a build."""
    n_eval = sum(d["num_queries"] for d in manifest["datasets"])
    n_train = sum(t["num_rows"] for t in manifest["train"])
    return f"{len(manifest['datasets'])} eval sets, {n_eval} queries, {n_train} train rows"


def tree_digest(root: str | Path) -> str:
    """SHA-256 over every file's relative path and bytes: equal digests mean byte-identical builds."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()
