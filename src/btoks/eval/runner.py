"""Evaluate a BToks model on MMEB-V2 style datasets: read, embed (cached), score, write results, summarise.

One run directory holds ``<dataset>.json`` per dataset (:mod:`btoks.eval.report` schema), the summary files and
``cache/<dataset>.npz`` embedding caches. Every result and cache carries a *fingerprint* (model path + config +
weight file stats, dataset table file stats, reader settings): a re-run skips datasets whose result has the same
fingerprint (resume), and re-scores from cached embeddings without loading the model when only the results are
missing. Embeddings are L2-normalised, so scores are cosine similarities (dot products).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from btoks.data.errors import NO_QRELS, InputError
from btoks.data.mmeb_v2 import locate, read_dataset
from btoks.data.readers import TABLE_EXTENSIONS, EvalGlobal, EvalLocal, LazySamples
from btoks.encode import encode
from btoks.eval import registry
from btoks.eval.distributed import Dist, from_env
from btoks.eval.metrics import TIE_POLICY, global_metrics, local_metrics
from btoks.eval.registry import DatasetSpec
from btoks.eval.report import SCHEMA, DatasetResult, result_filename, save_result, write_summary

CACHE_VERSION = 1
OnError = Literal["raise", "skip"]
_CHECK = "header"


# ---------------------------------------------------------------- discovery


def discover(data_dir: str | Path, datasets: Sequence[str] | None = None) -> list[DatasetSpec]:
    """Datasets to evaluate under ``data_dir``: those of ``data_dir/manifest.json`` when present (registered
    on the way), else the registry datasets whose published folder (``ImageNet-1K/``, ``MSR-VTT/test_1k/``,
    ``arxivqa_test_subsampled_beir/``, ...) or table file is there. ``datasets`` restricts the choice (names,
    aliases); a requested dataset with no data is an error."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: data directory not found")
    manifest = data_dir / "manifest.json"
    found: list[DatasetSpec] = []
    if manifest.is_file():
        found = registry.load_manifest(manifest, overwrite=True)
    else:
        wanted = {registry.get(d).name for d in datasets or ()}
        extra = {s.name for s in registry.EXTRA} - wanted  # sets outside the 78 only when asked for by name
        for spec in registry.specs():
            if spec.name in extra:
                continue
            loc = locate(spec if spec.family else replace(spec, path=None), data_dir)  # by name, not a manifest's path
            if loc is not None:
                found.append(spec if spec.family else replace(spec, path=loc.name))
    if datasets is None:
        if not found:
            raise FileNotFoundError(f"{data_dir}: no manifest.json and no folder/table named like a registered "
                                    "dataset (e.g. ImageNet-1K/, MSR-VTT/test_1k/, arxivqa_test_subsampled_beir/)")
        return found
    by_name = {s.name: s for s in found}
    out = []
    for name in datasets:
        canon = registry.get(name).name
        if canon not in by_name:
            raise FileNotFoundError(f"dataset {name!r} requested but not found under {data_dir} "
                                    f"(have: {', '.join(by_name) or 'none'})")
        if by_name[canon] not in out:
            out.append(by_name[canon])
    return out


# ---------------------------------------------------------------- fingerprints


def _sha(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _file_stats(paths: Sequence[Path], base: Path) -> list[tuple[str, int, int]]:
    out = []
    for p in sorted(paths):
        st = p.stat()
        out.append((str(p.relative_to(base)) if p.is_relative_to(base) else str(p), st.st_size, st.st_mtime_ns))
    return out


def model_fingerprint(model: Any) -> dict[str, Any]:
    """Path + config hash + weight file stats for a saved model; config + a parameter sample for an object."""
    if isinstance(model, str | os.PathLike):
        from btoks.loading import resolve_model_dir

        folder = resolve_model_dir(model)  # a saved model, or a training run's model/
        if folder is None:  # caches and resume need a model whose weights are on disk
            raise FileNotFoundError(f"{model}: not a saved btoks model folder (no btoks_config.json, "
                                    "nor model/btoks_config.json of a training run)")
        path = folder.resolve()
        files = [p for p in path.rglob("*") if p.is_file()]
        cfg = [p for p in files if p.name == "btoks_config.json"]
        return {"path": str(path), "config": _sha([p.read_text() for p in cfg]),
                "files": _sha(_file_stats(files, path))}
    cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else repr(model.config)
    h = hashlib.sha1()
    for name, p in list(model.named_parameters())[:64]:
        h.update(name.encode())
        h.update(p.detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
    return {"path": f"<in-memory {type(model).__name__}>", "config": _sha(cfg), "params": h.hexdigest()}


def dataset_fingerprint(spec: DatasetSpec, data_dir: str | Path) -> dict[str, Any]:
    """Spec + stats of the dataset's table files (media files are not stat'ed: they are many)."""
    base = locate(spec, data_dir) or Path(data_dir) / (spec.path or spec.name)
    if base.is_dir():
        tables = [p for p in base.rglob("*") if p.suffix.lower() in TABLE_EXTENSIONS and p.is_file()]
    else:
        tables = [base] if base.is_file() else []
    return {"spec": spec.to_dict(), "tables": _file_stats(tables, base if base.is_dir() else base.parent)}


# ---------------------------------------------------------------- encoding


class _LazyModel:
    """Loads the model on first use, so a fully cached or resumed run never pays for it."""

    def __init__(self, model_or_path: Any, device: str | None) -> None:
        self.src, self.device, self._model = model_or_path, device, None

    def get(self) -> Any:
        if self._model is None:
            from btoks.loading import load

            self._model = load(self.src, device=self.device, merge=True)
        return self._model


def encode_samples(model: _LazyModel, samples: LazySamples, *, batch_size: int, on_error: OnError,
                   progress: bool, desc: str, dist: Dist | None = None) -> tuple[np.ndarray, dict[int, InputError]]:
    """Embed lazily-decoded samples chunk by chunk (bounded memory). Samples that fail to decode are raised
    (naming dataset/row/file) or, with ``on_error="skip"``, returned in ``failed`` with a zero row. Under
    several processes each embeds its shard and all receive the whole result."""
    dist = dist or Dist()
    mine = dist.shard(len(samples))
    chunk = max(batch_size * 8, 64)
    parts: list[np.ndarray] = []
    failed: dict[int, InputError] = {}
    with tqdm(total=len(mine), desc=desc, unit="sample", disable=not progress or not dist.main, leave=False) as bar:
        for start in range(mine.start, mine.stop, chunk):
            idx = range(start, min(mine.stop, start + chunk))
            loaded, ok = [], []
            for i in idx:
                try:
                    loaded.append(samples[i])
                    ok.append(i - start)
                except InputError as e:
                    if on_error == "raise":
                        raise
                    failed[i] = e
            block = np.zeros((len(idx), 0), dtype=np.float32)
            if loaded:
                emb = np.asarray(encode(model.get(), loaded, batch_size=batch_size, show_progress_bar=False,
                                        convert_to="numpy"), dtype=np.float32)
                block = np.zeros((len(idx), emb.shape[1]), dtype=np.float32)
                block[ok] = emb
            parts.append(block)
            bar.update(len(idx))
    gathered = dist.gather((parts, failed))
    parts = [p for ps, _ in gathered for p in ps]
    failed = {i: e for _, f in gathered for i, e in f.items()}
    dim = max((p.shape[1] for p in parts), default=0)
    out = np.concatenate([p if p.shape[1] == dim else np.zeros((len(p), dim), np.float32) for p in parts]) \
        if parts else np.zeros((0, 0), np.float32)
    return out, failed


def _content_hash(samples: LazySamples) -> str:
    h = hashlib.sha1()
    for s in samples.specs:
        h.update(repr(s.key()).encode())
    return h.hexdigest()


class EmbeddingCache:
    """``cache/<dataset>.npz`` holding each encoded side with the run fingerprint and a content hash."""

    def __init__(self, path: Path, fingerprint: str, enabled: bool = True) -> None:
        self.path, self.fingerprint, self.enabled = path, fingerprint, enabled
        self.data: dict[str, np.ndarray] = {}
        if enabled and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["fingerprint"]) == fingerprint:
                        self.data = {k: z[k] for k in z.files}
            except (OSError, ValueError, KeyError):
                self.data = {}  # unreadable cache (e.g. killed mid-write): recompute

    def get(self, side: str, content: str) -> tuple[np.ndarray, list[int]] | None:
        if f"{side}_emb" in self.data and str(self.data[f"{side}_hash"]) == content:
            return self.data[f"{side}_emb"], self.data[f"{side}_failed"].tolist()
        return None

    def put(self, side: str, content: str, emb: np.ndarray, failed: Sequence[int]) -> None:
        if not self.enabled:
            return
        self.data.update({f"{side}_emb": emb, f"{side}_hash": np.array(content),
                          f"{side}_failed": np.asarray(sorted(failed), dtype=np.int64),
                          "fingerprint": np.array(self.fingerprint)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, **self.data)
        tmp.replace(self.path)


# ---------------------------------------------------------------- scoring


def _embed_side(name: str, side: str, samples: LazySamples, cache: EmbeddingCache, model: _LazyModel,
                batch_size: int, on_error: OnError, progress: bool, stats: Counter, dist: Dist,
                ) -> tuple[np.ndarray, dict[int, str]]:
    """Embeddings of one side and ``{index: skip reason}`` of samples that failed to decode."""
    content = _content_hash(samples)
    hit = cache.get(side, content)
    if hit is not None:
        stats["cached"] += len(samples)
        return hit[0], {i: "cached_failure" for i in hit[1]}
    emb, failed = encode_samples(model, samples, batch_size=batch_size, on_error=on_error, progress=progress,
                                 desc=f"{name} {side}", dist=dist)
    stats["encoded"] += len(samples)
    if dist.main:
        cache.put(side, content, emb, list(failed))
    return emb, {i: e.reason for i, e in failed.items()}


def evaluate_dataset(spec: DatasetSpec, data_dir: str | Path, model: _LazyModel, *, out_dir: Path,
                     fingerprint: str, batch_size: int = 16, on_error: OnError = "raise", use_cache: bool = True,
                     progress: bool = True, media_root: str | Path | None = None, tie_policy: str = TIE_POLICY,
                     dist: Dist | None = None) -> tuple[DatasetResult, Counter]:
    """Read, embed (or load cached embeddings), rank as the registry says (local/global), score."""
    t0 = time.perf_counter()
    stats: Counter = Counter()
    data = read_dataset(spec, data_dir, media_root=media_root, on_error=on_error, check=_CHECK, progress=progress)
    if isinstance(data, EvalLocal) and spec.ranking == "global":
        data = data.to_global()
    skipped = Counter(data.skipped.as_dict())
    cache = EmbeddingCache(out_dir / "cache" / f"{result_filename(spec.name)[:-5]}.npz", fingerprint, use_cache)
    side_args = (cache, model, batch_size, on_error, progress, stats, dist or Dist())
    if isinstance(data, EvalLocal):
        uniq, per_row, _ = data.dedup_candidates()
        q, qbad = _embed_side(spec.name, "queries", data.queries, *side_args)
        c, cbad = _embed_side(spec.name, "candidates", uniq, *side_args)
        keep = []
        for i, ids in enumerate(per_row):
            bad = qbad.get(i) or next((cbad[j] for j in ids.tolist() if j in cbad), None)
            if bad is None:
                keep.append(i)
            else:
                skipped[bad] += 1
        per_query, ties = local_metrics([c[per_row[i]] @ q[i] for i in keep], [data.names(i) for i in keep],
                                        [data.label(i) for i in keep], policy=tie_policy)
        query_ids = [str(data.rows[i]) for i in keep]
    elif isinstance(data, EvalGlobal):
        q, qbad = _embed_side(spec.name, "queries", data.queries, *side_args)
        c, cbad = _embed_side(spec.name, "corpus", data.corpus, *side_args)
        for reason in cbad.values():
            skipped[reason] += 1
        good = [j for j in range(len(c)) if j not in cbad]
        names = [data.corpus_ids[j] for j in good]
        usable = set(names)
        keep, labels = [], []
        for i, qid in enumerate(data.query_ids):
            rel = {n: g for n, g in data.qrels[qid].items() if n in usable}
            if i in qbad:
                skipped[qbad[i]] += 1
            elif not rel:
                skipped[NO_QRELS] += 1
            else:
                keep.append(i)
                labels.append(rel)
        sim = q[keep] @ c[good].T if keep and good else np.zeros((len(keep), len(good)))
        per_query, ties = global_metrics(sim, names, labels, policy=tie_policy)
        query_ids = [data.query_ids[i] for i in keep]
    else:  # pragma: no cover
        raise TypeError(f"unexpected reader output {type(data).__name__}")
    if not query_ids:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no rows"
        first = f"; first: {data.skipped.examples[0]}" if data.skipped.examples else ""
        raise ValueError(f"dataset {spec.name!r} in {data_dir}: no query left to score (skipped {reasons}){first}")
    result = DatasetResult.from_metrics(
        spec, per_query, skipped=dict(sorted(skipped.items())), wall_time_s=time.perf_counter() - t0,
        query_ids=query_ids,
        extra={"fingerprint": fingerprint, "encoded": stats["encoded"], "cached": stats["cached"],
               "ranking": spec.ranking, "tie_policy": tie_policy, "tied_queries": ties,
               "skipped_examples": data.skipped.examples},
    )
    return result, stats


def _existing_fingerprint(path: Path) -> str | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d.get("extra", {}).get("fingerprint") if isinstance(d, dict) and d.get("schema") == SCHEMA else None


def evaluate(
    model_or_path: Any,
    data_dir: str | Path,
    datasets: Sequence[str] | None = None,
    out_dir: str | Path = "runs/eval",
    *,
    batch_size: int = 16,
    on_error: OnError = "raise",
    use_cache: bool = True,
    resume: bool = True,
    progress: bool = True,
    device: str | None = None,
    media_root: str | Path | None = None,
    tie_policy: str = TIE_POLICY,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Evaluate a model (a :class:`~btoks.BToksModel` or a ``save_pretrained`` folder) on the datasets of
    ``data_dir`` and write ``out_dir/<dataset>.json`` plus ``summary.{md,json,png}``; returns the summary.

    ``resume`` skips datasets whose result carries the current fingerprint; ``use_cache`` reuses (and
    writes) ``out_dir/cache/<dataset>.npz`` embeddings. ``on_error="skip"`` drops and counts unusable rows
    instead of raising. ``device`` defaults to CUDA when available (an in-memory model is moved there).
    ``media_root`` is where the published ``image-tasks/`` and ``video-tasks/`` folders are (default: the data
    directory). ``tie_policy`` is ``reference`` (numpy argsort order, as the reference harness) or
    ``pessimistic``; each result records how many queries had a tie that the policy decided.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    dist = from_env()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = discover(data_dir, datasets)
    if device is None and dist.world > 1:
        import torch

        device = f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
    model = _LazyModel(model_or_path, device)
    mfp = model_fingerprint(model_or_path)
    settings = {"on_error": on_error, "check": _CHECK, "cache_version": CACHE_VERSION, "tie_policy": tie_policy,
                "media_root": None if media_root is None else str(Path(media_root).resolve())}
    log = log if dist.main else None
    if dist.main:
        (out / "run.json").write_text(json.dumps({"model": mfp, "data_dir": str(Path(data_dir).resolve()),
                                                  "datasets": [s.name for s in specs], "settings": settings,
                                                  "processes": dist.world}, indent=1), encoding="utf-8")
    for k, spec in enumerate(specs, 1):
        fp = _sha({"model": mfp, "data": dataset_fingerprint(spec, data_dir), "settings": settings})
        path = out / result_filename(spec.name)
        if dist.broadcast(resume and _existing_fingerprint(path) == fp):  # process 0 decides for all
            if log:
                log(f"[{k}/{len(specs)}] {spec.name}: done already, skipped")
            continue
        result, stats = evaluate_dataset(spec, data_dir, model, out_dir=out, fingerprint=fp, batch_size=batch_size,
                                         on_error=on_error, use_cache=use_cache, progress=progress,
                                         media_root=media_root, tie_policy=tie_policy, dist=dist)
        if dist.main:
            save_result(out, result)
        dist.barrier()
        if log:
            sk = f", skipped {result.n_skipped}" if result.n_skipped else ""
            ties = result.extra.get("tied_queries", 0)
            sk += f", {ties} with tied scores ({tie_policy} order)" if ties else ""
            src = "cached" if not stats["encoded"] else f"encoded {stats['encoded']}"
            log(f"[{k}/{len(specs)}] {spec.name}: {result.metric} {result.score:.2f} "
                f"({result.n_queries} queries{sk}; {src}; {result.wall_time_s:.1f}s)")
    summary = write_summary(out) if dist.main else None
    return dist.broadcast(summary)


__all__ = ["EmbeddingCache", "dataset_fingerprint", "discover", "encode_samples", "evaluate", "evaluate_dataset",
           "model_fingerprint"]
