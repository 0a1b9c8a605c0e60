"""P-TopFreq and TIFU-KNN: hand-computed answers, the recommender contract,
and a generated grocery shop on which both must beat popularity."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.data.synthetic import generate_shop
from recommender.ranking.base import NotFittedError, mask_seen, top_k
from recommender.ranking.baselines import PopularityRecommender
from recommender.ranking.metrics import evaluate_recommender
from recommender.ranking.repeat_baselines import (
    Baskets,
    PTopFreqRecommender,
    TIFUKNNRecommender,
)
from training.ranking import make_split

# (customer, item, day) order lines; 5 customers (3 and 4 never buy), 5 items
LINES = [
    # customer 0: item 0 in three lines on one day (one basket), item 1 on two
    # days, item 2 on two days, the last of them later than item 1's
    (0, 0, 1.2),
    (0, 0, 1.5),
    (0, 0, 1.9),
    (0, 2, 1.3),
    (0, 2, 1.7),
    (0, 1, 2.0),
    (0, 1, 3.0),
    (0, 2, 4.0),
    # customer 1: one day each; item 4 more recently
    (1, 3, 1.0),
    (1, 4, 2.0),
    # customer 2
    (2, 3, 5.0),
]
N_CUSTOMERS, N_ITEMS = 5, 5


def lines():
    c, i, d = (np.array(col) for col in zip(*LINES, strict=True))
    return c, i, d


def history():
    c, i, _ = lines()
    return sp.csr_matrix(
        (np.ones(len(c), np.float32), (c, i)), shape=(N_CUSTOMERS, N_ITEMS), dtype=np.float32
    )


@pytest.fixture(scope="module")
def ptopfreq():
    return PTopFreqRecommender().fit_events(*lines(), N_CUSTOMERS, N_ITEMS)


def test_baskets_count_each_item_once_per_day():
    b = Baskets.from_lines(*lines(), N_CUSTOMERS, N_ITEMS)
    assert len(b) == 8  # customer 0: items 0, 2 on day 1; 1 on days 2, 3; 2 on day 4
    pos, n_baskets = b.basket_positions()
    np.testing.assert_array_equal(n_baskets, [4, 2, 1, 0, 0])
    np.testing.assert_array_equal(pos[b.customer_rows == 0], [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(b.buyers(), [1, 1, 1, 2, 1])


def test_baskets_from_frame_are_calendar_days():
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b", "zz"],
            "item_id": ["x", "x", "y", "x", "x"],
            "timestamp": pd.to_datetime(
                [
                    "2025-01-01 08:00",
                    "2025-01-01 21:00",
                    "2025-01-02 00:30",
                    "2025-01-03 10:00",
                    "2025-01-03 11:00",
                ]
            ),
        }
    )
    customers, items = IdIndex(["a", "b"]), IdIndex(["x", "y"])
    b = Baskets.from_frame(frame, customers, items)  # "zz" is not indexed
    np.testing.assert_array_equal(b.customer_rows, [0, 0, 1])
    np.testing.assert_array_equal(b.item_rows, [0, 1, 0])
    assert b.days[1] - b.days[0] == 1


def test_ptopfreq_order_by_hand(ptopfreq):
    items, scores = ptopfreq.recommend(np.arange(N_CUSTOMERS), history(), k=N_ITEMS)
    # customer 0: items 1 and 2 on two days each, 2 more recently; item 0 on
    # one day however many lines; then the most bought-by item 3, then 4
    np.testing.assert_array_equal(items[0], [2, 1, 0, 3, 4])
    # customer 1: one day each, item 4 later; then popularity, ties to the lower row
    np.testing.assert_array_equal(items[1], [4, 3, 0, 1, 2])
    np.testing.assert_array_equal(items[2], [3, 0, 1, 2, 4])
    # customers without baskets get the popularity list
    np.testing.assert_array_equal(items[3], [3, 0, 1, 2, 4])
    np.testing.assert_array_equal(items[4], items[3])
    # days + (basket position + 1) / (baskets + 1); popularity in [0, 1]
    np.testing.assert_allclose(scores[0], [2 + 4 / 5, 2 + 3 / 5, 1 + 1 / 5, 1.0, 0.5], rtol=1e-6)


def test_ptopfreq_unknown_rows_get_popularity(ptopfreq):
    wide = sp.vstack([history(), sp.csr_matrix((3, N_ITEMS), dtype=np.float32)]).tocsr()
    items, _ = ptopfreq.recommend(np.array([7, 0, 6]), wide, k=3)
    np.testing.assert_array_equal(items, [[3, 0, 1], [2, 1, 0], [3, 0, 1]])


def test_exclude_seen_and_k_beyond_the_catalog_pad_with_minus_one(ptopfreq):
    items, scores = ptopfreq.recommend(np.array([0, 1]), history(), k=9, exclude_seen=True)
    assert items.shape == (2, N_ITEMS)  # k is capped at the catalog, as in the base
    np.testing.assert_array_equal(items, [[3, 4, -1, -1, -1], [0, 1, 2, -1, -1]])
    assert np.isneginf(scores[items < 0]).all()


def test_fit_needs_days():
    with pytest.raises(ValueError, match="needs purchase days"):
        PTopFreqRecommender().fit(history())
    with pytest.raises(ValueError, match="shape"):
        b = Baskets.from_lines(*lines(), N_CUSTOMERS, N_ITEMS)
        TIFUKNNRecommender().fit(sp.csr_matrix((2, 2)), baskets=b)
    for make in (PTopFreqRecommender, TIFUKNNRecommender):
        with pytest.raises(NotFittedError):
            make().recommend(np.arange(2), history(), k=2)


# TIFU-KNN: customer 0 shops on days 0 {0}, 1 {0, 1}, 2 {2}. With groups of
# 2 counted from the newest: group 0 = days 2 and 1, group 1 = day 0 alone.
# Weights: day 2: 1 / 2 (group mean) / 2 (groups) = 0.25; day 1: 0.9 / 2 / 2;
# day 0: 1 / 1 * 0.7 / 2.
TIFU_HAND = {0: 0.9 / 4 + 0.7 / 2, 1: 0.9 / 4, 2: 0.25}


def tifu_lines():
    rows = [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 2, 2)]
    # customer 1 buys what customer 0 buys and item 3; customers 2-4 buy only
    # item 4, which makes 4 the most popular
    rows += [(1, 0, 0), (1, 1, 0), (1, 3, 0), (1, 3, 1)]
    rows += [(c, 4, 0) for c in (2, 3, 4)]
    c, i, d = (np.array(col) for col in zip(*rows, strict=True))
    return c, i, d


def test_tifu_personal_vector_by_hand():
    model = TIFUKNNRecommender(group_size=2, within_decay=0.9, group_decay=0.7, alpha=1.0)
    model.fit_events(*tifu_lines(), 5, 5)
    u = model.user_vectors_.toarray()[0]
    np.testing.assert_allclose(u, [TIFU_HAND[0], TIFU_HAND[1], TIFU_HAND[2], 0, 0], rtol=1e-6)
    # customer 1: days 0 {0, 1, 3} and 1 {3}, one group: (0.9 * b0 + b1) / 2
    np.testing.assert_allclose(
        model.user_vectors_.toarray()[1], [0.45, 0.45, 0, 0.95, 0], rtol=1e-6
    )
    # alpha = 1 ranks by u, then popularity (item 4, then item 3)
    items, _ = model.recommend(np.array([0]), sp.csr_matrix((5, 5)), k=5)
    np.testing.assert_array_equal(items[0], [0, 2, 1, 4, 3])


def test_tifu_neighbours_bring_in_an_item_never_bought():
    model = TIFUKNNRecommender(group_size=2, n_neighbors=3, alpha=0.7).fit_events(
        *tifu_lines(), 5, 5
    )
    # customer 0's only neighbour (a common item) is customer 1
    np.testing.assert_array_equal(model.neighbours_[0].indices, [1])
    items, scores = model.recommend(np.array([0]), sp.csr_matrix((5, 5)), k=5)
    # item 3, never bought by customer 0, now comes before the popular item 4
    assert list(items[0]).index(3) < list(items[0]).index(4)
    np.testing.assert_allclose(scores[0][list(items[0]).index(3)], 0.3 * 0.95, rtol=1e-6)
    np.testing.assert_allclose(
        scores[0][list(items[0]).index(0)], 0.7 * TIFU_HAND[0] + 0.3 * 0.45, rtol=1e-6
    )


def random_log(seed=0, n_customers=60, n_items=25, n_lines=900):
    rng = np.random.default_rng(seed)
    c = rng.integers(n_customers - 5, size=n_lines)  # the last five never buy
    i = rng.integers(n_items, size=n_lines) % (1 + c % n_items)  # some structure
    d = rng.uniform(0, 60, size=n_lines)
    counts = sp.csr_matrix(
        (np.ones(n_lines, np.float32), (c, i)), shape=(n_customers, n_items), dtype=np.float32
    )
    return (c, i, d, n_customers, n_items), counts


@pytest.mark.parametrize(
    "make", [PTopFreqRecommender, lambda: TIFUKNNRecommender(n_neighbors=5)], ids=["p", "tifu"]
)
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_contract_batch_equals_single_and_dense_scores(make, exclude_seen):
    events, counts = random_log()
    model = make().fit_events(*events)
    rows = np.arange(counts.shape[0])[::-1]
    batch, top = model.recommend(rows, counts, k=12, batch_size=7, exclude_seen=exclude_seen)
    for j in (0, 3, 20, 59):
        single, s = model.recommend(rows[j : j + 1], counts, k=12, exclude_seen=exclude_seen)
        np.testing.assert_array_equal(single[0], batch[j])
        np.testing.assert_array_equal(s[0], top[j])
    dense = model.score(rows, counts)
    if exclude_seen:
        mask_seen(dense, counts, rows)
    ref_items, ref_scores = top_k(dense, 12)
    np.testing.assert_array_equal(batch, ref_items)
    np.testing.assert_array_equal(top, ref_scores)
    assert (batch[:, :10] >= 0).all()


def test_fit_is_reproducible():
    events, counts = random_log(seed=3)
    rows = np.arange(counts.shape[0])
    for make in (PTopFreqRecommender, TIFUKNNRecommender):
        a = make().fit_events(*events).recommend(rows, counts, k=10)
        b = make().fit_events(*events).recommend(rows, counts, k=10)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_both_beat_popularity_on_a_grocery_shop():
    frame = generate_shop("grocery", seed=0).transactions
    customers, crow = IdIndex.encode(frame["customer_id"])
    items, irow = IdIndex.encode(frame["item_id"])
    frame = frame.assign(crow=crow, irow=irow)
    end = frame["timestamp"].max().normalize() + pd.Timedelta(days=1)
    cut = end - pd.Timedelta(days=28)
    split = make_split(frame, frame, customers, items, cut, end)
    baskets = Baskets.from_frame(split.train, customers, items)

    def ndcg(model):
        return evaluate_recommender(model, split.counts, split.relevant, split.users)["ndcg@10"]

    pop = ndcg(PopularityRecommender().fit(split.counts))
    ptop = ndcg(PTopFreqRecommender().fit(split.counts, baskets=baskets))
    tifu = ndcg(TIFUKNNRecommender().fit(split.counts, baskets=baskets))
    # seen: popularity 0.13, P-TopFreq 0.73, TIFU-KNN 0.73; a model that
    # ranked other customers' items, or mostly popular ones, would fall far short
    assert ptop > pop + 0.3, (ptop, pop)
    assert tifu > pop + 0.3, (tifu, pop)


def test_sort_rows_packed_and_lexsort_paths_agree():
    from recommender.ranking.repeat_baselines import _sort_rows

    rng = np.random.default_rng(1)
    cols = [rng.integers(0, 50, 400), rng.integers(-5, 5, 400), rng.integers(0, 3, 400)]
    order = np.lexsort(cols[::-1])
    for got, col in zip(_sort_rows(*cols), cols, strict=True):
        np.testing.assert_array_equal(got, col[order])
    # spans too large for one int64 key take the lexsort path
    big = [cols[0] * 2**40, cols[1] * 2**30, cols[2]]
    order = np.lexsort(big[::-1])
    for got, col in zip(_sort_rows(*big), big, strict=True):
        np.testing.assert_array_equal(got, col[order])


def test_tifu_neighbours_of_a_sample_equal_the_all_pairs_search():
    """Judging on a sample searches the sample's neighbours only: the same lists."""
    events, counts = random_log(seed=5, n_customers=80, n_items=30, n_lines=1500)
    sample = np.array([0, 3, 7, 11, 40, 41, 77])
    full = TIFUKNNRecommender(n_neighbors=6).fit_events(*events)
    part = TIFUKNNRecommender(n_neighbors=6, neighbours_for=sample).fit_events(*events)
    a, sa = full.recommend(sample, counts, k=10)
    b, sb = part.recommend(sample, counts, k=10)
    np.testing.assert_array_equal(b, a)
    np.testing.assert_allclose(sb, sa, rtol=1e-6)
    assert part.neighbours_[np.setdiff1d(np.arange(80), sample)].nnz == 0
