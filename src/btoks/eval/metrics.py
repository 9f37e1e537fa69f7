"""Ranking metrics with an explicit, pessimistic tie policy and per-query outputs.

Tie policy (``TIE_POLICY = "pessimistic"``): an item tied in score with others is ranked *after* every tied
non-relevant item, and tied relevant items are ordered by ascending gain. So a positive only reaches rank 1
when its score is strictly higher than every other candidate's; a degenerate model that scores everything
equally gets hit@1 = 0 rather than a lucky 1 from sort order. This is slightly stricter than implementations
that break ties by index (MMEB's argmax picks the first maximum, which favours the positive at index 0).

All metric functions return one value per query (numpy arrays in [0, 1]), which the paired bootstrap in
:mod:`btoks.eval.compare` resamples; averaging is left to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

TIE_POLICY = "pessimistic"
DEFAULT_KS = (1, 5, 10)


def relevant_ranks(scores: np.ndarray, relevant: Sequence[int], gains: Sequence[float] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of the ``relevant`` columns of one score vector under the pessimistic tie policy.

    Returns ``(ranks, gains)`` sorted by rank. Costs O(n_candidates x n_relevant), no full sort.
    """
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    rel = np.asarray(relevant, dtype=np.int64)
    g = np.ones(len(rel)) if gains is None else np.asarray(gains, dtype=np.float64)
    if len(rel) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    rs = s[rel]
    greater = (s[None, :] > rs[:, None]).sum(1)
    equal = (s[None, :] == rs[:, None]).sum(1)
    # Among relevant items with the same score: lower gain first, then column index (deterministic).
    same = rs[None, :] == rs[:, None]
    before = same & ((g[None, :] < g[:, None]) | ((g[None, :] == g[:, None]) & (rel[None, :] < rel[:, None])))
    tied_rel = same.sum(1)
    ranks = greater + (equal - tied_rel) + before.sum(1) + 1
    order = np.argsort(ranks, kind="stable")
    return ranks[order], g[order]


def _dcg(ranks: np.ndarray, gains: np.ndarray, k: int) -> float:
    m = ranks <= k
    return float((gains[m] / np.log2(ranks[m] + 1)).sum())


def _ideal_dcg(all_gains: np.ndarray, k: int) -> float:
    top = np.sort(all_gains)[::-1][:k]
    return float((top / np.log2(np.arange(2, len(top) + 2))).sum())


def metrics_from_ranks(ranks: Sequence[np.ndarray], gains: Sequence[np.ndarray],
                       ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-query hit@k, recall@k, nDCG@k (linear gain), MRR and MAP from the ranks/gains of each query's
    relevant items. The ideal DCG uses every relevant item of the query (the full qrels), so a query with more
    relevant items than ``k`` can still reach 1 only by filling the top-k with its best-graded ones."""
    n = len(ranks)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"hit@{k}"] = np.array([float((r <= k).any()) for r in ranks])
        out[f"recall@{k}"] = np.array([float((r <= k).sum()) / len(r) for r in ranks])
        out[f"ndcg@{k}"] = np.array([_dcg(r, g, k) / _ideal_dcg(g, k) for r, g in zip(ranks, gains, strict=True)])
    out["mrr"] = np.array([1.0 / r.min() for r in ranks])
    out["map"] = np.array([float(np.mean(np.arange(1, len(r) + 1) / r)) for r in ranks])
    for name, v in out.items():
        assert v.shape == (n,), name
    return out


def local_ranks(scores: np.ndarray | Sequence[Sequence[float]], positive: int = 0) -> np.ndarray:
    """Rank (1-based, pessimistic ties) of the positive in each row's own candidate list.

    ``scores`` is a 2-D array (NaN marks padding where rows have fewer candidates) or a ragged list of rows.
    """
    rows = [np.asarray(r, dtype=np.float64) for r in scores]
    out = np.empty(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        if not 0 <= positive < len(r) or np.isnan(r[positive]):
            raise ValueError(f"row {i}: no score for the positive (index {positive})")
        p, valid = r[positive], r[~np.isnan(r)]
        out[i] = int((valid > p).sum()) + int((valid == p).sum())  # = 1 + greater + other ties
    return out


def local_metrics(scores: np.ndarray | Sequence[Sequence[float]], ks: Sequence[int] = DEFAULT_KS,
                  positive: int = 0) -> dict[str, np.ndarray]:
    """Per-query metrics for "local" ranking (MMEB image/video): one positive per row at ``positive``."""
    ranks = local_ranks(scores, positive)
    return metrics_from_ranks([np.array([r]) for r in ranks], [np.ones(1)] * len(ranks), ks)


def global_metrics(scores: np.ndarray, qrels: Sequence[Mapping[int, float]],
                   ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-query metrics for "global" ranking over a shared corpus (visual documents).

    ``scores`` is (n_queries, n_corpus); ``qrels[q]`` maps corpus column -> graded relevance (> 0 relevant).
    A query without any relevant item is an error (readers drop and count those).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != len(qrels):
        raise ValueError(f"scores shape {scores.shape} does not match {len(qrels)} queries")
    ranks, gains = [], []
    for q, rel in enumerate(qrels):
        items = [(int(c), float(s)) for c, s in rel.items() if s > 0]
        if not items:
            raise ValueError(f"query {q} has no relevant item (score > 0) in qrels")
        cols, g = zip(*items, strict=True)
        if max(cols) >= scores.shape[1] or min(cols) < 0:
            raise ValueError(f"query {q}: qrels column out of range for {scores.shape[1]} corpus items")
        r, gs = relevant_ranks(scores[q], cols, g)
        ranks.append(r)
        gains.append(gs)
    return metrics_from_ranks(ranks, gains, ks)


def qrels_to_indices(qrels: Mapping[str, Mapping[str, float]], query_ids: Sequence[str],
                     corpus_ids: Sequence[str]) -> list[dict[int, float]]:
    """String-keyed qrels to the column-indexed form of :func:`global_metrics` (unknown ids are dropped)."""
    col = {c: i for i, c in enumerate(corpus_ids)}
    return [{col[c]: float(s) for c, s in qrels.get(q, {}).items() if c in col} for q in query_ids]


def hit_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the (single) positive's rank is within ``k``."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def main_score(per_query: Mapping[str, np.ndarray], metric: str) -> tuple[float, np.ndarray]:
    """The dataset's headline metric in percent (MMEB convention) and its per-query values in [0, 1]."""
    if metric not in per_query:
        raise KeyError(f"metric {metric!r} not computed; have {sorted(per_query)}")
    v = np.asarray(per_query[metric], dtype=np.float64)
    return (float(v.mean() * 100) if len(v) else float("nan")), v
