"""Table 5: FAISS exact (IndexFlatIP) and HNSW search vs brute-force numpy, with recall@10.

Vectors are random unit vectors in 576 dimensions (btoks-mini's / SmolLM2's hidden size), queries too: the
isotropic worst case for graph indexes (no cluster structure to exploit), so HNSW recall here is a lower bound
for real embeddings. Indexes are built with the project's ``btoks.serve.index.make_faiss_index`` (the structure
``btoks index`` writes) and filled in chunks; HNSW is searched with per-call ``efSearch`` as the server does.
Exact ground truth comes from the numpy arm (``q @ X.T`` in blocks + ``argpartition``).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bench.common import (
    Table,
    base_parser,
    fmt_seconds,
    interleaved,
    load_average,
    repeats_of,
    script_main,
    speedup,
)

NAME = "search"
DIM, K = 576, 10
SIZES = (100_000, 1_000_000)
QUICK_SIZES = (20_000, 100_000)
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 8, 16, (64, 256)
CHUNK = 50_000


def build_parser() -> argparse.ArgumentParser:
    p = base_parser(NAME, __doc__.splitlines()[0], model=False)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help=f"database sizes (default {SIZES})")
    p.add_argument("--queries", type=int, default=256, help="queries per timed call (default 256)")
    p.add_argument("--hnsw-m", type=int, default=HNSW_M, help=f"HNSW links per node (default {HNSW_M})")
    p.add_argument("--ef-construction", type=int, default=EF_CONSTRUCTION,
                   help=f"HNSW build beam (default {EF_CONSTRUCTION})")
    p.add_argument("--ef-search", type=int, nargs="+", default=list(EF_SEARCH),
                   help=f"HNSW search beams to time (default {' '.join(map(str, EF_SEARCH))})")
    return p


def random_unit(n: int, seed: int, start: int = 0) -> np.ndarray:
    """Rows ``start … start+n`` of a reproducible stream of random unit vectors (float32, never float64)."""
    rng = np.random.default_rng([seed, start])
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


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


def _fill(index: Any, n: int, seed: int, desc: str) -> float:
    """Add ``n`` random vectors in chunks (progress bar); returns the seconds spent inside ``index.add``."""
    spent = 0.0
    with tqdm(total=n, desc=desc, unit="vec", unit_scale=True, leave=False, file=sys.stderr) as bar:
        for s in range(0, n, CHUNK):
            x = random_unit(min(CHUNK, n - s), seed, s)
            t0 = time.perf_counter()
            index.add(x)
            spent += time.perf_counter() - t0
            bar.update(len(x))
    return spent


def _flat_view(index: Any) -> np.ndarray:
    """The vectors inside an IndexFlat as a zero-copy numpy array (numpy searches the very same data)."""
    import faiss

    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def _hnsw_search(index: Any, q: np.ndarray, ef: int) -> Any:
    import faiss

    return index.search(q, K, params=faiss.SearchParametersHNSW(efSearch=ef))


def _one_size(n: int, args: argparse.Namespace, nq: int, repeats: int) -> tuple[list[list[str]], dict[str, Any]]:
    """Build both indexes over the same ``n`` vectors, time every arm, and score recall."""
    from btoks.serve.index import IndexParams, make_faiss_index

    empty = np.zeros((0, DIM), dtype=np.float32)
    q = random_unit(nq, seed=1)
    flat = make_faiss_index(empty, IndexParams("flat"))
    flat_build = _fill(flat, n, 0, f"flat add n={n:,}")
    db = _flat_view(flat)
    hnsw = make_faiss_index(empty, IndexParams("hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction))
    hnsw_build = _fill(hnsw, n, 0, f"HNSW build n={n:,}")
    arms = {"numpy": partial(numpy_topk, db, q), "flat": partial(flat.search, q, K)}
    labels = {"numpy": "numpy brute force (BLAS matmul + argpartition)", "flat": "FAISS IndexFlatIP (exact)"}
    builds = {"numpy": "—", "flat": fmt_seconds(flat_build)}
    for ef in args.ef_search:
        arms[f"hnsw{ef}"] = partial(_hnsw_search, hnsw, q, ef)
        labels[f"hnsw{ef}"] = f"FAISS HNSW M={args.hnsw_m} efC={args.ef_construction}, efSearch={ef}"
        builds[f"hnsw{ef}"] = fmt_seconds(hnsw_build)
    t = interleaved(arms, repeats, args.warmup, desc=f"{NAME} n={n:,}")
    truth = numpy_topk(db, q)
    found = {"numpy": truth, "flat": flat.search(q, K)[1]}
    found.update({f"hnsw{ef}": _hnsw_search(hnsw, q, ef)[1] for ef in args.ef_search})
    rows = []
    for arm, timing in t.items():
        rows.append([f"{n:,}", labels[arm], builds[arm], f"{timing.rate(nq):,.0f}",
                     speedup(timing, t["numpy"]).cell(2), f"{recall(found[arm], truth):.3f}"])
    data = {"times": {k: v.samples for k, v in t.items()}, "flat_build_s": flat_build, "hnsw_build_s": hnsw_build,
            "recall": {k: recall(v, truth) for k, v in found.items()}}
    return rows, data


def run(args: argparse.Namespace) -> Table:
    import faiss

    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    nq = args.queries
    repeats = repeats_of(args)
    rows, data = [], {}
    for n in sizes:
        r, d = _one_size(n, args, nq, repeats)
        rows += r
        data[str(n)] = d
    return Table(
        NAME, "5. Search: FAISS exact and HNSW vs brute-force numpy (recall@10)",
        ["vectors", "method", "build / add", "queries/s", "speed-up vs numpy (min–max)", "recall@10"],
        rows,
        [f"{DIM}-d random unit vectors (float32), {nq} random unit queries per timed call, top-{K} by inner "
         f"product; median of {repeats} interleaved rounds after {args.warmup} warm-up; recall against the numpy "
         f"exact top-{K}; faiss uses {faiss.omp_get_max_threads()} threads; load average {load_average()}.",
         f"HNSW parameters chosen so the 1M build fits the `make bench` budget on 2 cores: M={args.hnsw_m}, "
         f"efConstruction={args.ef_construction} (project default for `btoks index`: M=32, efC=80, efSearch=64)."],
        data,
    )


main = script_main(build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
