"""Buy-it-again: personal repurchase cycles on a generated shop with known cycles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import betaincc

from recommender.errors import NotFittedError
from recommender.timing.repurchase import RepurchaseModel, RepurchaseStateError
from recommender.timing.rows import on_distinct_rows

AS_OF = 365.0
WINDOW = 7.0


def make_shop(seed: int = 0, n_customers: int = 300):
    """A shop where customers rebuy consumables on personal cycles with noise.

    Items 0..59 are consumables with item cycles from 7 to 90 days; each
    customer buys 20 of them, each on a personal cycle (item cycle times a
    log-normal factor) with Gamma(shape 6) noise on every gap, from a random
    phase. Items 60..99 are one-off purchases (each customer buys a few once).
    Returns the log up to 365 + WINDOW days and the true personal cycles.
    """
    rng = np.random.default_rng(seed)
    n_cons, n_items = 60, 100
    item_cycle = np.exp(rng.uniform(np.log(7), np.log(90), n_cons))
    cust, item, day = [], [], []
    truth = {}
    for c in range(n_customers):
        for i in rng.choice(n_cons, size=20, replace=False):
            cyc = item_cycle[i] * np.exp(rng.normal(0, 0.3))
            truth[(c, int(i))] = cyc
            t = rng.uniform(0, cyc)
            while t < AS_OF + WINDOW:
                cust.append(c)
                item.append(i)
                day.append(t)
                t += rng.gamma(6.0, cyc / 6.0)
        for i in rng.choice(np.arange(n_cons, n_items), size=3, replace=False):
            cust.append(c)
            item.append(i)
            day.append(rng.uniform(0, AS_OF))
    return (np.array(cust), np.array(item), np.array(day), n_customers, n_items, item_cycle, truth)


@pytest.fixture(scope="module")
def shop():
    return make_shop()


@pytest.fixture(scope="module")
def model(shop):
    cust, item, day, n_c, n_i, _, _ = shop
    return RepurchaseModel().fit(cust, item, day, AS_OF, n_c, n_i)


def test_repurchase_items_and_cycles(shop, model):
    cust, item, day, n_c, n_i, item_cycle, truth = shop
    assert model.is_repurchase_item_[:60].all() and not model.is_repurchase_item_[60:].any()
    assert np.all(np.isinf(model.item_cycle_days_[60:]))
    # the item's typical cycle: within 20% of the generating cycle for 90% of items
    rel = np.abs(model.item_cycle_days_[:60] / item_cycle - 1)
    assert np.mean(rel < 0.2) >= 0.9, np.sort(rel)[-10:]
    # personal cycles of customers with >= 5 purchases: within 20% for 90% of pairs
    errs = []
    for c in range(0, n_c, 3):
        lo, hi = model.indptr_[c], model.indptr_[c + 1]
        for j in range(lo, hi):
            if model.pair_n_[j] >= 5:
                it = int(model.pair_item_[j])
                cyc = model.item_shape_k_[it] * model.pair_post_rate_[j] / model.pair_post_shape_[j]
                errs.append(abs(cyc / truth[(c, it)] - 1))
    assert len(errs) > 500
    assert np.mean(np.array(errs) < 0.2) >= 0.9
    # regularity: the gaps were Gamma(shape 6)
    assert np.median(model.item_shape_k_[:60]) == pytest.approx(6.0, rel=0.3)


def _recall_ndcg(ranked: list[int], relevant: set[int], k: int = 10) -> tuple[float, float]:
    hits = [1.0 if r in relevant else 0.0 for r in ranked[:k]]
    dcg = sum(h / np.log2(n + 2) for n, h in enumerate(hits))
    idcg = sum(1 / np.log2(n + 2) for n in range(min(k, len(relevant))))
    return sum(hits) / min(k, len(relevant)), dcg / idcg


def test_buy_again_beats_personal_frequency(shop, model):
    cust, item, day, n_c, n_i, _, _ = shop
    past = day <= AS_OF
    future = (day > AS_OF) & (day <= AS_OF + WINDOW)
    ours, base = [], []
    for c in range(n_c):
        bought_before = set(item[past & (cust == c)].tolist())
        relevant = set(item[future & (cust == c)].tolist()) & bought_before
        if not relevant:
            continue
        ranked = [r["item_row"] for r in model.buy_again(c, WINDOW, k=10)]
        its, counts = np.unique(item[past & (cust == c)], return_counts=True)
        freq = its[np.argsort(-counts, kind="stable")].tolist()
        ours.append(_recall_ndcg(ranked, relevant))
        base.append(_recall_ndcg(freq, relevant))
    ours_m, base_m = np.mean(ours, axis=0), np.mean(base, axis=0)
    print(
        f"buy-again recall@10 {ours_m[0]:.3f} nDCG@10 {ours_m[1]:.3f}; "
        f"frequency recall@10 {base_m[0]:.3f} nDCG@10 {base_m[1]:.3f}; {len(ours)} customers"
    )
    assert len(ours) > 250
    assert ours_m[0] > base_m[0] + 0.05 and ours_m[1] > base_m[1] + 0.05


def test_due_items_rank_above_just_bought():
    # one customer, two items with the same 30-day cycle; item 0 last bought 28
    # days ago (due), item 1 two days ago. Other customers make both repurchase items.
    cust, item, day = [], [], []
    for c in range(5):
        for it, last in ((0, 100.0 - 28), (1, 100.0 - 2)):
            for j in range(4):
                cust.append(c)
                item.append(it)
                day.append(last - 30.0 * j)
    m = RepurchaseModel().fit(np.array(cust), np.array(item), np.array(day), 100.0, 5, 2)
    recs = m.buy_again(0, within_days=7.0)
    assert [r["item_row"] for r in recs] == [0, 1]
    assert recs[0]["probability"] > 0.5 > 0.05 > recs[1]["probability"]
    assert recs[0]["cycle_days"] == pytest.approx(30.0, rel=0.05)
    assert recs[0]["days_since_last"] == 28.0
    assert recs[0]["reason"] == "you buy this about every 30 days; last bought 28 days ago"
    # 30 days later item 1 has become due as well
    later = {r["item_row"]: r for r in m.buy_again(0, within_days=7.0, as_of_day=130.0)}
    assert later[1]["probability"] > 0.5 and later[1]["days_since_last"] == 32.0


def test_score_customers_matches_buy_again(model):
    rows = np.array([3, 0, 3, 299])
    mat = model.score_customers(rows, WINDOW)
    assert mat.shape == (4, model.n_items_)
    for r, c in enumerate(rows):
        recs = model.buy_again(int(c), WINDOW, k=1000)
        dense = mat[r].toarray().ravel()
        assert len(recs) == mat[r].nnz
        for rec in recs:
            assert dense[rec["item_row"]] == pytest.approx(rec["probability"])
    assert np.all((mat.data >= 0) & (mat.data <= 1))


def test_state_round_trip(model, tmp_path):
    meta, arrays = model.to_state()
    (tmp_path / "m.json").write_text(json.dumps(meta))
    np.savez(tmp_path / "a.npz", **arrays)
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        loaded = {k: z[k] for k in z.files}
    back = RepurchaseModel.from_state(json.loads((tmp_path / "m.json").read_text()), loaded)
    for c in (0, 7, 150):
        assert back.buy_again(c, 14.0) == model.buy_again(c, 14.0)
    with pytest.raises(RepurchaseStateError):
        RepurchaseModel.from_state({**meta, "schema": "x"}, loaded)
    with pytest.raises(RepurchaseStateError):
        RepurchaseModel.from_state(meta, {**loaded, "indptr": loaded["indptr"][:-1]})
    bad = loaded["pair_post_rate"].copy()
    bad[0] = np.nan
    with pytest.raises(RepurchaseStateError):
        RepurchaseModel.from_state(meta, {**loaded, "pair_post_rate": bad})


def test_edge_cases():
    with pytest.raises(NotFittedError):
        RepurchaseModel().buy_again(0, 7.0)
    # nobody rebuys anything: no repurchase items, empty lists, no NaN
    m = RepurchaseModel().fit(np.arange(10), np.arange(10) % 3, np.arange(10.0), 20.0, 12, 3)
    assert not m.is_repurchase_item_.any() and m.buy_again(11, 7.0) == []
    assert m.score_customers(np.arange(12), 7.0).nnz == 0
    # fixed prior strength; first-time buyers of repurchase items get the item prior
    m1 = RepurchaseModel(prior_strength=2.0, min_customer_purchases=1).fit(
        np.array([0, 0, 1, 1, 2, 2, 3]),
        np.zeros(7, dtype=int),
        np.array([0.0, 10, 0, 10, 0, 10, 15]),
        20.0,
    )
    rec = m1.buy_again(3, 7.0)
    assert (
        rec
        and rec[0]["cycle_days"] == pytest.approx(10.0)
        and "customers rebuy" in rec[0]["reason"]
    )
    assert np.isfinite(rec[0]["probability"])


def test_lapsed_buyers_are_not_scored_as_merely_late():
    """Customers who stopped rebuying long ago get a low probability; regular ones a high one."""
    rng = np.random.default_rng(3)
    cust, item, day = [], [], []
    for c in range(200):
        lapsed = c % 2 == 1
        start = rng.uniform(0, 10)
        stop = 150.0 if lapsed else 400.0
        t = start
        while t < stop:
            cust.append(c)
            item.append(0)
            day.append(t)
            t += rng.gamma(20.0, 0.5)  # about every 10 days
    as_of = 400.0
    m = RepurchaseModel().fit(np.array(cust), np.array(item), np.array(day), as_of, 200, 1)
    assert 0.0 < m.item_dropout_[0] < 1.0
    p = m.score_customers(np.arange(200), 10.0).toarray()[:, 0]
    regular, lapsed = p[0::2], p[1::2]
    assert np.median(regular) > 0.5 and np.max(lapsed) < 0.05
    # versions saved before the dropout existed load as "nobody stops"
    meta, arrays = m.to_state()
    del arrays["item_dropout"]
    old = RepurchaseModel.from_state(meta, arrays)
    assert np.all(old.item_dropout_ == 0.0)
    assert np.max(old.score_customers(np.arange(200), 10.0).toarray()[1::2, 0]) > 0.05


def test_item_priors_from_a_customer_sample_score_every_customer(shop, model):
    cust, item, day, n_c, n_i, item_cycle, _ = shop
    sampled = RepurchaseModel()
    sampled.prior_sample = 100  # of 300 customers
    sampled.fit(cust, item, day, AS_OF, n_c, n_i)
    # every customer's own pairs are kept and scored, sampled or not
    assert np.array_equal(sampled.indptr_, model.indptr_)
    assert np.array_equal(sampled.pair_item_, model.pair_item_)
    # the item-level fits moved, but stay close to those on all customers
    assert not np.allclose(sampled.item_prior_beta_, model.item_prior_beta_)
    rep = model.is_repurchase_item_
    cycle_ratio = sampled.item_cycle_days_[rep] / model.item_cycle_days_[rep]
    assert np.all(np.abs(np.log(cycle_ratio)) < 0.25)
    drop = np.abs(sampled.item_dropout_[rep] - model.item_dropout_[rep])
    assert np.median(drop) < 0.05


def test_betaincc_on_distinct_rows_equals_betaincc_everywhere():
    rng = np.random.default_rng(0)
    n = 5000
    # few distinct values per column, so many rows repeat exactly
    k = rng.choice([0.8, 1.5, 3.0], n)
    a = rng.choice([2.0, 7.5, 40.0], n)
    x = rng.choice(np.linspace(0.0, 1.0, 23), n)
    assert np.array_equal(on_distinct_rows(betaincc, k, a, x), betaincc(k, a, x))
    assert np.array_equal(
        on_distinct_rows(betaincc, k[:1], a[:1], x[:1]), betaincc(k[:1], a[:1], x[:1])
    )
    assert on_distinct_rows(betaincc, k[:0], a[:0], x[:0]).shape == (0,)


def test_gap_survival_is_the_upper_tail_of_the_predictive_gap():
    """``_gap_survival`` (betainc of the other tail) against the textbook form
    ``betaincc(k, a, e / (e + b))`` and a Monte Carlo of the beta-prime gap."""
    from recommender.timing.repurchase import _gap_survival

    rng = np.random.default_rng(0)
    k = rng.uniform(0.5, 30.0, 5000)
    a = np.exp(rng.uniform(0.0, np.log(500.0), 5000))
    b = np.exp(rng.uniform(0.0, np.log(5000.0), 5000))
    e = np.exp(rng.uniform(-3.0, np.log(3000.0), 5000))
    ours, ref = _gap_survival(k, a, b, e), betaincc(k, a, e / (e + b))
    keep = ref > 1e-250
    np.testing.assert_allclose(ours[keep], ref[keep], rtol=1e-9)
    # gap ~ Gamma(k, rate lambda), lambda ~ Gamma(a, rate b): P(gap > e)
    lam = rng.gamma(3.0, 1.0 / 40.0, 400_000)
    gaps = rng.gamma(2.0, 1.0 / lam)
    for days in (5.0, 30.0, 120.0):
        mc = float(np.mean(gaps > days))
        survival = _gap_survival(*(np.array([v]) for v in (2.0, 3.0, 40.0, days)))[0]
        assert abs(survival - mc) < 0.005


def test_shape_fits_solve_each_group_like_a_root_finder():
    """The vectorised per-item shape MLE against brentq on every group, with
    groups whose root lies below, inside and above the bounds, and a group
    of customers with Gamma(4) gaps whose shape it recovers."""
    from scipy.optimize import brentq
    from scipy.special import digamma

    from recommender.timing.repurchase import _K_BOUNDS, _fit_shapes

    rng = np.random.default_rng(0)
    n_groups = 40
    sizes = rng.integers(1, 60, n_groups)
    group = np.repeat(np.arange(n_groups), sizes)
    m = rng.integers(2, 12, group.size)
    # the statistic of Gamma(k) gaps for a spread of true k, plus extremes
    true_k = np.exp(rng.uniform(np.log(0.2), np.log(60.0), n_groups))
    stat = np.zeros(group.size)
    for j in range(group.size):
        gaps = rng.gamma(true_k[group[j]], 1.0, m[j])
        stat[j] = m[j] * (np.log(gaps.mean()) - np.log(gaps).mean())
    stat_sum = np.bincount(group, weights=stat, minlength=n_groups)
    stat_sum[0], stat_sum[1] = 0.0, 1e6  # root above and below the bounds
    got = _fit_shapes(stat_sum, group, m)

    for j in range(n_groups):
        mj = m[group == j].astype(float)

        def f(k, mj=mj, j=j):
            return float(np.sum(mj * (digamma(mj * k) - np.log(mj) - digamma(k)))) - stat_sum[j]

        lo, hi = _K_BOUNDS
        want = lo if f(lo) <= 0 else hi if f(hi) >= 0 else brentq(f, lo, hi, xtol=1e-12)
        assert got[j] == pytest.approx(want, rel=1e-8), j
    assert got[0] == _K_BOUNDS[1] and got[1] == _K_BOUNDS[0]
    big = rng.gamma(4.0, 1.0, (4000, 6))
    stat_big = 6 * (np.log(big.mean(axis=1)) - np.log(big).mean(axis=1))
    k4 = _fit_shapes(np.array([stat_big.sum()]), np.zeros(4000, dtype=np.int64), np.full(4000, 6))
    assert k4[0] == pytest.approx(4.0, rel=0.05)
