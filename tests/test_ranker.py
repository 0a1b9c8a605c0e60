"""The two-stage ranker: candidates, features as of a cutoff, the LightGBM ranker
and the protocol that judges it against the baselines.

The shop here has known structure: every customer rebuys a few staples on
their own cycles (longer than the label window, so *when* matters, not only
how often) and explores one or two items of their taste group per visit. A
ranker that knows cycle positions and taste must beat P-TopFreq (own items by
count) on the held-out window; wrong features or labels make it lose.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp

from recommender.errors import NotFittedError
from recommender.ranking.baselines import ItemKNNRecommender
from recommender.ranking.candidates import (
    ALS,
    CATEGORY,
    HISTORY,
    KNN,
    POPULAR,
    CandidateConfig,
    generate_candidates,
)
from recommender.ranking.features import (
    FEATURES,
    PurchaseLines,
    ShopSnapshot,
    build_snapshot,
    pair_features,
)
from recommender.ranking.ltr import LTRRanker, RankerStateError
from recommender.ranking.two_stage import (
    TwoStageConfig,
    build_training_set,
    evaluate_two_stage,
    fit_for_publishing,
    fit_stage,
    judge,
    judged_customers,
    rank_customers,
    window_labels,
)

WINDOW = 14
DAYS = 240


def cyclic_shop(
    n_customers: int = 500, n_groups: int = 4, per_group: int = 30, seed: int = 0
) -> PurchaseLines:
    """Staples on personal cycles plus exploration inside a taste group.

    Item ``g * per_group + j`` belongs to group ``g``; categories are the
    groups. Staples are drawn from the group's first ten items, explored
    items from the rest of the group with Zipf-like weights.
    """
    rng = np.random.default_rng(seed)
    n_items = n_groups * per_group
    cust, item, day = [], [], []
    explore_w = 1.0 / np.arange(1, per_group - 10 + 1) ** 0.8
    explore_w /= explore_w.sum()
    for c in range(n_customers):
        g = int(rng.integers(n_groups))
        base = g * per_group
        start = int(rng.integers(0, 60))
        staples = base + rng.choice(10, size=int(rng.integers(3, 7)), replace=False)
        for s in staples:
            cycle = float(rng.uniform(12, 45))
            t = start + rng.uniform(0, cycle)
            while t < DAYS:
                cust.append(c)
                item.append(int(s))
                day.append(int(t))
                t += cycle * rng.uniform(0.85, 1.15)
        t = start + rng.exponential(7.0)
        while t < DAYS:
            for j in rng.choice(per_group - 10, size=int(rng.integers(1, 3)), p=explore_w):
                cust.append(c)
                item.append(base + 10 + int(j))
                day.append(int(t))
            t += rng.exponential(9.0)
    n = len(cust)
    return PurchaseLines(
        np.asarray(cust, dtype=np.int64),
        np.asarray(item, dtype=np.int64),
        np.asarray(day, dtype=np.int64),
        n_customers,
        n_items,
        quantity=np.ones(n, dtype=np.int64),
        price=np.round(rng.lognormal(1.5, 0.3, size=n), 2),
        item_category=np.repeat(np.arange(n_groups), per_group),
    )


def random_shop(seed: int = 1) -> PurchaseLines:
    """No structure at all: uniform customers, items and days."""
    rng = np.random.default_rng(seed)
    n, n_c, n_i = 6000, 300, 80
    return PurchaseLines(
        rng.integers(n_c, size=n),
        rng.integers(n_i, size=n),
        rng.integers(DAYS, size=n),
        n_c,
        n_i,
    )


CONFIG = TwoStageConfig(
    window_days=WINDOW,
    candidates=CandidateConfig(n_history=60, n_als=20, n_knn=20, n_per_category=5, n_popular=10),
    ranker={"n_estimators": 120, "min_data_in_leaf": 40},
    num_threads=1,
    fit_threads=1,
)


@pytest.fixture(scope="module")
def shop() -> PurchaseLines:
    return cyclic_shop()


@pytest.fixture(scope="module")
def report(shop: PurchaseLines):
    return evaluate_two_stage(shop, DAYS - WINDOW, CONFIG)


@pytest.fixture(scope="module")
def stage(shop: PurchaseLines):
    return fit_stage(shop, DAYS - WINDOW, CONFIG)


# -- the protocol ----------------------------------------------------------------


def test_ranker_beats_ptopfreq_on_known_structure(report) -> None:
    m = report.judgement.metrics
    assert report.cutoffs == (DAYS - 2 * WINDOW, DAYS - WINDOW, DAYS)
    assert m["ranker"]["customers"] == m["p_topfreq"]["customers"] > 100
    # cycles longer than the window: counts alone cannot tell what is due
    assert m["ranker"]["ndcg@10"] >= 1.10 * m["p_topfreq"]["ndcg@10"]
    assert m["ranker"]["ndcg@10"] > m["als"]["ndcg@10"]
    assert report.judgement.serve == "ranker" and report.judgement.beats_best
    # every repeat purchase is a candidate; new items come from ALS/kNN/category
    cands = report.judgement.candidates
    assert cands["candidate_recall_repeat"] == 1.0
    assert cands["candidate_recall_new"] > 0.5
    assert report.judgement.explore_ok


def test_shuffled_labels_lose_to_ptopfreq(shop: PurchaseLines, report) -> None:
    """The features carry the signal only through the labels: a ranker trained
    on labels shuffled across rows must not keep the lead."""
    t0, t1, _ = report.cutoffs
    stage0 = fit_stage(shop, t0, CONFIG)
    labels0 = window_labels(shop, t0, t1)
    train = build_training_set(stage0, judged_customers(stage0, labels0, None, 0), labels0)
    shuffled = np.random.default_rng(0).permutation(train.labels)
    bad = LTRRanker(FEATURES, n_estimators=60, num_threads=1).fit(
        train.features, shuffled, train.groups
    )
    stage1 = fit_stage(shop, t1, CONFIG)
    relevant = window_labels(shop, t1, t1 + WINDOW)
    rows = judged_customers(stage1, relevant, None, 0)
    verdict = judge(shop, stage1, bad, rows, relevant)
    assert verdict.metrics["ranker"]["ndcg@10"] < verdict.metrics["p_topfreq"]["ndcg@10"]


def test_fallback_names_the_best_baseline(shop: PurchaseLines, stage) -> None:
    """A ranker that prefers what was *not* bought loses, and the judgement
    says which baseline to serve instead."""
    t1 = stage.cutoff
    relevant = window_labels(shop, t1, t1 + WINDOW)
    rows = judged_customers(stage, relevant, None, 0)
    train = build_training_set(stage, rows, relevant)
    inverted = (train.labels == 0).astype(np.int32)
    bad = LTRRanker(FEATURES, n_estimators=40, num_threads=1).fit(
        train.features, inverted, train.groups
    )
    verdict = judge(shop, stage, bad, rows, relevant)
    baselines = {k: v["ndcg@10"] for k, v in verdict.metrics.items() if k != "ranker"}
    assert not verdict.beats_best
    assert verdict.best_baseline == max(baselines, key=lambda k: baselines[k])
    assert verdict.serve == verdict.best_baseline != "ranker"


def test_random_shop_reports_an_honest_verdict() -> None:
    """With nothing to learn the protocol still runs, and its verdict is the
    comparison it printed."""
    lines = random_shop()
    config = dataclasses.replace(CONFIG, use_repurchase=False)
    rep = evaluate_two_stage(lines, DAYS - WINDOW, config)
    m = rep.judgement.metrics
    best = max((k for k in m if k != "ranker"), key=lambda k: m[k]["ndcg@10"])
    assert rep.judgement.best_baseline == best
    assert rep.judgement.beats_best == (m["ranker"]["ndcg@10"] > m[best]["ndcg@10"])
    assert rep.judgement.serve == ("ranker" if rep.judgement.beats_best else best)


def test_publishing_trains_on_the_last_window_and_serves_as_of_the_end(
    shop: PurchaseLines,
) -> None:
    published = fit_for_publishing(shop, DAYS, CONFIG)
    assert published.stage.cutoff == DAYS
    assert (
        published.stage.snapshot.cust_baskets.sum() == build_snapshot(shop, DAYS).cust_baskets.sum()
    )
    v = published.validation
    assert v.metrics["ranker"]["customers"] > 50
    assert published.serve == v.serve == "ranker"
    items, _ = rank_customers(published.stage, published.ranker, np.arange(5), 10)
    assert (items >= 0).all()


# -- candidates -----------------------------------------------------------------


def test_candidates_hold_every_source(shop: PurchaseLines, stage) -> None:
    rows = np.arange(50)
    cands = stage.candidates(rows)
    flags = cands.matrix.data
    for source in (HISTORY, ALS, KNN, CATEGORY, POPULAR):
        assert (flags & source).any(), source
    history = stage.snapshot.history_rows(rows)
    for r in range(rows.size):
        own = set(history[r].indices)
        row = cands.matrix[r]
        got = dict(zip(row.indices, row.data, strict=True))
        # every own item (fewer than n_history) is a history candidate ...
        assert own <= {i for i, f in got.items() if f & HISTORY}
        # ... and ALS / kNN offer only items not bought
        assert not own & {i for i, f in got.items() if f & (ALS | KNN)}
    assert cands.matrix.getnnz(axis=1).max() <= 60 + 20 + 20 + 3 * 5 + 10


def test_single_customer_candidates_equal_the_batch(stage) -> None:
    rows = np.arange(40)
    batch = stage.candidates(rows)
    for r in (0, 7, 39):
        one = stage.candidates(np.array([r]))
        assert (one.matrix != batch.matrix[r]).nnz == 0
        lo, hi = batch.matrix.indptr[r], batch.matrix.indptr[r + 1]
        np.testing.assert_array_equal(one.als_score, batch.als_score[lo:hi])
        np.testing.assert_allclose(one.knn_score, batch.knn_score[lo:hi], rtol=1e-5)


def test_a_training_set_built_in_threads_is_the_same(shop: PurchaseLines, stage) -> None:
    labels = window_labels(shop, DAYS - WINDOW, DAYS)
    rows = np.arange(shop.n_customers)
    one = build_training_set(stage, rows, labels)
    threaded = dataclasses.replace(
        stage, config=dataclasses.replace(CONFIG, block_size=37, build_threads=3)
    )
    many = build_training_set(threaded, rows, labels)
    assert one.groups.size > 10 and int(one.labels.sum()) > 0
    np.testing.assert_array_equal(one.rows, many.rows)
    np.testing.assert_array_equal(one.groups, many.groups)
    np.testing.assert_array_equal(one.labels, many.labels)
    np.testing.assert_array_equal(one.features, many.features)


def test_one_customers_als_candidates_by_the_pruned_search_are_the_batch_ones(stage) -> None:
    from recommender.ranking.als_search import NormOrderedSearch

    searched = dataclasses.replace(stage, search=NormOrderedSearch(stage.als, first_block=8))
    batch = stage.candidates(np.arange(stage.snapshot.n_customers))
    assert (batch.matrix.data & ALS).any()
    for r in range(stage.snapshot.n_customers):
        one = searched.candidates(np.array([r]))
        assert (one.matrix != batch.matrix[r]).nnz == 0, r


def test_unknown_customer_gets_popular_candidates(stage) -> None:
    cands = stage.candidates(np.array([10**6]))
    assert cands.matrix.nnz >= 10
    assert not (cands.matrix.data & (HISTORY | ALS | KNN)).any()


# -- features -------------------------------------------------------------------


def test_features_never_read_the_cutoff_day_or_later(shop: PurchaseLines, stage) -> None:
    cutoff = stage.cutoff
    rows = np.arange(30)
    cands = stage.candidates(rows)
    before = pair_features(build_snapshot(shop, cutoff, recent_days=WINDOW), cands)
    # a line on the cutoff day and one after it, for pairs that are candidates
    c0, i0 = 0, int(cands.matrix[0].indices[0])
    c1, i1 = 1, int(cands.matrix[1].indices[-1])
    future = PurchaseLines(
        np.r_[shop.customer_rows, c0, c1],
        np.r_[shop.item_rows, i0, i1],
        np.r_[shop.days, cutoff, cutoff + 3],
        shop.n_customers,
        shop.n_items,
        item_category=shop.item_category,
    )
    after = pair_features(build_snapshot(future, cutoff, recent_days=WINDOW), cands)
    past_only = PurchaseLines(
        shop.customer_rows,
        shop.item_rows,
        shop.days,
        shop.n_customers,
        shop.n_items,
        item_category=shop.item_category,
    )
    np.testing.assert_array_equal(
        after, pair_features(build_snapshot(past_only, cutoff, recent_days=WINDOW), cands)
    )
    # the same line one day earlier does change them (the test can fail)
    earlier = dataclasses.replace(future, days=np.r_[shop.days, cutoff - 1, cutoff - 1])
    changed = pair_features(build_snapshot(earlier, cutoff, recent_days=WINDOW), cands)
    assert not np.array_equal(np.nan_to_num(changed, nan=-7), np.nan_to_num(after, nan=-7))
    assert before.shape == (cands.matrix.nnz, len(FEATURES))


def test_snapshot_statistics_by_hand() -> None:
    # customer 0 buys item 1 on days 0, 10, 30 (twice on day 10) and item 2 on day 30
    lines = PurchaseLines(
        np.array([0, 0, 0, 0, 0, 1, 1]),
        np.array([1, 1, 1, 1, 2, 1, 1]),
        np.array([0, 10, 10, 30, 30, 5, 25]),
        2,
        3,
        price=np.array([2.0, 2.0, 2.0, 2.0, 8.0, 2.0, 2.0]),
    )
    snap = build_snapshot(lines, 40, recent_days=28)
    p = snap.pair_index(np.array([0, 0, 1, 1]), np.array([1, 2, 1, 0]))
    assert p[3] == -1
    np.testing.assert_array_equal(snap.pair_days[p[:3]], [3, 1, 2])
    np.testing.assert_array_equal(snap.pair_last[p[:3]], [30, 30, 25])
    np.testing.assert_allclose(snap.pair_mean_gap[p[0]], 15.0)
    np.testing.assert_array_equal(snap.cust_baskets, [3, 2])
    # customer 0: 4 distinct purchases, 2 of them rebuys
    np.testing.assert_allclose(snap.cust_repeat_share, [0.5, 0.5])
    np.testing.assert_array_equal(snap.item_buyers, [0, 2, 1])
    # recent window [12, 40): item 1 by both, item 2 by customer 0
    np.testing.assert_array_equal(snap.item_recent, [0, 2, 1])
    np.testing.assert_allclose(snap.item_median_gap[1], 17.5)  # gaps 15 and 20
    np.testing.assert_allclose(snap.item_price, [np.nan, 2.0, 8.0])


def test_snapshot_round_trips_through_arrays(stage, tmp_path) -> None:
    path = tmp_path / "snapshot.npz"
    np.savez(path, **stage.snapshot.to_arrays())
    with np.load(path, allow_pickle=False) as stored:
        loaded = ShopSnapshot.from_arrays(dict(stored))
    cands = stage.candidates(np.arange(25))
    np.testing.assert_array_equal(
        pair_features(stage.snapshot, cands), pair_features(loaded, cands)
    )
    bad = stage.snapshot.to_arrays()
    bad["pair_days"] = bad["pair_days"][:-1]
    with pytest.raises(ValueError, match="pair_days"):
        ShopSnapshot.from_arrays(bad)


def test_one_customer_features_equal_the_batch_rows(stage) -> None:
    rows = np.arange(20)
    batch = stage.features(stage.candidates(rows))
    indptr = stage.candidates(rows).matrix.indptr
    one = stage.features(stage.candidates(np.array([13])))
    # the one-customer path sums kNN scores in another order: last bits differ
    np.testing.assert_allclose(one, batch[indptr[13] : indptr[14]], rtol=1e-5)


# -- the ranker -----------------------------------------------------------------


def test_saved_text_model_predicts_the_same(report, stage, tmp_path) -> None:
    ranker = report.ranker
    x = stage.features(stage.candidates(np.arange(30)))
    ranker.save(tmp_path, probe=x[:40])
    loaded = LTRRanker.load(tmp_path)
    assert loaded.features == FEATURES
    np.testing.assert_array_equal(loaded.predict(x), ranker.predict(x))
    assert (tmp_path / "ranker.txt").read_text().startswith("tree")


def test_load_rejects_a_corrupted_model(report, stage, tmp_path) -> None:
    x = stage.features(stage.candidates(np.arange(5)))
    text, meta = report.ranker.to_text(probe=x[:20])
    with pytest.raises(RankerStateError, match="corrupted"):
        LTRRanker.from_text(text[: len(text) // 3] + "\nnot a model", meta)
    other = text.replace("leaf_value=", "leaf_value=1", 1)
    with pytest.raises(RankerStateError, match="sha256"):
        LTRRanker.from_text(other, meta)
    # intact text whose probes were recorded by another model
    probe = {**meta["probe"], "predictions": [v + 1.0 for v in meta["probe"]["predictions"]]}
    with pytest.raises(RankerStateError, match="probe"):
        LTRRanker.from_text(text, {**meta, "probe": probe})
    with pytest.raises(RankerStateError, match="schema"):
        LTRRanker.from_text(text, {**meta, "schema": "other/9"})


def test_unfitted_ranker_and_bad_shapes() -> None:
    ranker = LTRRanker(FEATURES)
    with pytest.raises(NotFittedError):
        ranker.predict(np.zeros((2, len(FEATURES))))
    with pytest.raises(ValueError, match="feature matrix"):
        ranker.fit(np.zeros((3, 2)), np.zeros(3), np.array([3]))


def test_rank_customers_one_equals_batch_and_explore_drops_history(report, stage) -> None:
    rows = np.arange(30)
    items, scores = rank_customers(stage, report.ranker, rows, 10)
    one, _ = rank_customers(stage, report.ranker, rows[4:5], 10, num_threads=1)
    np.testing.assert_array_equal(one[0], items[4])
    explore, _ = rank_customers(stage, report.ranker, rows, 10, exclude_history=True)
    history = stage.snapshot.history_rows(rows)
    for r in range(rows.size):
        assert not set(explore[r][explore[r] >= 0]) & set(history[r].indices)
    assert np.all(np.diff(scores, axis=1)[np.isfinite(scores[:, 1:])] <= 0)


def test_generated_candidates_without_models(stage) -> None:
    cfg = CandidateConfig(n_als=5, n_knn=5)
    cands = generate_candidates(np.arange(5), stage.snapshot, config=cfg)
    assert not (cands.matrix.data & (ALS | KNN)).any()
    assert (cands.als_score == 0).all() and (cands.knn_score == 0).all()


# -- in a model version ------------------------------------------------------------


def _bundle_with_ranker(shop: PurchaseLines, stage, ranker, directory):
    """A version holding the stage's ALS and buy-again models and the ranker."""
    from recommender.data.ids import IdIndex
    from recommender.store.bundle import Catalog, save_bundle

    customers = IdIndex(np.array([f"c{i}" for i in range(shop.n_customers)]))
    items = IdIndex(np.array([f"i{i}" for i in range(shop.n_items)]))
    history = shop.before(stage.cutoff).line_matrix()
    probe = stage.features(stage.candidates(np.arange(4)))[:12]
    return save_bundle(
        directory,
        customers=customers,
        items=items,
        history=history,
        popularity=stage.snapshot.item_popularity().astype(np.float32),
        catalog=Catalog.empty(shop.n_items),
        manifest={"as_of": "2025-09-01T00:00:00", "serving": {"list": "ranker"}},
        als=stage.als,
        repurchase=stage.repurchase,
        ranker=(ranker, stage, probe),
    )


def test_a_saved_version_ranks_as_the_fitted_ranker_did(shop, report, stage, tmp_path) -> None:
    from recommender.answers import Answerer, Rules
    from recommender.store.bundle import load_bundle_dir

    path = _bundle_with_ranker(shop, stage, report.ranker, tmp_path)
    bundle = load_bundle_dir(path)
    assert bundle.served == "ranker" and bundle.ranker is not None
    rows = np.arange(60)
    want, want_scores = rank_customers(stage, report.ranker, rows, 10)
    got, got_scores = rank_customers(bundle.stage, bundle.ranker, rows, 10)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)
    # and the answering rule serves those lists, nothing hidden by default
    ranked = Answerer(bundle).rank_rows(rows, 10, Rules())
    np.testing.assert_array_equal(ranked.items, want)
    # the explore-only list hides every purchase, and says why it shows the rest
    a = Answerer(bundle)
    answer = a.for_customer("c3", 10, Rules())
    bought = set(a.history(3).tolist())
    assert any(p.item_row in bought for p in answer.picks)
    for p in answer.picks:
        if p.item_row in bought:
            assert "you b" in p.reason and "ago" in p.reason or "today" in p.reason, p.reason
    explore = a.for_customer("c3", 10, Rules(exclude_purchased=True))
    assert not {p.item_row for p in explore.picks} & bought


def test_a_damaged_ranker_file_fails_the_version(shop, report, stage, tmp_path) -> None:
    from recommender.store.artifacts import CorruptArtifactError
    from recommender.store.bundle import load_bundle_dir

    path = _bundle_with_ranker(shop, stage, report.ranker, tmp_path)
    text = (path / "ranker.txt").read_text()
    (path / "ranker.txt").write_text(text.replace("leaf_value=", "leaf_value=1", 1))
    with pytest.raises(CorruptArtifactError):
        load_bundle_dir(path, verify_hashes=False)  # caught by the model's own sha256


def test_a_version_without_a_ranker_serves_als(shop, stage, tmp_path) -> None:
    """Versions from before the ranker: no ``serving`` in the manifest, no ranker files."""
    from recommender.answers import Answerer, Rules
    from recommender.data.ids import IdIndex
    from recommender.store.bundle import Catalog, load_bundle_dir, save_bundle

    path = save_bundle(
        tmp_path,
        customers=IdIndex(np.array([f"c{i}" for i in range(shop.n_customers)])),
        items=IdIndex(np.array([f"i{i}" for i in range(shop.n_items)])),
        history=shop.before(stage.cutoff).line_matrix(),
        popularity=stage.snapshot.item_popularity().astype(np.float32),
        catalog=Catalog.empty(shop.n_items),
        manifest={"as_of": "2025-09-01T00:00:00"},
        als=stage.als,
        repurchase=stage.repurchase,
    )
    bundle = load_bundle_dir(path)
    assert bundle.served == "als" and bundle.ranker is None and bundle.explore == "als"
    a = Answerer(bundle)
    answer = a.for_customer("c3", 5, Rules())
    assert answer.strategy == "personalized" and len(answer.picks) == 5
    want, _ = stage.als.recommend(np.array([3]), bundle.history, k=5, exclude_seen=True)
    explore = a.for_customer("c3", 5, Rules(exclude_purchased=True))
    assert [p.item_row for p in explore.picks] == want[0].tolist()


def test_reasons_name_a_close_co_purchase_or_a_category_the_customer_buys(
    shop, report, stage, tmp_path
) -> None:
    from recommender.answers import CLOSE_NEIGHBOURS, Answerer, Rules
    from recommender.store.bundle import load_bundle_dir

    bundle = load_bundle_dir(_bundle_with_ranker(shop, stage, report.ranker, tmp_path))
    a = Answerer(bundle)
    sim = bundle.stage.knn.similarity_
    seen = set()
    for row in range(40):
        bought = set(a.history(row).tolist())
        for p in a.for_customer(f"c{row}", 10, Rules()).picks:
            seen.add(p.reason.split(" ")[0])
            if p.reason.startswith("often bought with"):
                partner = bundle.items.row(p.reason.removeprefix("often bought with "))
                lo, hi = sim.indptr[p.item_row], sim.indptr[p.item_row + 1]
                order = np.argsort(-sim.data[lo:hi], kind="stable")[:CLOSE_NEIGHBOURS]
                assert partner in bought and partner in set(sim.indices[lo:hi][order].tolist())
            elif p.item_row in bought:
                words = p.reason.removeprefix("due to rebuy: ")
                assert words.startswith(("you buy this about every", "you bought this once"))
    assert {"often", "you"} <= seen, seen


def test_the_ranker_step_shares_the_item_knn_baseline_only_on_the_same_counts(
    shop: PurchaseLines,
) -> None:
    from training import ranking
    from training.ranker_step import _shared_knn

    cut = DAYS - WINDOW
    counts = shop.before(cut).line_matrix()
    knn = ItemKNNRecommender(k=CONFIG.knn_neighbours).fit(counts)
    empty = sp.csr_matrix(counts.shape, dtype=np.float32)

    def split(c: sp.csr_matrix, fitted: ItemKNNRecommender | None) -> ranking.Split:
        return ranking.Split(None, c, empty, np.arange(3), None, item_knn=fitted)  # type: ignore[arg-type]

    assert _shared_knn(split(counts, knn), shop, cut, CONFIG) is knn
    weighted = counts.copy()
    weighted.data = weighted.data * 0.5  # a log whose rows are not all purchases of weight 1
    assert _shared_knn(split(weighted, knn), shop, cut, CONFIG) is None
    assert _shared_knn(split(counts, knn), shop, cut - 1, CONFIG) is None
    assert (
        _shared_knn(split(counts, ItemKNNRecommender(k=7).fit(counts)), shop, cut, CONFIG) is None
    )
    assert _shared_knn(split(counts, None), shop, cut, CONFIG) is None
