"""The pruned exact search large catalogues use gives the answers of scoring every item.

:class:`recommender.ranking.als_search.NormOrderedSearch` is switched on by the
answerer from 20,000 items; here it is forced on for the small trained shop
and compared, request by request, with the full scan.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recommender.answers import Answerer, Rules
from recommender.ranking.als import ALSRecommender
from recommender.ranking.als_search import NormOrderedSearch, scan_by_norm
from recommender.store.bundle import load_bundle
from tests.test_serving import train_small_shop


@pytest.fixture(scope="module")
def answerers(tmp_path_factory):
    shop = train_small_shop(tmp_path_factory.mktemp("pruned"))
    bundle = load_bundle(shop.models)
    # without the top-N table every known customer goes through the ranking
    bare = dataclasses.replace(bundle, topn_items=None, topn_scores=None)
    # a tiny first block, so that the bound really cuts the scan on 60 items
    return Answerer(bare), Answerer(bare, prune_min_items=0, prune_first_block=2), bare


def _same(a, b):
    assert [p.item_row for p in a] == [p.item_row for p in b]
    assert [p.reason for p in a] == [p.reason for p in b]
    np.testing.assert_allclose([p.score for p in a], [p.score for p in b], rtol=1e-5, atol=1e-6)


def test_pruning_is_on_only_when_asked(answerers):
    full, pruned, _ = answerers
    assert full.search is None and pruned.search is not None


@pytest.mark.parametrize("k", [1, 5, 20, 60])
@pytest.mark.parametrize(
    "filters",
    [
        Rules(),
        Rules(exclude_purchased=False),
        Rules(available_only=False),
        "one category",
        "excluded items",
    ],
    ids=["default", "keep-purchased", "unavailable-too", "category", "exclude-items"],
)
def test_known_customers_same_picks(answerers, k, filters):
    full, pruned, bundle = answerers
    if filters == "one category":
        filters = Rules(categories=[sorted(full.categories)[0]])
    elif filters == "excluded items":
        filters = Rules(exclude_items=list(bundle.items.ids_[:10]))
    for cid in bundle.customers.ids_[:60]:
        a = full.for_customer(str(cid), k, filters)
        b = pruned.for_customer(str(cid), k, filters)
        assert a.strategy == b.strategy == "personalized"
        _same(a.picks, b.picks)


def test_folded_in_and_batch_same_picks(answerers):
    full, pruned, bundle = answerers
    rng = np.random.default_rng(0)
    for _ in range(30):
        recent = [str(x) for x in rng.choice(bundle.items.ids_, size=3, replace=False)]
        a = full.for_recent(recent, 10)
        b = pruned.for_recent(recent, 10)
        assert a.strategy == b.strategy == "folded_in"
        _same(a.picks, b.picks)
    ids = [str(c) for c in bundle.customers.ids_[:40]] + ["nobody"]
    for a, b in zip(full.for_ids(ids, 10), pruned.for_ids(ids, 10), strict=True):
        assert a.strategy == b.strategy
        _same(a.picks, b.picks)


@pytest.mark.parametrize("k", [1, 7, 50])
def test_exact_ties_go_to_the_lower_item_row(k):
    """Small integer factors make every dot product exact and ties plentiful."""
    rng = np.random.default_rng(5)
    model = ALSRecommender(factors=6)
    model.item_factors_ = rng.integers(-2, 3, size=(3000, 6)).astype(np.float32)
    model.item_factors_[::5] *= 3  # a spread of norms, so the bound cuts the scan
    search = NormOrderedSearch(model, first_block=8)
    for _ in range(40):
        u = rng.integers(-3, 4, size=6).astype(np.float32)
        allowed = rng.random(3000) > 0.3
        items, scores = search.top_k(u, allowed, k)
        full = (model.item_factors_ @ u).astype(np.float64)
        full[~allowed] = -np.inf
        want = np.lexsort((np.arange(3000), -full))[:k]
        assert items.tolist() == want.tolist()
        assert scores.tolist() == full[want].tolist()


@pytest.mark.parametrize("k", [1, 7, 50])
def test_a_block_of_its_own_in_norm_order_gives_exact_ties_too(k):
    """``scan_by_norm`` over one category's block, with the mask in the block's
    own order (what a category filter searches), ties to the lower item row."""
    rng = np.random.default_rng(6)
    y = rng.integers(-2, 3, size=(3000, 6)).astype(np.float32)
    y[::5] *= 3
    rows = np.sort(rng.choice(3000, size=700, replace=False))  # one category's items
    norms = np.sqrt(np.einsum("ij,ij->i", y, y, dtype=np.float64))
    by_norm = rows[np.argsort(-norms[rows], kind="stable")]
    factors, neg_norms = np.ascontiguousarray(y[by_norm]), -norms[by_norm]
    for _ in range(40):
        u = rng.integers(-3, 4, size=6).astype(np.float32)
        keep = rng.random(len(rows)) > 0.3
        args = (u, factors, neg_norms, by_norm, keep, int(keep.sum()), k)
        items, scores = scan_by_norm(*args, first_block=8, in_order=True)
        full = np.full(3000, -np.inf)
        full[by_norm[keep]] = (y[by_norm[keep]] @ u).astype(np.float64)
        want = np.lexsort((np.arange(3000), -full))[: min(k, int(keep.sum()))]
        assert items.tolist() == want.tolist()
        assert scores.tolist() == full[want].tolist()
