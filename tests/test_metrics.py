"""Ranking metrics against hand-computed values, ties included (pessimistic policy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from btoks.eval.metrics import (
    TIE_POLICY,
    global_metrics,
    hit_at_k,
    local_metrics,
    local_ranks,
    main_score,
    qrels_to_indices,
    relevant_ranks,
)

L2 = math.log2


def test_tie_policy_is_pessimistic() -> None:
    assert TIE_POLICY == "pessimistic"


def test_local_ranks_with_ties() -> None:
    scores = np.array([
        [3.0, 1.0, 2.0],  # positive strictly best -> 1
        [1.0, 3.0, 2.0],  # two above -> 3
        [2.0, 2.0, 1.0],  # tied with one other -> ranked after it -> 2
        [0.0, 0.0, 0.0],  # all tied -> last -> 3
    ])
    assert local_ranks(scores).tolist() == [1, 3, 2, 3]
    m = local_metrics(scores, ks=(1, 2))
    assert m["hit@1"].tolist() == [1, 0, 0, 0]
    assert m["hit@2"].tolist() == [1, 0, 1, 0]
    assert m["recall@2"].tolist() == [1, 0, 1, 0]
    assert np.allclose(m["mrr"], [1, 1 / 3, 1 / 2, 1 / 3])
    assert np.allclose(m["map"], m["mrr"])  # single relevant item
    assert np.allclose(m["ndcg@2"], [1, 0, 1 / L2(3), 0])
    assert hit_at_k(local_ranks(scores), 1).tolist() == [1, 0, 0, 0]


def test_local_ragged_and_nan_padding_agree() -> None:
    ragged = [[0.9, 0.1], [0.2, 0.5, 0.1, 0.7]]
    padded = np.array([[0.9, 0.1, np.nan, np.nan], [0.2, 0.5, 0.1, 0.7]])
    assert local_ranks(ragged).tolist() == local_ranks(padded).tolist() == [1, 3]
    assert local_ranks([[0.1, 0.9]], positive=1).tolist() == [1]
    with pytest.raises(ValueError, match="positive"):
        local_ranks([[np.nan, 0.3]])


def test_global_graded_with_ties() -> None:
    # columns 0, 2, 4 tie at 0.5; column 4 is judged non-relevant (grade 0) -> pessimistic order:
    # col1 (0.9) rank 1, col4 rank 2, then tied relevant by ascending gain: col0 (g=1) rank 3, col2 (g=3) rank 4.
    scores = np.array([[0.5, 0.9, 0.5, 0.1, 0.5]])
    qrels = [{0: 1.0, 2: 3.0, 4: 0.0}]
    ranks, gains = relevant_ranks(scores[0], [0, 2], [1.0, 3.0])
    assert ranks.tolist() == [3, 4] and gains.tolist() == [1.0, 3.0]
    m = global_metrics(scores, qrels, ks=(1, 3, 5))
    dcg5 = 1 / L2(4) + 3 / L2(5)
    idcg5 = 3 / L2(2) + 1 / L2(3)
    assert m["ndcg@5"][0] == pytest.approx(dcg5 / idcg5)
    assert m["ndcg@3"][0] == pytest.approx((1 / L2(4)) / idcg5)
    assert m["ndcg@1"][0] == 0
    assert m["hit@1"][0] == 0 and m["hit@3"][0] == 1
    assert m["recall@3"][0] == 0.5 and m["recall@5"][0] == 1
    assert m["mrr"][0] == pytest.approx(1 / 3)
    assert m["map"][0] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_global_strict_scores_and_ideal_from_full_qrels() -> None:
    # 7 relevant docs (gain 1) occupy the top 7 -> nDCG@5 = 1 although recall@5 = 5/7
    scores = np.arange(10, 0, -1, dtype=float)[None, :]
    qrels = [dict.fromkeys(range(7), 1.0)]
    m = global_metrics(scores, qrels, ks=(5,))
    assert m["ndcg@5"][0] == pytest.approx(1.0) and m["recall@5"][0] == pytest.approx(5 / 7)
    assert m["map"][0] == pytest.approx(1.0)
    # best-graded doc at rank 2 behind a weaker relevant one: DCG = 1 + 2/log2(3), IDCG = 2 + 1/log2(3)
    m = global_metrics(np.array([[0.9, 0.8, 0.1]]), [{0: 1.0, 1: 2.0}], ks=(5,))
    assert m["ndcg@5"][0] == pytest.approx((1 + 2 / L2(3)) / (2 + 1 / L2(3)))


def test_global_multiple_queries_and_qrels_mapping() -> None:
    scores = np.array([[0.1, 0.9, 0.3], [0.8, 0.2, 0.3]])
    idx = qrels_to_indices({"qa": {"d2": 1}, "qb": {"d1": 1, "zz": 1}}, ["qa", "qb"], ["d1", "d2", "d3"])
    assert idx == [{1: 1.0}, {0: 1.0}]
    m = global_metrics(scores, idx, ks=(1,))
    assert m["hit@1"].tolist() == [1, 1] and m["ndcg@1"].tolist() == [1, 1]


def test_global_errors() -> None:
    with pytest.raises(ValueError, match="no relevant"):
        global_metrics(np.zeros((1, 3)), [{0: 0.0}])
    with pytest.raises(ValueError, match="NaN"):
        global_metrics(np.array([[np.nan, 1.0]]), [{0: 1.0}])
    with pytest.raises(ValueError, match="shape"):
        global_metrics(np.zeros((2, 3)), [{0: 1.0}])
    with pytest.raises(ValueError, match="out of range"):
        global_metrics(np.zeros((1, 3)), [{5: 1.0}])


def test_main_score_percent_and_per_query() -> None:
    m = local_metrics([[1, 0], [0, 1], [1, 0], [1, 0]])
    score, pq = main_score(m, "hit@1")
    assert score == pytest.approx(75.0) and pq.tolist() == [1, 0, 1, 1]
    with pytest.raises(KeyError, match="ndcg@7"):
        main_score(m, "ndcg@7")
