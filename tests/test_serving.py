"""The serving app end to end, on a small shop trained with the real pipeline.

Every test runs the real app with ``with TestClient(create_app(...))`` so the
lifespan loads the published version, and checks what the answers contain
(picks, filters, strategies, reasons, timing figures), not only status codes.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from recommender.data.synthetic import SyntheticShop, generate_shop, write_shop
from recommender.store.artifacts import current_version, publish
from recommender.store.bundle import Bundle, load_bundle
from serving.app import create_app
from serving.settings import ServingSettings

ROOT = Path(__file__).resolve().parents[1]
N_CUSTOMERS, N_ITEMS = 300, 60


@dataclass
class TrainedShop:
    """A generated shop and the models directory trained on it."""

    shop: SyntheticShop
    models: Path
    version: str


def train_small_shop(
    directory: Path,
    *,
    seed: int = 0,
    do_publish: bool = True,
    preset: str = "demo",
    n_customers: int = N_CUSTOMERS,
    n_items: int = N_ITEMS,
) -> TrainedShop:
    """Generate a 300-customer, 60-item shop and train it with the real pipeline.

    Every component is built (ALS, precomputed top-N, next-purchase timing,
    buy-again, catalog with categories and a few unavailable items) in about
    two seconds. With ``do_publish=False`` the version is written into
    ``directory/models`` beside the published one but ``current`` is left alone.
    """
    # Imported here: the serving tests must not pull `training` into every module.
    from training.config import ALSConfig, TrainConfig
    from training.pipeline import train

    shop = generate_shop(preset, n_customers=n_customers, n_items=n_items, seed=seed)
    paths = write_shop(shop, directory / f"shop-{seed}")
    cfg = TrainConfig(
        top_n=20,
        als=ALSConfig(factors=8, iterations=5),
        max_eval_customers=n_customers,
        run_baselines=False,
        seed=seed,
    )
    result = train(
        paths["transactions"],
        items_path=paths["items"],
        models_dir=directory / "models",
        config=cfg,
        do_publish=do_publish,
        say=lambda msg: None,
    )
    return TrainedShop(shop, directory / "models", result.version)


def settings(models: Path, **kw) -> ServingSettings:
    return ServingSettings(models_dir=models, reload_interval_s=0, **kw)


pytestmark = pytest.mark.usefixtures("thread_limits_restored")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TrainedShop:
    return train_small_shop(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def bundle(trained) -> Bundle:
    return load_bundle(trained.models)


@pytest.fixture(scope="module")
def client(trained) -> Iterator[TestClient]:
    with TestClient(create_app(settings(trained.models))) as c:
        yield c


@pytest.fixture
def models_copy(trained, tmp_path) -> Path:
    """A private copy of the models directory for tests that publish into it."""
    dst = tmp_path / "models"
    shutil.copytree(trained.models, dst)
    return dst


def ids(items: list[dict]) -> list[str]:
    return [i["item_id"] for i in items]


def history_ids(bundle: Bundle, customer_id: str) -> set[str]:
    row = bundle.customers.row(customer_id)
    h = bundle.history
    return {bundle.items.id(int(j)) for j in h.indices[h.indptr[row] : h.indptr[row + 1]]}


def repurchase_ids(bundle: Bundle) -> set[str]:
    mask = np.asarray(bundle.repurchase.is_repurchase_item_, dtype=bool)
    return {bundle.items.id(int(j)) for j in np.flatnonzero(mask)}


def available_ids(bundle: Bundle) -> set[str]:
    return {bundle.items.id(int(j)) for j in np.flatnonzero(bundle.catalog.available)}


def busy_customers(bundle: Bundle, n: int = 20) -> list[str]:
    """Customers with several distinct items in their history, most first."""
    counts = np.diff(bundle.history.indptr)
    rows = np.argsort(-counts, kind="stable")[:n]
    return [bundle.customers.id(int(r)) for r in rows]


def assert_same_ranking(got: list[dict], expected: list[dict], tol: float = 1e-4) -> None:
    """The same picks in the same order; only near-equal scores may trade places.

    Two code paths (precomputed top-N at training, exact scoring at serving)
    compute the same scores with different float32 summation orders.
    """
    assert len(got) == len(expected), (ids(got), ids(expected))
    for g, e in zip(got, expected, strict=True):
        if g["item_id"] != e["item_id"]:
            assert abs(g["score"] - e["score"]) <= tol, (ids(got), ids(expected))


def assert_error(resp, *statuses: int) -> str:
    """A handled error: one of ``statuses``, JSON with a non-empty ``detail`` message."""
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    body = resp.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body["detail"]


# -- the fixture itself ------------------------------------------------------------


def test_the_trained_shop_has_what_the_tests_rely_on(bundle):
    assert bundle.als is not None and bundle.topn_items is not None
    assert bundle.timing is not None and bundle.repurchase is not None
    assert bundle.catalog.has_categories
    assert 0 < int((~bundle.catalog.available).sum()) < bundle.n_items
    assert 0 < len(repurchase_ids(bundle)) < bundle.n_items


# -- recommendations for a customer ------------------------------------------------


def test_known_customer_gets_k_personalized_picks_with_reasons(client, trained, bundle):
    for cid in busy_customers(bundle, 10):
        r = client.get(f"/v1/customers/{cid}/recommendations", params={"k": 7})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["customer_id"] == cid and body["strategy"] == "personalized"
        assert body["model_version"] == trained.version
        items = body["items"]
        assert len(items) == 7 and len(set(ids(items))) == 7
        assert [i["rank"] for i in items] == list(range(1, 8))
        scores = [i["score"] for i in items]
        assert scores == sorted(scores, reverse=True)
        titles = {bundle.catalog.title[bundle.items.row(i)] for i in history_ids(bundle, cid)}
        for it in items:
            row = bundle.items.row(it["item_id"])
            assert row is not None
            assert it["title"] == bundle.catalog.title[row]
            assert it["category"] == bundle.catalog.category[row]
            reason = it["reason"]
            assert reason in ("due to rebuy", "matches your taste") or reason.startswith(
                "similar to "
            ), reason
            if reason.startswith("similar to "):
                # the reason names something this customer bought
                assert reason.removeprefix("similar to ") in titles, (reason, titles)


def test_default_k_is_ten(client, bundle):
    cid = busy_customers(bundle, 1)[0]
    assert len(client.get(f"/v1/customers/{cid}/recommendations").json()["items"]) == 10


def test_unknown_customer_gets_popular_items_not_404(client, bundle):
    r = client.get("/v1/customers/never-seen-42/recommendations", params={"k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "popular" and body["customer_id"] == "never-seen-42"
    got = ids(body["items"])
    # the most popular available items, in order
    order = np.argsort(-bundle.popularity, kind="stable")
    expected = [bundle.items.id(int(j)) for j in order if bundle.catalog.available[j]][:5]
    assert got == expected
    for it in body["items"]:
        assert it["reason"] == f"popular in {it['category']}"


def test_category_filter_is_respected_and_keeps_the_ranking(client, bundle):
    cats = sorted(set(bundle.catalog.category) - {""})
    for cid in busy_customers(bundle, 5):
        full = client.get(f"/v1/customers/{cid}/recommendations", params={"k": 1000}).json()
        for cat in cats[:3]:
            r = client.get(f"/v1/customers/{cid}/recommendations", params={"k": 3, "category": cat})
            assert r.status_code == 200, r.text
            got = r.json()["items"]
            assert got and all(i["category"] == cat for i in got)
            # the same order as the unfiltered ranking, restricted to the category
            assert_same_ranking(got, [i for i in full["items"] if i["category"] == cat][:3])
        two = client.get(
            f"/v1/customers/{cid}/recommendations",
            params={"k": 1000, "category": cats[:2]},
        ).json()["items"]
        assert {i["category"] for i in two} == set(cats[:2])


def test_exclude_items_removes_them_and_keeps_the_rest_in_order(client, bundle):
    cid = busy_customers(bundle, 1)[0]
    url = f"/v1/customers/{cid}/recommendations"
    before = ids(client.get(url, params={"k": 6}).json()["items"])
    r = client.get(url, params={"k": 6, "exclude_items": before[:2] + ["not-an-item"]})
    assert r.status_code == 200, r.text
    after = ids(r.json()["items"])
    assert not set(before[:2]) & set(after)
    assert after[:4] == before[2:] and len(after) == 6


def test_exclude_purchased_hides_history_except_repurchase_items(client, bundle):
    rebuy, avail = repurchase_ids(bundle), available_ids(bundle)
    checked_rebuy = 0
    for cid in busy_customers(bundle, 10):
        hist = history_ids(bundle, cid)
        url = f"/v1/customers/{cid}/recommendations"
        got = set(ids(client.get(url, params={"k": 1000}).json()["items"]))
        # everything a customer may be shown, exactly: available, minus one-off purchases
        assert got == avail - (hist - rebuy)
        checked_rebuy += len(got & hist)
        shown = set(
            ids(client.get(url, params={"k": 1000, "exclude_purchased": False}).json()["items"])
        )
        assert shown == avail and hist & avail <= shown
        # the small-k path (precomputed top-N) follows the same rule
        small = set(ids(client.get(url, params={"k": 5}).json()["items"]))
        assert not small & (hist - rebuy)
    assert checked_rebuy > 0, "no repurchase item from a history was ever shown"


def test_unavailable_items_are_hidden_unless_asked_for(client, bundle):
    avail = available_ids(bundle)
    unavailable = set(bundle.items.ids_) - avail
    url = "/v1/customers/never-seen/recommendations"
    default = client.get(url, params={"k": 1000}).json()["items"]
    assert set(ids(default)) == avail and all(i["available"] for i in default)
    only = client.get(url, params={"k": 1000, "available_only": True}).json()["items"]
    assert set(ids(only)) == avail
    everything = client.get(url, params={"k": 1000, "available_only": False}).json()["items"]
    assert set(ids(everything)) == avail | unavailable
    assert {i["item_id"] for i in everything if not i["available"]} == unavailable


# -- recent items (folded in) ----------------------------------------------------------


def test_recent_items_are_folded_in_and_relate_to_them(client, trained, bundle):
    group = dict(zip(trained.shop.truth["item_ids"], trained.shop.truth["item_group"], strict=True))
    popular = ids(
        client.get("/v1/customers/nobody/recommendations", params={"k": 5}).json()["items"]
    )
    own, pop_own = [], []
    for g in sorted(set(group.values())):
        members = [i for i in bundle.items.ids_ if group[i] == g]
        if len(members) < 8:
            continue  # too few items left in the group once the recent ones are hidden
        recent = members[:2]
        r = client.post("/v1/recommendations", json={"recent_items": recent, "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["strategy"] == "folded_in" and body["customer_id"] is None
        assert body["ignored_items"] == []
        picks = ids(body["items"])
        assert len(picks) == 5 == len(set(picks))
        assert not set(picks) & set(recent), "a just-seen item was recommended back"
        assert picks != popular
        titles = {bundle.catalog.title[bundle.items.row(i)] for i in recent}
        for it in body["items"]:
            assert it["reason"].removeprefix("similar to ") in titles, it["reason"]
        own.append(np.mean([group[i] == g for i in picks]))
        pop_own.append(np.mean([group[i] == g for i in popular]))
    assert len(own) >= 3
    # picks come from the recent items' taste group, unlike the popular list
    assert np.mean(own) >= 0.6 and np.mean(own) > np.mean(pop_own) + 0.3, (own, pop_own)


def test_unknown_recent_items_are_ignored_and_listed(client, bundle):
    item = bundle.items.id(0)
    r = client.post(
        "/v1/recommendations", json={"recent_items": [item, "nope-1", "nope-2"], "k": 3}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "folded_in" and body["ignored_items"] == ["nope-1", "nope-2"]
    r = client.post("/v1/recommendations", json={"recent_items": ["nope-1"], "k": 3})
    body = r.json()
    assert body["strategy"] == "popular" and body["ignored_items"] == ["nope-1"]
    assert len(body["items"]) == 3


def test_post_without_recent_items(client, bundle):
    cid = busy_customers(bundle, 1)[0]
    known = client.post("/v1/recommendations", json={"customer_id": cid, "k": 4}).json()
    single = client.get(f"/v1/customers/{cid}/recommendations", params={"k": 4}).json()
    assert known["strategy"] == "personalized" and ids(known["items"]) == ids(single["items"])
    anon = client.post("/v1/recommendations", json={}).json()
    assert anon["strategy"] == "popular" and len(anon["items"]) == 10


def test_recent_items_of_a_known_customer_add_to_the_history(client, bundle):
    cid = busy_customers(bundle, 1)[0]
    hist = history_ids(bundle, cid)
    extra = next(i for i in bundle.items.ids_ if i not in hist)
    r = client.post(
        "/v1/recommendations",
        json={"customer_id": cid, "recent_items": [extra], "k": 1000, "category": None},
    )
    body = r.json()
    assert body["strategy"] == "folded_in" and body["customer_id"] == cid
    got = set(ids(body["items"]))
    assert extra not in got and not got & (hist - repurchase_ids(bundle))


# -- batch -----------------------------------------------------------------------------


def test_batch_answers_each_customer_in_order_like_single_calls(client, bundle):
    a, b, c = busy_customers(bundle, 3)
    customers = [a, "stranger", b, a, c]
    r = client.post("/v1/recommendations/batch", json={"customer_ids": customers, "k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["customer_id"] for x in results] == customers
    assert [x["strategy"] for x in results] == [
        "personalized",
        "popular",
        "personalized",
        "personalized",
        "personalized",
    ]
    for cid, res in zip(customers, results, strict=True):
        single = client.get(f"/v1/customers/{cid}/recommendations", params={"k": 4}).json()
        assert_same_ranking(res["items"], single["items"])
        if ids(res["items"]) == ids(single["items"]):
            assert [i["reason"] for i in res["items"]] == [i["reason"] for i in single["items"]]


def test_batch_applies_the_filters(client, bundle):
    cat = sorted(set(bundle.catalog.category) - {""})[0]
    customers = busy_customers(bundle, 4) + ["stranger"]
    r = client.post(
        "/v1/recommendations/batch",
        json={"customer_ids": customers, "k": 3, "category": [cat]},
    )
    for res in r.json()["results"]:
        assert len(res["items"]) == 3 and all(i["category"] == cat for i in res["items"])


def test_batch_over_the_limit_is_refused(trained):
    with TestClient(create_app(settings(trained.models, max_batch=3))) as c:
        ok = c.post("/v1/recommendations/batch", json={"customer_ids": ["a", "b", "c"]})
        assert ok.status_code == 200
        r = c.post("/v1/recommendations/batch", json={"customer_ids": ["a", "b", "c", "d"]})
        assert "at most 3" in assert_error(r, 422)
    with TestClient(create_app(settings(trained.models))) as c:
        r = c.post("/v1/recommendations/batch", json={"customer_ids": ["x"] * 1001})
        assert_error(r, 422)
    # above the API's cap a setting would do nothing: refused, naming the limit
    with pytest.raises(ValueError, match="1000"):
        settings(trained.models, max_batch=5000)


# -- buy again and next purchase -----------------------------------------------------


def test_buy_again_lists_repurchase_items_from_the_history(client, bundle):
    rebuy = repurchase_ids(bundle)
    seen = 0
    for cid in busy_customers(bundle, 10):
        r = client.get(f"/v1/customers/{cid}/buy-again", params={"within_days": 30, "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["customer_id"] == cid and body["within_days"] == 30
        items = body["items"]
        assert len(items) <= 5 and len(set(ids(items))) == len(items)
        assert set(ids(items)) <= rebuy & history_ids(bundle, cid)
        probs = [i["probability"] for i in items]
        assert probs == sorted(probs, reverse=True)
        for it in items:
            assert 0.0 <= it["probability"] <= 1.0
            assert it["days_since_last"] >= 0 and it["reason"]
            assert it["cycle_days"] is None or it["cycle_days"] > 0
        # a longer window can only make each rebuy more likely
        longer = client.get(f"/v1/customers/{cid}/buy-again", params={"within_days": 90, "k": 50})
        p90 = {i["item_id"]: i["probability"] for i in longer.json()["items"]}
        for it in items:
            assert p90[it["item_id"]] >= it["probability"] - 1e-12
        seen += len(items)
    assert seen > 0


def test_buy_again_for_an_unknown_customer_is_404_with_a_message(client):
    r = client.get("/v1/customers/nobody-here/buy-again")
    assert "nobody-here" in assert_error(r, 404)


def _due(client, **params) -> list[dict]:
    r = client.get("/v1/customers/due", params={"format": "json", **params})
    assert r.status_code == 200, r.text
    return r.json()["customers"]


def test_next_purchase_figures_are_consistent_and_the_date_matches_the_median(client):
    as_of = client.get("/v1/model").json()["as_of"]  # the last day of the log
    last_day = pd.Timestamp(as_of)
    assert last_day.strftime("%Y-%m-%d") == as_of
    url = "/v1/customers/{}/next-purchase"
    due = _due(client, within_days=30, min_probability=0.3, limit=15)
    assert len(due) >= 5, "too few customers likely to buy within 30 days"
    dated = 0
    for row in due:
        cid = row["customer_id"]
        r = client.get(url.format(cid), params={"horizon_days": 30})
        assert r.status_code == 200, r.text
        n = r.json()
        assert n["customer_id"] == cid and n["horizon_days"] == 30
        assert 0.0 <= n["p_purchase"] <= 1.0
        if n["p_active"] is not None:  # null for a one-time buyer under BG/NBD
            assert 0.0 <= n["p_active"] <= 1.0
            assert n["p_purchase"] <= n["p_active"] + 1e-9  # buying needs being active
        assert n["expected_purchases"] >= n["p_purchase"] - 1e-9  # E[N] >= P(N >= 1)
        # the due list and the customer's own figures agree
        assert n["p_purchase"] == pytest.approx(row["p_purchase"], abs=1e-6)
        # `as_of` is the last day of data on every surface; days count after it
        assert n["as_of"] == as_of
        # a longer horizon can only raise the chance and the expected count
        longer = client.get(url.format(cid), params={"horizon_days": 90}).json()
        assert longer["p_purchase"] >= n["p_purchase"] - 1e-12
        assert longer["expected_purchases"] >= n["expected_purchases"] - 1e-12
        med = n["median_days_to_next"]
        if med is None:
            assert n["next_purchase_date"] is None and n["note"]
            continue
        dated += 1
        assert med > 0 and med == int(med) and n["note"] is None
        assert n["next_purchase_date"] == (last_day + pd.Timedelta(days=med)).date().isoformat()
        # the date is the first day by which a purchase is more likely than not
        at_median = client.get(url.format(cid), params={"horizon_days": med}).json()
        assert at_median["p_purchase"] >= 0.5
        if med > 1:
            before = client.get(url.format(cid), params={"horizon_days": med - 1}).json()
            assert before["p_purchase"] < 0.5
    assert dated >= 3


def test_next_purchase_of_a_lapsed_customer_has_no_date_but_a_note(client, bundle):
    lapsed = None
    for cid in bundle.customers.ids_:
        n = client.get(f"/v1/customers/{cid}/next-purchase").json()
        if n["median_days_to_next"] is None:
            lapsed = n
            break
    assert lapsed is not None, "no lapsed customer in the shop"
    assert lapsed["next_purchase_date"] is None
    assert lapsed["note"].startswith("No likely date") and lapsed["note"] in lapsed["summary"]
    year = client.get(f"/v1/customers/{lapsed['customer_id']}/next-purchase",
                      params={"horizon_days": 365}).json()  # fmt: skip
    assert year["p_purchase"] < 0.5  # no date: a purchase within a year is less likely than not
    assert 0.0 <= lapsed["p_purchase"] <= (lapsed["p_active"] or 1.0) <= 1.0


def test_next_purchase_for_an_unknown_customer_is_404(client):
    assert "ghost" in assert_error(client.get("/v1/customers/ghost/next-purchase"), 404)


def test_due_list_as_csv_and_json_agree(client):
    rows = _due(client, within_days=30, min_probability=0.2, limit=25)
    assert 0 < len(rows) <= 25
    probs = [r["p_purchase"] for r in rows]
    assert probs == sorted(probs, reverse=True) and min(probs) >= 0.2
    r = client.get(
        "/v1/customers/due", params={"within_days": 30, "min_probability": 0.2, "limit": 25}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert [t["customer_id"] for t in table] == [x["customer_id"] for x in rows]
    assert set(table[0]) == {
        "customer_id",
        "p_purchase",
        "p_active",
        "expected_purchases",
        "median_days_to_next",
        "next_purchase_date",
        "expected_order_value",
        "expected_spend",
        "clv",
    }
    assert [float(t["p_purchase"]) for t in table] == probs
    # no date is null in JSON, as in next-purchase; a date is an ISO date
    everyone = _due(client, within_days=30, min_probability=0.0, limit=1000)
    for row in everyone:
        date = row["next_purchase_date"]
        assert date is None or pd.Timestamp(date).isoformat().startswith(date)
    fewer = _due(client, within_days=30, min_probability=0.2, limit=3)
    assert fewer == rows[:3]
    assert len(_due(client, within_days=30, min_probability=0.9)) <= len(rows)


# -- similar items ---------------------------------------------------------------------


def test_similar_items_exclude_the_item_itself(client, bundle):
    for row in range(0, bundle.n_items, 7):
        item = bundle.items.id(row)
        r = client.get(f"/v1/items/{item}/similar", params={"k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["item_id"] == item
        got = ids(body["items"])
        assert len(got) == 5 == len(set(got)) and item not in got
        sims = [i["similarity"] for i in body["items"]]
        assert sims == sorted(sims, reverse=True)
        assert all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in sims)
    everything = client.get(f"/v1/items/{bundle.items.id(0)}/similar", params={"k": 1000})
    assert len(everything.json()["items"]) == bundle.n_items - 1


def test_similar_items_of_an_unknown_item_is_404_with_a_message(client):
    r = client.get("/v1/items/NO-SUCH-SKU/similar")
    detail = assert_error(r, 404)
    assert "NO-SUCH-SKU" in detail and "not in model version" in detail


# -- model, health, metrics, page -------------------------------------------------------


def test_model_info_shows_the_version_and_its_metrics(client, trained):
    r = client.get("/v1/model")
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["version"] == trained.version == current_version(trained.models)
    assert m["components"] == {
        "als": True, "topn": True, "timing": True, "repurchase": True, "spend": True,
        "health": True, "ranker": False,  # the small shop serves ALS (the ranker lost)
    }  # fmt: skip
    assert m["data"]["customers"] <= N_CUSTOMERS and m["data"]["items"] == N_ITEMS
    ndcg = m["metrics"]["ranking"]["als"]["ndcg@10"]
    assert 0.0 < ndcg <= 1.0
    assert "timing" in m["metrics"] and "buy_again" in m["metrics"]
    assert m["config"]["als"]["factors"] == 8
    assert m["reloads"]["version"] == trained.version and m["reloads"]["reloads_ok"] >= 1


def test_health_and_readiness(client, trained):
    assert client.get("/healthz").json() == {
        "status": "ok",
        "version": None,
        "detail": None,
        "fallback_from": None,
    }
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["version"] == trained.version


def test_metrics_count_requests_per_route_and_show_the_model_version(trained):
    with TestClient(create_app(settings(trained.models))) as c:
        for _ in range(3):
            assert c.get("/v1/customers/someone/recommendations").status_code == 200
        assert c.get("/v1/items/nothing/similar").status_code == 404
        assert c.get("/v1/customers/someone/recommendations?k=0").status_code == 422
        # refused before routing: no route can hold a control character
        assert c.get("/v1/customers/a%00b/recommendations").status_code == 422
        text = c.get("/metrics").text
    counts: dict[tuple[str, str, str], float] = {}
    info: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "encore_requests_total":
                counts[(s.labels["route"], s.labels["method"], s.labels["status"])] = s.value
            if s.name == "encore_model_info":
                info[s.labels["version"]] = s.value
    assert counts[("/v1/customers/{customer_id}/recommendations", "GET", "200")] == 3
    assert counts[("/v1/items/{item_id}/similar", "GET", "404")] == 1
    assert counts[("/v1/customers/{customer_id}/recommendations", "GET", "422")] == 1
    assert counts[("unmatched", "GET", "422")] == 1
    assert info == {trained.version: 1.0}


def test_the_marketers_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/v1/customers/due" in r.text and "<html" in r.text.lower()
    # the page links to the served version's training report, which the API names
    assert "report_url" in r.text
    assert client.get("/v1/model").json()["report_url"] == "/v1/model/report"
    # and shows the shop's repeat-purchase health from the API's figures
    assert "/v1/shop/metrics" in r.text and "repurchase_rate" in r.text
    months = client.get("/v1/shop/metrics").json()["months"]
    assert months and {"repurchase_rate", "average_order_value"} <= set(months[-1])


# -- bad requests: 4xx with a JSON message, never 500 --------------------------------------


@pytest.mark.parametrize(
    "path, params",
    [
        ("/v1/customers/c1/recommendations", {"k": 0}),
        ("/v1/customers/c1/recommendations", {"k": 1001}),
        ("/v1/customers/c1/recommendations", {"k": "abc"}),
        ("/v1/customers/c1/recommendations", {"k": "1.5"}),
        ("/v1/customers/c1/recommendations", {"exclude_purchased": "maybe"}),
        ("/v1/customers/" + "x" * 257 + "/recommendations", {}),
        ("/v1/customers/a%00b/recommendations", {}),  # control characters
        ("/v1/customers/tab%09in/recommendations", {}),
        ("/v1/customers/%20padded/recommendations", {}),  # the loader strips ids
        ("/v1/customers/padded%20/buy-again", {}),
        ("/v1/customers/c1/buy-again", {"within_days": 0}),
        ("/v1/customers/c1/buy-again", {"within_days": "nan"}),
        ("/v1/customers/c1/next-purchase", {"horizon_days": -1}),
        ("/v1/customers/c1/next-purchase", {"horizon_days": "inf"}),
        ("/v1/customers/c1/next-purchase", {"horizon_days": 3651}),
        ("/v1/customers/due", {"format": "xml"}),
        ("/v1/customers/due", {"min_probability": 1.5}),
        ("/v1/customers/due", {"limit": 0}),
        ("/v1/items/" + "i" * 300 + "/similar", {}),
        ("/v1/items/SKU-1/similar", {"k": 0}),
        ("/v1/items/SKU-1/similar", {"k": "lots"}),
    ],
)
def test_invalid_query_is_a_422_with_a_message(client, path, params):
    assert_error(client.get(path, params=params), 422)


@pytest.mark.parametrize("cid", ["caf\u00e9", "a b", "a;drop", "<script>"])
def test_unusual_but_valid_unknown_ids_get_popular_items_or_a_404(client, cid):
    r = client.get(f"/v1/customers/{cid}/recommendations", params={"k": 3})
    assert r.status_code == 200 and r.json()["customer_id"] == cid
    assert r.json()["strategy"] == "popular"
    assert repr(cid) in assert_error(client.get(f"/v1/customers/{cid}/buy-again"), 404)


@pytest.mark.parametrize("category", ["Nope", "", "books"])
def test_unknown_category_is_a_400_naming_it_and_the_known_ones(client, category):
    r = client.get("/v1/customers/c1/recommendations", params={"category": category})
    detail = assert_error(r, 400)
    assert f"unknown category {category!r}" in detail and "Books" in detail
    for url, body in [
        ("/v1/recommendations", {"recent_items": [], "category": [category]}),
        ("/v1/recommendations/batch", {"customer_ids": ["c1"], "category": [category]}),
    ]:
        assert "unknown category" in assert_error(client.post(url, json=body), 400)


@pytest.mark.parametrize(
    "url, content",
    [
        ("/v1/recommendations", b"{not json"),
        ("/v1/recommendations", b"\xff\xfe\x00"),
        ("/v1/recommendations", b"[]"),
        ("/v1/recommendations", b'"text"'),
        ("/v1/recommendations", b'{"k": 0}'),
        ("/v1/recommendations", b'{"k": "ten"}'),
        ("/v1/recommendations", b'{"recent_items": "SKU-1"}'),
        ("/v1/recommendations", b'{"recent_items": ["bad\\u0000id"]}'),
        ("/v1/recommendations", b'{"recent_items": [" padded"]}'),
        ("/v1/recommendations", b'{"customer_id": ""}'),
        ("/v1/recommendations", b'{"exclude_purchased": "perhaps"}'),
        # typed JSON: no coercion of booleans to numbers, numbers to booleans or text
        ("/v1/recommendations", b'{"k": true}'),
        ("/v1/recommendations", b'{"k": "5"}'),
        ("/v1/recommendations", b'{"available_only": 0}'),
        ("/v1/recommendations/batch", b'{"customer_ids": ["a"], "exclude_purchased": 1}'),
        ("/v1/recommendations/batch", b"{"),
        ("/v1/recommendations/batch", b"{}"),
        ("/v1/recommendations/batch", b'{"customer_ids": []}'),
        ("/v1/recommendations/batch", b'{"customer_ids": [null]}'),
        ("/v1/recommendations/batch", b'{"customer_ids": ["ok"], "k": 1001}'),
    ],
)
def test_bad_json_bodies_are_4xx_with_a_message(client, url, content):
    r = client.post(url, content=content, headers={"content-type": "application/json"})
    assert_error(r, 400, 422)


def test_too_many_recent_items_is_refused(client):
    r = client.post("/v1/recommendations", json={"recent_items": ["a"] * 501})
    assert_error(r, 422)


def test_unknown_routes_and_methods_answer_json(client):
    assert_error(client.get("/v2/nothing"), 404)
    assert_error(client.delete("/v1/model"), 405)


# -- no model published --------------------------------------------------------------------

QUERIES = [
    ("GET", "/v1/customers/c1/recommendations", None),
    ("POST", "/v1/recommendations", {"recent_items": ["SKU-1"]}),
    ("POST", "/v1/recommendations/batch", {"customer_ids": ["c1"]}),
    ("GET", "/v1/customers/c1/buy-again", None),
    ("GET", "/v1/customers/c1/next-purchase", None),
    ("GET", "/v1/customers/due", None),
    ("GET", "/v1/items/SKU-1/similar", None),
    ("GET", "/v1/model", None),
]


def test_without_a_model_the_app_is_alive_not_ready_and_says_how_to_train(tmp_path):
    empty = tmp_path / "models"
    with TestClient(create_app(settings(empty))) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "not ready"
        assert str(empty) in r.json()["detail"]
        for method, url, body in QUERIES:
            r = c.request(method, url, json=body)
            detail = assert_error(r, 503)
            assert "encore train" in detail and str(empty) in detail, (url, detail)
        assert c.get("/").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_a_model_published_after_start_is_served_after_a_reload(trained, tmp_path):
    models = tmp_path / "models"
    with TestClient(create_app(settings(models, admin_token="s3cret"))) as c:
        assert c.get("/readyz").status_code == 503
        shutil.copytree(trained.models, models)
        r = c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, r.text
        assert c.get("/readyz").json()["version"] == trained.version
        assert c.get("/v1/customers/c1/recommendations").status_code == 200


# -- admin reload ------------------------------------------------------------------------------


def test_admin_reload_is_disabled_without_a_token(client):
    detail = assert_error(client.post("/v1/admin/reload"), 403)
    assert "ENCORE_ADMIN_TOKEN" in detail
    r = client.post("/v1/admin/reload", headers={"Authorization": "Bearer anything"})
    assert_error(r, 403)


def test_admin_reload_checks_the_token_and_loads_a_new_version(trained, models_copy, tmp_path):
    with TestClient(create_app(settings(models_copy, admin_token="s3cret"))) as c:
        assert c.get("/v1/model").json()["version"] == trained.version
        assert_error(c.post("/v1/admin/reload"), 401)
        assert_error(c.post("/v1/admin/reload", headers={"Authorization": "s3cret"}), 401)
        wrong = c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cre"})
        assert_error(wrong, 403)
        other = train_small_shop(tmp_path / "other", seed=1, do_publish=False)
        # trained into its own directory: move the version next to the served one
        shutil.copytree(other.models / other.version, models_copy / other.version)
        publish(models_copy, other.version)
        # polling is off, so nothing changes until the reload is asked for
        assert c.get("/v1/model").json()["version"] == trained.version
        r = c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == other.version and other.version in r.json()["detail"]
        assert c.get("/v1/model").json()["version"] == other.version
        cid = other.shop.transactions["customer_id"].iloc[0]
        recs = c.get(f"/v1/customers/{cid}/recommendations").json()
        assert recs["model_version"] == other.version and recs["strategy"] == "personalized"
        # a corrupt version is refused with 409 and the new one keeps serving
        bad = models_copy / "broken"
        shutil.copytree(models_copy / trained.version, bad)
        (bad / "als.npz").write_bytes(b"\x00" * (bad / "als.npz").stat().st_size)
        publish(models_copy, "broken")
        detail = assert_error(
            c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret"}), 409
        )
        assert "broken" in detail
        assert c.get("/v1/model").json()["version"] == other.version
        assert c.get("/readyz").status_code == 200


# -- ids that the pattern allows must be reachable ------------------------------------------


def test_ids_with_spaces_accents_and_symbols_are_served(tmp_path):
    """Every id training stores can be asked for: a shop whose customer and
    item ids have spaces, accents, ``#``, ``&``, ``?`` and ``/`` is served
    like any other, through encoded paths and JSON bodies."""
    from urllib.parse import quote

    from training.config import ALSConfig, SearchConfig, TrainConfig
    from training.pipeline import train

    shop = generate_shop("demo", n_customers=N_CUSTOMERS, n_items=N_ITEMS, seed=0)
    paths = write_shop(shop, tmp_path / "shop")
    tx = pd.read_csv(paths["transactions"], dtype=str)
    items = pd.read_csv(paths["items"], dtype=str)
    top_c = tx["customer_id"].value_counts().index[:3]
    top_i = tx["item_id"].value_counts().index[:2]
    cust_names = dict(zip(top_c, ["Zoë Martin", "client #7 & co?", "équipe/nord"], strict=True))
    item_names = dict(zip(top_i, ["Café crème 250 g", "SKU 12/B"], strict=True))
    tx["customer_id"] = tx["customer_id"].replace(cust_names)
    tx["item_id"] = tx["item_id"].replace(item_names)
    items["item_id"] = items["item_id"].replace(item_names)
    tx.to_csv(paths["transactions"], index=False)
    items.to_csv(paths["items"], index=False)
    cfg = TrainConfig(
        top_n=20,
        als=ALSConfig(factors=8, iterations=5),
        run_baselines=False,
        search=SearchConfig(enabled=False),
    )
    train(
        paths["transactions"],
        items_path=paths["items"],
        models_dir=tmp_path / "m",
        config=cfg,
        say=lambda m: None,
    )
    with TestClient(create_app(settings(tmp_path / "m"))) as c:
        for cid in cust_names.values():
            enc = quote(cid, safe="")
            r = c.get(f"/v1/customers/{enc}/recommendations", params={"k": 5})
            assert r.status_code == 200, r.text
            assert r.json()["customer_id"] == cid and r.json()["strategy"] == "personalized"
            assert c.get(f"/v1/customers/{enc}/buy-again").status_code == 200
            assert c.get(f"/v1/customers/{enc}/next-purchase").json()["customer_id"] == cid
        r = c.post("/v1/recommendations/batch", json={"customer_ids": list(cust_names.values())})
        assert [row["customer_id"] for row in r.json()["results"]] == list(cust_names.values())
        for iid in item_names.values():
            r = c.get(f"/v1/items/{quote(iid, safe='')}/similar", params={"k": 3})
            assert r.status_code == 200 and r.json()["item_id"] == iid, r.text
        r = c.post("/v1/recommendations", json={"recent_items": list(item_names.values())})
        assert r.status_code == 200 and r.json()["strategy"] == "folded_in", r.text


def test_ids_with_a_slash_are_reachable_in_paths(client):
    """The id pattern allows ``/`` (SKUs like ``AB/12``); an encoded slash must still route."""
    r = client.get("/v1/customers/team%2F7/recommendations", params={"k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["customer_id"] == "team/7" and r.json()["strategy"] == "popular"
    assert "'AB/12'" in assert_error(client.get("/v1/items/AB%2F12/similar"), 404)
    assert "'team/7'" in assert_error(client.get("/v1/customers/team%2F7/buy-again"), 404)
    assert "'team/7'" in assert_error(client.get("/v1/customers/team%2F7/next-purchase"), 404)


# -- serving never imports training -----------------------------------------------------------


def test_serving_does_not_import_training(trained):
    script = textwrap.dedent(
        f"""
        import sys
        import serving.app
        from fastapi.testclient import TestClient
        from serving.settings import ServingSettings
        app = serving.app.create_app(ServingSettings(models_dir={str(trained.models)!r},
                                                     reload_interval_s=0))
        with TestClient(app) as c:
            assert c.get("/v1/customers/x/recommendations").status_code == 200
            assert c.get("/v1/customers/due").status_code == 200
        bad = sorted(m for m in sys.modules if m == "training" or m.startswith("training."))
        assert not bad, bad
        print("ok")
        """
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_bad_settings_stop_encore_serve_with_one_line_each(monkeypatch, capsys, tmp_path):
    """A wrong ENCORE_* variable is named with what is wrong, before any server
    starts, and the exit status is 2 (not a traceback)."""
    from serving.__main__ import main

    monkeypatch.setenv("ENCORE_MODELS_DIR", str(tmp_path))  # main sets it: restored after
    monkeypatch.setenv("ENCORE_MAX_BATCH", "5000")
    monkeypatch.setenv("ENCORE_RELOAD_INTERVAL_S", "soon")
    assert main(["--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert any(line.startswith("encore serve: error: ENCORE_MAX_BATCH:") for line in err)
    assert any(line.startswith("encore serve: error: ENCORE_RELOAD_INTERVAL_S:") for line in err)
