"""Ranking metrics: known values and properties (Hypothesis)."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recommender.ranking.metrics import (
    average_precision_at_k,
    catalog_coverage,
    evaluate_rankings,
    ndcg_at_k,
    recall_at_k,
    split_relevant,
)


def rel_matrix(sets, n_items):
    rows = [r for r, s in enumerate(sets) for _ in s]
    cols = [c for s in sets for c in s]
    return sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(sets), n_items))


def test_known_values():
    ranked = np.array([[0, 1, 2, 3]])
    rel = rel_matrix([{1, 3}], 5)
    # hits at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3)
    expected = (1 / np.log2(3) + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    assert ndcg_at_k(ranked, rel, 4)[0] == pytest.approx(expected)
    assert recall_at_k(ranked, rel, 2)[0] == pytest.approx(0.5)
    assert recall_at_k(ranked, rel, 4)[0] == pytest.approx(1.0)
    # AP@4 = (1/2 + 2/4) / 2
    assert average_precision_at_k(ranked, rel, 4)[0] == pytest.approx(0.5)


def test_padding_and_empty_relevance():
    ranked = np.array([[2, -1, -1], [0, 1, 2]])
    rel = rel_matrix([{2}, set()], 3)
    assert ndcg_at_k(ranked, rel, 3)[0] == pytest.approx(1.0)
    assert np.isnan(ndcg_at_k(ranked, rel, 3)[1])
    assert np.isnan(recall_at_k(ranked, rel, 3)[1])


def test_split_repeat_and_new():
    rel = rel_matrix([{0, 1, 2}], 4)
    hist = rel_matrix([{1, 3}], 4)
    repeat, new = split_relevant(rel, hist)
    assert set(repeat.indices) == {1}
    assert set(new.indices) == {0, 2}


def test_evaluate_rankings_reports_all_metrics():
    ranked = np.tile(np.arange(20), (2, 1))
    rel = rel_matrix([{0, 25}, {19}], 30)
    hist = rel_matrix([{0}, set()], 30)
    m = evaluate_rankings(ranked, rel, hist, 30)
    assert m["customers"] == 2
    assert m["recall@20"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["recall@20_repeat"] == pytest.approx(1.0)  # only customer 0 has a repeat item
    assert m["recall@20_new"] == pytest.approx((0.0 + 1.0) / 2)
    assert m["coverage@10"] == pytest.approx(10 / 30)


rankings = st.integers(5, 30).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.permutations(list(range(n))),
        st.sets(st.integers(0, n - 1), min_size=1, max_size=n),
        st.integers(1, n),
    )
)


@settings(max_examples=200, deadline=None)
@given(rankings)
def test_metric_bounds(case):
    n, perm, relevant, k = case
    ranked = np.array([perm])
    rel = rel_matrix([relevant], n)
    for fn in (ndcg_at_k, recall_at_k, average_precision_at_k):
        v = fn(ranked, rel, k)[0]
        assert 0.0 <= v <= 1.0 + 1e-12


@settings(max_examples=200, deadline=None)
@given(rankings)
def test_perfect_ranking_scores_one(case):
    n, perm, relevant, k = case
    ideal = sorted(relevant) + [i for i in perm if i not in relevant]
    ranked = np.array([ideal])
    rel = rel_matrix([relevant], n)
    assert ndcg_at_k(ranked, rel, k)[0] == pytest.approx(1.0)
    assert average_precision_at_k(ranked, rel, k)[0] == pytest.approx(1.0)
    assert recall_at_k(ranked, rel, k)[0] == pytest.approx(min(1.0, k / len(relevant)))


@settings(max_examples=100, deadline=None)
@given(rankings)
def test_moving_a_hit_up_never_lowers_ndcg(case):
    n, perm, relevant, k = case
    perm = list(perm)
    hits = [i for i, item in enumerate(perm) if item in relevant]
    pos = hits[-1]
    if pos == 0:
        return
    better = perm.copy()
    better[pos - 1], better[pos] = better[pos], better[pos - 1]
    rel = rel_matrix([relevant], n)
    a = ndcg_at_k(np.array([perm]), rel, k)[0]
    b = ndcg_at_k(np.array([better]), rel, k)[0]
    assert b >= a - 1e-12


def test_coverage():
    assert catalog_coverage(np.array([[0, 1], [1, -1]]), 4) == pytest.approx(0.5)


@st.composite
def ranked_lists(draw):
    """Several customers' lists (-1 padded) and relevant sets (some empty)."""
    n_items = draw(st.integers(1, 12))
    n_users = draw(st.integers(1, 8))
    k = draw(st.integers(1, 6))
    lists, sets = [], []
    for _ in range(n_users):
        items = draw(st.lists(st.integers(0, n_items - 1), max_size=k, unique=True))
        lists.append(items + [-1] * (k - len(items)))
        sets.append(draw(st.sets(st.integers(0, n_items - 1))))
    return np.array(lists), sets, n_items, k


@settings(max_examples=300, deadline=None)
@given(ranked_lists())
def test_metrics_equal_a_plain_count(case):
    """Per-customer hits looked up for all customers at once equal a set test per
    customer (padding never matches, not even the previous customer's last item)."""
    ranked, sets, n_items, k = case
    rel = rel_matrix(sets, n_items)
    disc = 1 / np.log2(np.arange(2, k + 2))
    for u, (row, relevant) in enumerate(zip(ranked, sets, strict=True)):
        hits = np.array([item in relevant for item in row])
        if not relevant:
            assert np.isnan(recall_at_k(ranked, rel, k)[u])
            continue
        assert recall_at_k(ranked, rel, k)[u] == pytest.approx(hits.sum() / len(relevant))
        ideal = disc[: min(k, len(relevant))].sum()
        assert ndcg_at_k(ranked, rel, k)[u] == pytest.approx((hits * disc).sum() / ideal)


def test_a_metric_no_customer_defines_is_none_not_nan():
    """Nobody rebuys in the window: recall on repeat items is undefined, and the
    metrics still go into a JSON manifest (which has no NaN)."""
    import json

    ranked = np.array([[0, 1, 2], [2, 1, 0]])
    relevant = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float32))
    history = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32))
    m = evaluate_rankings(ranked, relevant, history, 3, k_ndcg=3, k_recall=3, k_map=3)
    assert m["recall@3_repeat"] is None
    assert m["recall@3_new"] == 1.0 and m["customers"] == 2
    json.dumps(m, allow_nan=False)
