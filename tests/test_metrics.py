"""Ranking metrics against the reference harness (TIGER-AI-Lab/VLM2Vec ``RankingMetrics``) and hand-computed values.

The ``REF`` numbers were produced by running the reference's ``src/utils/eval_utils/metrics.py`` on the same cases,
with predictions ordered by ``np.argsort(-scores)`` as its ``eval.py`` does (script: /work/refvenv-13/run_ref.py,
kept out of the project; only its output numbers are here).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from btoks.eval.metrics import TIE_POLICY, global_metrics, has_tie, local_metrics, main_score, query_metrics

L2 = math.log2
NEG = [f"n{i}" for i in range(19)]

# case -> (metric -> reference value, rounded to 1e-10)
REF = {
    "ties": {"hit@1": 0.5, "hit@5": 0.75, "ndcg@5": 0.625, "precision@5": 0.15, "recall@5": 0.75,
             "map@5": 0.5833333333, "mrr@5": 0.5833333333, "map@10": 0.5833333333},
    "repeated": {"hit@1": 0.6666666667, "ndcg@5": 1.4206198357, "precision@5": 0.2, "recall@5": 1.0,
                 "map@5": 1.6111111111, "mrr@5": 0.8333333333},
    "graded": {"hit@5": 0.6666666667, "ndcg@5": 0.2546893742, "ndcg@10": 0.3274918531, "recall@10": 0.6666666667,
               "map@5": 0.1527777778, "map@10": 0.2083333333, "mrr@5": 0.1944444444},
    "map": {"hit@1": 0.5, "ndcg@5": 0.6454331576, "ndcg@10": 0.7069235088, "recall@1": 0.0833333333,
            "recall@10": 0.9166666667, "map@5": 0.4766666667, "map@10": 0.5328042328, "precision@10": 0.35},
}
DOCS = ["d1", "d2", "d3", "d4", "d5", "d6"]


def _check(per_query: dict[str, np.ndarray], case: str) -> None:
    for metric, value in REF[case].items():
        assert float(per_query[metric].mean()) == pytest.approx(value, abs=1e-9), (case, metric)


def test_default_policy_reproduces_reference_ties() -> None:
    assert TIE_POLICY == "reference"
    scores = [[0.5, 0.5, 0.1], [0.2, 0.5, 0.5], [0.3] * 20, [0.1, 0.3] + [0.3] * 18]
    names = [["pos", "n1", "n2"], ["pos", "n1", "n2"], ["pos", *NEG], ["pos", *NEG]]
    labels = [{"pos": 1.0}] * 4
    m, ties = local_metrics(scores, names, labels)
    _check(m, "ties")
    assert ties == 2  # rows 0 and 2 have the positive tied with a negative
    # pessimistic: a positive tied with any negative goes after it
    p, ties_p = local_metrics(scores, names, labels, policy="pessimistic")
    assert ties_p == 2 and p["hit@1"].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert p["mrr@10"].tolist()[:2] == [0.5, 1 / 3]
    with pytest.raises(ValueError, match="tie policy"):
        local_metrics(scores, names, labels, policy="lucky")


def test_repeated_positive_names_count_as_positive() -> None:
    scores = [[0.1, 0.9, 0.5], [0.9, 0.8, 0.7, 0.1], [0.2, 0.9, 0.5]]
    names = [["cat", "cat", "dog"], ["", "", "x", "y"], ["a", "b", "a"]]
    m, _ = local_metrics(scores, names, [{"cat": 1.0}, {"": 1.0}, {"a": 1.0}])
    _check(m, "repeated")
    assert m["map@5"].max() > 1  # the reference's AP counts a repeated positive twice


def test_graded_qrels_global() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.1, 0.8, 0.7, 0.6, 0.5, 0.4],
                       [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    m, ties = global_metrics(scores, DOCS, [{"d3": 2.0}, {"d1": 1.0, "d5": 1.0}, {"7": 3.0}])
    _check(m, "graded")
    assert ties == 0
    # two grades, by hand: ranked d2 (2), d1 (1): DCG = 2 + 1/log2(3); ideal the same -> 1
    m, _ = global_metrics(np.array([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0]]), DOCS, [{"d1": 1.0, "d2": 2.0}])
    assert m["ndcg@5"][0] == pytest.approx(1.0)
    m, _ = global_metrics(np.array([[0.9, 0.1, 0.0, 0.0, 0.0, 0.0]]), DOCS, [{"d1": 1.0, "d2": 2.0}])
    assert m["ndcg@5"][0] == pytest.approx((1 + 2 / L2(3)) / (2 + 1 / L2(3)))


def test_map_with_fewer_and_more_relevant_than_k() -> None:
    names = [f"d{i}" for i in range(12)]
    scores = np.vstack([np.linspace(1, 0, 12)] * 2)
    m, _ = global_metrics(scores, names, [{"d1": 1.0, "d3": 1.0}, {f"d{i}": 1.0 for i in range(0, 12, 2)}])
    _check(m, "map")
    # by hand: relevant at ranks 2 and 4 -> (1/2 + 2/4) / min(2, 5)
    assert m["map@5"][0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    # six relevant, k = 5: ranks 1, 3, 5 -> (1 + 2/3 + 3/5) / min(6, 5)
    assert m["map@5"][1] == pytest.approx((1 + 2 / 3 + 3 / 5) / 5)


def test_query_metrics_by_hand() -> None:
    q = query_metrics(["x", "a", "y", "b"], {"a": 1.0, "b": 1.0, "c": 1.0}, ks=(1, 2, 4))
    assert q["hit@1"] == 0 and q["hit@2"] == 1 and q["mrr@4"] == 0.5
    assert q["recall@4"] == pytest.approx(2 / 3) and q["precision@4"] == 0.5
    assert q["ndcg@4"] == pytest.approx((1 / L2(3) + 1 / L2(5)) / (1 + 1 / L2(3) + 1 / L2(4)))


def test_has_tie_and_errors() -> None:
    assert has_tie(np.array([1.0, 1.0, 0.0]), np.array([True, False, False]))
    assert not has_tie(np.array([1.0, 1.0, 0.0]), np.array([True, True, False]))
    with pytest.raises(ValueError, match="NaN"):
        local_metrics([[np.nan, 1.0]])
    with pytest.raises(ValueError, match="no relevant"):
        global_metrics(np.zeros((1, 2)), ["a", "b"], [{"a": 0.0}])
    with pytest.raises(ValueError, match="does not match"):
        global_metrics(np.zeros((2, 3)), ["a", "b", "c"], [{"a": 1.0}])


def test_main_score_percent_and_per_query() -> None:
    m, _ = local_metrics([[1, 0], [0, 1], [1, 0], [1, 0]])
    score, pq = main_score(m, "hit@1")
    assert score == 75.0 and pq.tolist() == [1, 0, 1, 1]
    with pytest.raises(KeyError, match="ndcg@7"):
        main_score(m, "ndcg@7")
