"""The contract every ranking model passes (known and unknown customers,
save/load round trip, batch equals single), and quality on known structure."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from recommender.data.interactions import apply_weighting
from recommender.errors import NotFittedError
from recommender.ranking.als import ALSRecommender, FactorError
from recommender.ranking.base import mask_seen, top_k, top_k_sparse
from recommender.ranking.baselines import (
    ItemKNNRecommender,
    PersonalFrequencyRecommender,
    PopularityRecommender,
)
from recommender.ranking.metrics import evaluate_recommender


def checkerboard(n_users=400, n_items=120, groups=4, seed=0, per_user=12):
    """Customers in group g buy items of group g; a held-out item each is the test."""
    rng = np.random.default_rng(seed)
    ug = np.arange(n_users) % groups
    ig = np.arange(n_items) % groups
    train_r, train_c, test_r, test_c = [], [], [], []
    for u in range(n_users):
        mine = np.flatnonzero(ig == ug[u])
        # popularity inside the group is skewed, so structure beats global popularity
        p = 1.0 / np.arange(1, len(mine) + 1)
        chosen = rng.choice(mine, size=per_user + 1, replace=False, p=p / p.sum())
        train_r += [u] * per_user
        train_c += list(chosen[:per_user])
        test_r.append(u)
        test_c.append(chosen[per_user])
    shape = (n_users, n_items)
    train = sp.csr_matrix((np.ones(len(train_r), np.float32), (train_r, train_c)), shape=shape)
    test = sp.csr_matrix((np.ones(len(test_r), np.float32), (test_r, test_c)), shape=shape)
    return train, test, ug, ig


MODELS = {
    "als": lambda: ALSRecommender(factors=16, iterations=10, regularization=0.1, alpha=5.0),
    "popularity": PopularityRecommender,
    "item_knn": ItemKNNRecommender,
    "personal_frequency": PersonalFrequencyRecommender,
}


@pytest.fixture(scope="module")
def data():
    return checkerboard()


@pytest.fixture(scope="module", params=list(MODELS))
def fitted(request, data):
    train, *_ = data
    return request.param, MODELS[request.param]().fit(train)


def test_not_fitted_fails_clearly():
    for make in MODELS.values():
        with pytest.raises(NotFittedError):
            make().recommend(np.arange(2), sp.csr_matrix((2, 3)), k=2)


def test_recommend_shapes_and_order(fitted, data):
    name, model = fitted
    train, *_ = data
    items, scores = model.recommend(np.arange(10), train, k=7)
    assert items.shape == scores.shape == (10, 7)
    assert (items >= 0).all() and (items < train.shape[1]).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all(), f"{name}: scores not sorted"
    for row in items:
        assert len(set(row)) == 7, f"{name}: duplicate items in a list"


def test_batch_equals_single(fitted, data):
    _, model = fitted
    train, *_ = data
    rows = np.arange(25)
    batch, _ = model.recommend(rows, train, k=10, batch_size=7)
    for r in rows[:10]:
        single, _ = model.recommend(np.array([r]), train, k=10)
        np.testing.assert_array_equal(single[0], batch[r])


def test_reused_score_blocks_carry_nothing_over(fitted, data):
    """Blocks reuse one buffer per thread: masked purchases of one block, or a
    longer previous block, must not leak into the next (short last block too)."""
    _, model = fitted
    train, *_ = data
    rows = np.arange(23)[::-1]
    for workers in (1, 2):
        batch, top = model.recommend(
            rows, train, k=10, exclude_seen=True, batch_size=5, workers=workers
        )
        for i, r in enumerate(rows):
            single, s = model.recommend(np.array([r]), train, k=10, exclude_seen=True)
            np.testing.assert_array_equal(single[0], batch[i])
            # one row is a matrix-vector product, a block a matrix product
            np.testing.assert_allclose(s[0], top[i], rtol=1e-6)


def test_exclude_seen(fitted, data):
    _, model = fitted
    train, *_ = data
    items, _ = model.recommend(np.arange(20), train, k=10, exclude_seen=True)
    for u in range(20):
        assert not set(items[u]) & set(train[u].indices)


def test_customer_without_history_gets_a_full_list(fitted, data):
    train, *_ = data
    _, model = fitted
    empty = sp.csr_matrix(train.shape, dtype=np.float32)
    items, scores = model.recommend(np.array([0]), empty, k=5)
    assert (items >= 0).all()


def test_als_save_load_round_trip_gives_same_top_n(data):
    train, *_ = data
    model = ALSRecommender(factors=8, iterations=5).fit(train)
    again = ALSRecommender.from_factors(
        model.user_factors_.copy(),
        model.item_factors_.copy(),
        regularization=model.regularization,
        alpha=model.alpha,
    )
    a, _ = model.recommend(np.arange(50), train, k=10)
    b, _ = again.recommend(np.arange(50), train, k=10)
    np.testing.assert_array_equal(a, b)


def test_als_refuses_nan_factors(data):
    train, *_ = data
    model = ALSRecommender(factors=4, iterations=2).fit(train)
    bad = model.user_factors_.copy()
    bad[3, 1] = np.nan
    with pytest.raises(FactorError):
        ALSRecommender.from_factors(bad, model.item_factors_, regularization=0.1, alpha=1.0)
    with pytest.raises(FactorError):
        ALSRecommender().fit(sp.csr_matrix((5, 5), dtype=np.float32))


def test_fold_in_matches_the_trained_customer(data):
    """Folding in a known customer's history lands near their trained factors."""
    train, *_ = data
    model = ALSRecommender(factors=16, iterations=15, regularization=0.1, alpha=5.0).fit(train)
    u = 11
    x = model.fold_in(train[u].indices, train[u].data)
    cos = x @ model.user_factors_[u] / (np.linalg.norm(x) * np.linalg.norm(model.user_factors_[u]))
    assert cos > 0.95
    top_folded = set(top_k((x @ model.item_factors_.T)[None, :], 10)[0][0])
    top_trained = set(model.recommend(np.array([u]), train, k=10)[0][0])
    assert len(top_folded & top_trained) >= 8


def test_similar_items_stay_in_group(data):
    train, _, _, ig = data
    model = ALSRecommender(factors=16, iterations=15, regularization=0.1, alpha=5.0).fit(train)
    sims, _ = model.similar_items(0, k=10)
    assert 0 not in sims
    assert np.mean(ig[sims] == ig[0]) >= 0.8


def test_als_beats_popularity_on_known_structure(data):
    train, test, *_ = data
    users = np.arange(train.shape[0])
    als = ALSRecommender(factors=16, iterations=15, regularization=0.1, alpha=5.0)
    weighted = apply_weighting(train, "bm25")
    m_als = evaluate_recommender(als.fit(weighted), train, test, users, exclude_seen=True)
    m_pop = evaluate_recommender(
        PopularityRecommender().fit(train), train, test, users, exclude_seen=True
    )
    assert m_als["ndcg@10"] > 1.5 * m_pop["ndcg@10"], (m_als, m_pop)
    assert m_als["recall@20"] > m_pop["recall@20"]


@pytest.mark.parametrize("scheme", ["raw", "log", "bm25", "tfidf"])
def test_weightings_keep_sparsity_and_are_positive(scheme, data):
    train, *_ = data
    w = apply_weighting(train * 3, scheme)
    assert w.nnz == train.nnz
    assert (w.data > 0).all() and np.isfinite(w.data).all()


def _reference_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    out = np.full((scores.shape[0], k), -1)
    for r, row in enumerate(scores):
        order = np.lexsort((np.arange(row.size), -row))[:k]
        out[r, : order.size] = np.where(np.isfinite(row[order]), order, -1)
    return out


@pytest.mark.parametrize("n_cols", [5, 64, 130, 4097, 20_000])
@pytest.mark.parametrize("k", [1, 10, 100])
@pytest.mark.parametrize("kind", ["dense", "few-values", "sparse", "masked", "all-masked", "same"])
def test_top_k_equals_a_full_sort(n_cols, k, kind):
    """Exact top-k with ties to the lower item, whichever path a row takes
    (block candidates, many ties at the threshold, a partial tail block, -inf)."""
    rng = np.random.default_rng(n_cols * 7 + k)
    n = 24
    if kind == "dense":
        s = rng.standard_normal((n, n_cols))
    elif kind == "few-values":
        s = rng.integers(0, 3, (n, n_cols)).astype(float)
    elif kind == "sparse":  # a personal-frequency or item-kNN row: mostly zeros
        s = np.zeros((n, n_cols))
        for r in range(n):
            s[r, rng.integers(0, n_cols, 4)] = rng.random(4) + 1
    elif kind == "masked":
        s = rng.standard_normal((n, n_cols))
        s[rng.random((n, n_cols)) < 0.7] = -np.inf
    elif kind == "all-masked":
        s = np.full((n, n_cols), -np.inf)
        s[::3, :2] = 1.0
    else:  # popularity: the same row for everyone, with ties
        s = np.tile(rng.integers(0, 50, n_cols).astype(float), (n, 1))
    s = s.astype(np.float32)
    items, top = top_k(s, k)
    kk = min(k, n_cols)
    np.testing.assert_array_equal(items, _reference_top_k(s, kk))
    found = items >= 0
    np.testing.assert_array_equal(top[found], s[np.nonzero(found)[0], items[found]])


@settings(max_examples=200, deadline=None)
@given(
    n_rows=st.integers(1, 6),
    n_cols=st.integers(1, 3000),
    k=st.integers(1, 60),
    tied=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_top_k_equals_a_full_sort_on_any_shape(n_rows, n_cols, k, tied, seed):
    """The group size follows n_cols / k: every width, tail and tie pattern."""
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 4, (n_rows, n_cols)) if tied else rng.standard_normal((n_rows, n_cols))
    s = s.astype(np.float32)
    s[rng.random((n_rows, n_cols)) < 0.2] = -np.inf
    items, top = top_k(s, k)
    np.testing.assert_array_equal(items, _reference_top_k(s, min(k, n_cols)))
    found = items >= 0
    np.testing.assert_array_equal(top[found], s[np.nonzero(found)[0], items[found]])


# -- fast paths against the dense reference ------------------------------------

# few distinct values, so ties (and ties with the fill) are common
TIED = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, -1.0])


@st.composite
def sparse_rows(draw, max_rows=8, max_cols=90):
    """A small rows x items matrix (explicit zeros, empty rows), a fill row, k."""
    n_rows = draw(st.integers(1, max_rows))
    n_cols = draw(st.integers(1, max_cols))
    cells = draw(
        st.sets(st.tuples(st.integers(0, n_rows - 1), st.integers(0, n_cols - 1)), max_size=300)
    )
    r, c = (np.array(x, dtype=np.int64) for x in zip(*cells, strict=True)) if cells else ([], [])
    v = np.array(draw(st.lists(TIED, min_size=len(cells), max_size=len(cells))), np.float32)
    entries = sp.csr_matrix((v, (r, c)), shape=(n_rows, n_cols), dtype=np.float32)
    fill_values = st.sampled_from([0.0, 0.25, 1.0, -np.inf])
    fill = np.array(draw(st.lists(fill_values, min_size=n_cols, max_size=n_cols)), np.float32)
    k = draw(st.integers(1, n_cols + 5))  # also longer than any row's stored values
    return entries, fill, k


def _dense(entries, fill, exclude=None):
    dense = np.tile(fill, (entries.shape[0], 1))
    coo = entries.tocoo()
    dense[coo.row, coo.col] = coo.data  # stored values, explicit zeros included
    if exclude is not None:
        mask_seen(dense, exclude, np.arange(entries.shape[0]))
    return dense


@settings(max_examples=300, deadline=None)
@given(sparse_rows(), st.booleans(), st.integers(0, 2**31))
def test_top_k_sparse_equals_dense_top_k(case, with_exclude, seed):
    entries, fill, k = case
    items, dense = _sparse_against_dense(entries, fill, k, with_exclude, seed)
    np.testing.assert_array_equal(items, _reference_top_k(dense, min(k, dense.shape[1])))


def _sparse_against_dense(entries, fill, k, with_exclude, seed):
    """top_k_sparse's items and scores equal top_k's on the dense rows; returns
    the items and the dense rows."""
    exclude = None
    if with_exclude:
        exclude = sp.random(*entries.shape, density=0.3, format="csr", random_state=seed)
    dense = _dense(entries, fill, exclude)
    items, top = top_k_sparse(entries, fill, k, exclude=exclude)
    ref_items, ref_top = top_k(dense, k)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_array_equal(top, ref_top)
    return items, dense


@settings(max_examples=200, deadline=None)
@given(sparse_rows(), st.booleans(), st.integers(0, 2**31))
def test_top_k_sparse_without_a_fill_equals_dense_top_k(case, with_exclude, seed):
    """A fill of -inf everywhere (candidate lists; the ranker's answers) is
    skipped rather than sorted: rows shorter than k end in -1 all the same."""
    entries, fill, k = case
    _sparse_against_dense(entries, np.full_like(fill, -np.inf), k, with_exclude, seed)


def test_top_k_sparse_long_rows_and_unsorted_columns():
    """Rows far longer than k (several packed lines each) in the column order of
    a sparse product, which is not sorted; ties among stored values and with the fill."""
    rng = np.random.default_rng(3)
    n_rows, n_cols, k = 40, 3000, 20
    lengths = np.minimum((rng.pareto(1.0, n_rows) * 200).astype(int), n_cols)
    lengths[:3] = [0, 5, n_cols]
    cols = np.concatenate([rng.permutation(n_cols)[:n] for n in lengths])
    vals = rng.integers(0, 6, cols.size).astype(np.float32) / 2
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    entries = sp.csr_matrix((vals, cols, indptr), shape=(n_rows, n_cols))
    assert not entries.has_sorted_indices
    for fill in (np.zeros(n_cols, np.float32), rng.integers(0, 3, n_cols).astype(np.float32)):
        for exclude in (
            None,
            sp.random(n_rows, n_cols, density=0.05, format="csr", random_state=1),
        ):
            dense = _dense(entries, fill, exclude)
            items, top = top_k_sparse(entries, fill, k, exclude=exclude)
            np.testing.assert_array_equal(items, _reference_top_k(dense, k))
            np.testing.assert_array_equal(top, top_k(dense, k)[1])


@st.composite
def histories(draw):
    """Purchase counts for fitting and a second history to rank from
    (-1: not stored; 0: an explicit zero)."""
    n_users = draw(st.integers(1, 25))
    n_items = draw(st.integers(1, 40))
    mats = []
    for _ in range(2):
        cells = np.array(
            draw(
                st.lists(
                    st.sampled_from([-1, -1, -1, 0, 1, 1, 2, 5]),
                    min_size=n_users * n_items,
                    max_size=n_users * n_items,
                )
            ),
            dtype=np.float32,
        ).reshape(n_users, n_items)
        r, c = np.nonzero(cells >= 0)
        mats.append(sp.csr_matrix((cells[r, c], (r, c)), shape=cells.shape))
    return mats[0], mats[1], draw(st.integers(1, n_items + 3))


@pytest.mark.parametrize("name", ["popularity", "item_knn", "personal_frequency"])
@settings(max_examples=60, deadline=None)
@given(case=histories(), exclude_seen=st.booleans())
def test_baseline_lists_equal_dense_scores(name, case, exclude_seen):
    """Each baseline's sparse ranking gives the lists of its own dense score()
    with top_k, ties and masked items included."""
    train, history, k = case
    model = MODELS[name]().fit(train)
    rows = np.arange(history.shape[0])
    items, scores = model.recommend(rows, history, k=k, exclude_seen=exclude_seen, batch_size=4)
    dense = model.score(rows, history)
    if exclude_seen:
        mask_seen(dense, history, rows)
    ref_items, ref_scores = top_k(dense, k)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_array_equal(scores, ref_scores)


def test_workers_give_the_same_lists(fitted, data):
    _, model = fitted
    train, *_ = data
    rows = np.arange(train.shape[0])
    with threadpool_limits(1, "blas"):
        one = model.recommend(rows, train, k=10, batch_size=32)
    many = model.recommend(rows, train, k=10, batch_size=32, workers=3)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])
