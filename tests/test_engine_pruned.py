"""The pruned exact ranking large catalogues use gives the answers of scoring every item.

Production switches it on from 20,000 items; here it is forced on for the
small trained shop and compared, request by request, with the full scan.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recommender.store.bundle import load_bundle
from serving.engine import Engine, Filters
from tests.test_serving import train_small_shop


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    shop = train_small_shop(tmp_path_factory.mktemp("pruned"))
    bundle = load_bundle(shop.models)
    # without the top-N table every known customer goes through the ranking
    bare = dataclasses.replace(bundle, topn_items=None, topn_scores=None)
    # a tiny first block, so that the bound really cuts the scan on 60 items
    return Engine(bare), Engine(bare, prune_min_items=0, prune_first_block=2), bare


def _same(a, b):
    assert [p.item_row for p in a] == [p.item_row for p in b]
    assert [p.reason for p in a] == [p.reason for p in b]
    np.testing.assert_allclose([p.score for p in a], [p.score for p in b], rtol=1e-5, atol=1e-6)


def test_pruning_is_on_only_when_asked(engines):
    full, pruned, _ = engines
    assert full._by_norm is None and pruned._by_norm is not None


@pytest.mark.parametrize("k", [1, 5, 20, 60])
@pytest.mark.parametrize(
    "filters",
    [
        Filters(),
        Filters(exclude_purchased=False),
        Filters(available_only=False),
        "one category",
        "excluded items",
    ],
    ids=["default", "keep-purchased", "unavailable-too", "category", "exclude-items"],
)
def test_known_customers_same_picks(engines, k, filters):
    full, pruned, bundle = engines
    if filters == "one category":
        filters = Filters(categories=[sorted(full.categories)[0]])
    elif filters == "excluded items":
        filters = Filters(exclude_items=list(bundle.items.ids_[:10]))
    for cid in bundle.customers.ids_[:60]:
        a = full.recommend(str(cid), None, k, filters)
        b = pruned.recommend(str(cid), None, k, filters)
        assert a[0] == b[0] == "personalized"
        _same(a[1], b[1])


def test_folded_in_and_batch_same_picks(engines):
    full, pruned, bundle = engines
    rng = np.random.default_rng(0)
    for _ in range(30):
        recent = [str(x) for x in rng.choice(bundle.items.ids_, size=3, replace=False)]
        a = full.recommend(None, recent, 10, Filters())
        b = pruned.recommend(None, recent, 10, Filters())
        assert a[0] == b[0] == "folded_in"
        _same(a[1], b[1])
    ids = [str(c) for c in bundle.customers.ids_[:40]] + ["nobody"]
    for (sa, pa), (sb, pb) in zip(
        full.recommend_batch(ids, 10, Filters()),
        pruned.recommend_batch(ids, 10, Filters()),
        strict=True,
    ):
        assert sa == sb
        _same(pa, pb)
