"""Ranking metrics as the MMEB-V2 reference harness defines them, with per-query outputs and an explicit tie policy.

A query is scored from the *ranked list of candidate names* and its relevant names (with graded relevance),
exactly the data the reference harness (TIGER-AI-Lab/VLM2Vec ``src/utils/eval_utils/metrics.py``) scores:

- ``hit@k``: 1 if a relevant name is among the first ``k``;
- ``precision@k`` / ``recall@k``: distinct relevant names in the first ``k``, over ``k`` / over the number of
  relevant names;
- ``ndcg@k``: linear gain (the relevance grade), ideal DCG from the best ``k`` grades;
- ``map@k``: precision at each relevant position in the first ``k``, summed, over ``min(n_relevant, k)``;
- ``mrr@k``: reciprocal rank of the first relevant name within ``k`` (0 beyond).

Candidates are *names*: in a per-row ("local") list several candidates can carry the positive's name (a
classification row listing its label twice, OK-VQA's blank answers) and then each counts as the positive, as in
the reference (so ``map``/``ndcg`` of such a row can exceed 1, as there).

Tie policy. ``"reference"`` (default) orders candidates by ``numpy.argsort(-scores)`` with numpy's default sort,
which is what the reference does, so tied scores come out in the same order and scores match it exactly.
``"pessimistic"`` ranks every relevant item after the non-relevant items it ties with (lower grades first among
tied relevant ones), so a degenerate model that scores everything equally gets hit@1 = 0. Either way
:func:`rank_queries` reports which queries had a relevant item tied with a non-relevant one.

All metric functions return one value per query (numpy arrays), which the paired bootstrap in
:mod:`btoks.eval.compare` resamples; the dataset score is their mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

TIE_POLICIES = ("reference", "pessimistic")
TIE_POLICY = "reference"
"""Default tie policy (reproduces the reference harness)."""
DEFAULT_KS = (1, 5, 10)
METRIC_FAMILIES = ("hit", "precision", "recall", "ndcg", "map", "mrr")


def _check_policy(policy: str) -> None:
    if policy not in TIE_POLICIES:
        raise ValueError(f"tie policy must be one of {TIE_POLICIES}, not {policy!r}")


def rank_order(scores: np.ndarray, relevant: np.ndarray | None = None, gains: np.ndarray | None = None,
               policy: str = TIE_POLICY) -> np.ndarray:
    """Candidate indices best first. ``relevant`` (bool per candidate) and ``gains`` matter only for the
    pessimistic policy."""
    _check_policy(policy)
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if policy == "reference" or relevant is None:
        return np.argsort(-s)
    g = np.zeros(len(s)) if gains is None else np.asarray(gains, dtype=np.float64)
    # lexsort: last key is primary. Higher score first; among equal scores non-relevant first, then lower gain,
    # then index (deterministic).
    return np.lexsort((np.arange(len(s)), g, np.asarray(relevant, dtype=bool), -s))


def has_tie(scores: np.ndarray, relevant: np.ndarray) -> bool:
    """True when some relevant candidate's score equals some non-relevant candidate's score."""
    s = np.asarray(scores)
    rel = np.asarray(relevant, dtype=bool)
    if not rel.any() or rel.all():
        return False
    return bool(np.isin(s[rel], s[~rel]).any())


@dataclass
class Ranked:
    """Per query: candidate names best first (``max_k`` of them) and the relevant names with their grades."""

    predictions: list[list[str]]
    labels: list[dict[str, float]]
    ties: int = 0
    """Queries where a relevant candidate tied in score with a non-relevant one."""


def rank_queries(scores: Sequence[np.ndarray], names: Sequence[Sequence[str]], labels: Sequence[Mapping[str, float]],
                 *, policy: str = TIE_POLICY, max_k: int = max(DEFAULT_KS)) -> Ranked:
    """Rank each query's candidates. ``scores[q]`` scores the candidates named ``names[q]`` (one shared name
    list for a global corpus works too: pass the same list for every query); ``labels[q]`` maps the relevant
    names to their grades (> 0)."""
    _check_policy(policy)
    if not (len(scores) == len(names) == len(labels)):
        raise ValueError(f"{len(scores)} score rows, {len(names)} name lists and {len(labels)} label sets")
    preds, labs, ties = [], [], 0
    for q, (s, nm, lab) in enumerate(zip(scores, names, labels, strict=True)):
        lab = {str(k): float(v) for k, v in lab.items() if v > 0}
        if not lab:
            raise ValueError(f"query {q} has no relevant item (grade > 0)")
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (len(nm),):
            raise ValueError(f"query {q}: {s.shape} scores for {len(nm)} candidates")
        rel = np.fromiter((n in lab for n in nm), dtype=bool, count=len(nm))
        gains = np.fromiter((lab.get(n, 0.0) for n in nm), dtype=np.float64, count=len(nm))
        ties += has_tie(s, rel)
        order = rank_order(s, rel, gains, policy)[:max_k]
        preds.append([nm[i] for i in order])
        labs.append(lab)
    return Ranked(preds, labs, ties)


def _dcg(gains: Sequence[float]) -> float:
    return float(sum(g / np.log2(i + 2) for i, g in enumerate(gains)))


def query_metrics(prediction: Sequence[str], labels: Mapping[str, float], ks: Sequence[int] = DEFAULT_KS,
                  ) -> dict[str, float]:
    """All metrics of one query from its ranked names (reference definitions, see the module docstring)."""
    out: dict[str, float] = {}
    n_rel = len(labels)
    ideal = sorted(labels.values(), reverse=True)
    for k in ks:
        top = list(prediction[:k])
        found = len(set(top) & set(labels))
        out[f"hit@{k}"] = float(found > 0)
        out[f"precision@{k}"] = found / k
        out[f"recall@{k}"] = found / n_rel
        idcg = _dcg(ideal[:k])
        out[f"ndcg@{k}"] = _dcg([labels.get(p, 0.0) for p in top]) / idcg if idcg > 0 else 0.0
        hits, ap = 0, 0.0
        for i, p in enumerate(top):
            if p in labels:
                hits += 1
                ap += hits / (i + 1)
        out[f"map@{k}"] = ap / min(n_rel, k) if hits else 0.0
        first = next((i for i, p in enumerate(top) if p in labels), None)
        out[f"mrr@{k}"] = 0.0 if first is None else 1.0 / (first + 1)
    return out


def ranked_metrics(ranked: Ranked, ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-query arrays of every metric for ``ks`` (``hit@1``, ``ndcg@5``, ``map@10``, ...)."""
    rows = [query_metrics(p, lab, ks) for p, lab in zip(ranked.predictions, ranked.labels, strict=True)]
    keys = [f"{m}@{k}" for m in METRIC_FAMILIES for k in ks]
    return {key: np.array([r[key] for r in rows], dtype=np.float64) for key in keys}


def local_metrics(scores: Sequence[Sequence[float]], names: Sequence[Sequence[str]] | None = None,
                  labels: Sequence[Mapping[str, float]] | None = None, *, ks: Sequence[int] = DEFAULT_KS,
                  policy: str = TIE_POLICY) -> tuple[dict[str, np.ndarray], int]:
    """Per-query metrics when each row ranks its own candidates. Without ``names``/``labels`` candidate 0 of
    each row is the one positive (and every candidate is distinct). Returns ``(metrics, n_tied_queries)``."""
    rows = [np.asarray(r, dtype=np.float64) for r in scores]
    if names is None:
        names = [[str(j) for j in range(len(r))] for r in rows]
    if labels is None:
        labels = [{nm[0]: 1.0} for nm in names]
    ranked = rank_queries(rows, names, labels, policy=policy, max_k=max(ks))
    return ranked_metrics(ranked, ks), ranked.ties


def global_metrics(scores: np.ndarray, corpus_names: Sequence[str], labels: Sequence[Mapping[str, float]], *,
                   ks: Sequence[int] = DEFAULT_KS, policy: str = TIE_POLICY) -> tuple[dict[str, np.ndarray], int]:
    """Per-query metrics when every query ranks one shared corpus (``scores`` is n_queries x n_corpus).
    Returns ``(metrics, n_tied_queries)``."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != (len(labels), len(corpus_names)):
        raise ValueError(f"scores shape {scores.shape} does not match {len(labels)} queries x "
                         f"{len(corpus_names)} corpus items")
    names = list(corpus_names)
    ranked = rank_queries(list(scores), [names] * len(labels), labels, policy=policy, max_k=max(ks))
    return ranked_metrics(ranked, ks), ranked.ties


def main_score(per_query: Mapping[str, np.ndarray], metric: str) -> tuple[float, np.ndarray]:
    """The dataset's headline metric in percent (MMEB convention) and its per-query values."""
    if metric not in per_query:
        raise KeyError(f"metric {metric!r} not computed; have {sorted(per_query)}")
    v = np.asarray(per_query[metric], dtype=np.float64)
    return (float(v.mean() * 100) if len(v) else float("nan")), v
