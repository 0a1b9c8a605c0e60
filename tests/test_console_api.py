"""The console's library and JSON API on a small demo shop trained with the real
pipeline: search, timeline, purchase curve, item audiences, campaign lists,
and the page's addresses. Figures are checked against the log the shop was
generated from and against the other endpoints that answer the same question.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterator
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recommender.answers import Answerer
from recommender.campaigns import SEGMENTS, AtRiskRule, CampaignQuery, Campaigns, TooSlow
from recommender.lookup import PrefixSearch, fold
from recommender.purchases import PURCHASES_FILE, PurchaseLog, purchase_log_bytes
from recommender.store.bundle import Bundle, load_bundle
from serving.app import create_app
from serving.settings import ServingSettings
from tests.console_shop import DemoShop, train_demo_shop

RENAMED = {
    "C000003": "Zoë-17",
    "C000004": unicodedata.normalize("NFD", "zoë-2"),  # the accent as two characters
    "C000005": "STRASSE-1",
    "C000006": "straße-9",
    "C000008": "東京/42 #a",
}

pytestmark = pytest.mark.usefixtures("thread_limits_restored")


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> DemoShop:
    return train_demo_shop(
        tmp_path_factory.mktemp("console"), n_customers=600, n_items=120, rename=RENAMED
    )


@pytest.fixture(scope="module")
def bundle(shop) -> Bundle:
    return load_bundle(shop.models)


@pytest.fixture(scope="module")
def client(shop) -> Iterator[TestClient]:
    with TestClient(create_app(ServingSettings(models_dir=shop.models, reload_interval_s=0))) as c:
        yield c


def ok(r) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == 200, r.text
    return r.json()


def refused(r, status: int) -> str:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    return r.json()["detail"]


# -- search ------------------------------------------------------------------------------
def test_search_folds_case_and_unicode_form(client):
    got = ok(client.get("/v1/customers", params={"q": "ZOË"}))
    assert {c["customer_id"] for c in got["customers"]} == {RENAMED["C000003"], RENAMED["C000004"]}
    got = ok(client.get("/v1/customers", params={"q": "strasse"}))
    assert {c["customer_id"] for c in got["customers"]} == {"STRASSE-1", "straße-9"}
    got = ok(client.get("/v1/customers", params={"q": "東京/4"}))
    assert [c["customer_id"] for c in got["customers"]] == ["東京/42 #a"]
    # a non-ASCII id opens like any other
    cid = "東京/42 #a"
    assert ok(client.get(f"/v1/customers/{quote(cid, safe='')}/timeline"))["customer_id"] == cid


def test_search_pages_through_every_match_in_order(client, bundle):
    ids = [str(c) for c in bundle.customers.ids_ if fold(str(c)).startswith("c0001")]
    assert len(ids) == 100
    seen = []
    for offset in range(0, 100, 30):
        page = ok(client.get("/v1/customers", params={"q": "c0001", "offset": offset, "limit": 30}))
        assert page["total"] == 100 and page["offset"] == offset
        seen += [c["customer_id"] for c in page["customers"]]
    assert seen == sorted(ids)
    # each match says when they last bought, as the timeline does
    first = ok(client.get("/v1/customers", params={"q": seen[0]}))["customers"][0]
    line = ok(client.get(f"/v1/customers/{seen[0]}/timeline"))
    assert first["customer_id"] == seen[0]
    assert (first["purchase_days"], first["last_purchase"]) == (
        line["purchase_days"],
        line["last_purchase"],
    )


def test_the_id_typed_exactly_comes_first():
    ids = np.array(["ab", "AB", "Ab", "abc"])
    s = PrefixSearch.of_ids(ids)
    assert ids[s.search("AB").rows].tolist()[0] == "AB"
    assert ids[s.search("Ab").rows].tolist()[0] == "Ab"
    assert s.search("ab").total == 4


def test_items_are_found_by_id_or_a_word_of_the_title(client, bundle):
    row = 5
    title = str(bundle.catalog.title[row])
    word = title.split()[-1][:4]
    got = ok(client.get("/v1/items", params={"q": word, "limit": 100}))
    assert bundle.items.id(row) in [i["item_id"] for i in got["items"]]
    assert all(
        any(w.casefold().startswith(word.casefold()) for w in i["title"].split())
        or i["item_id"].casefold().startswith(word.casefold())
        for i in got["items"]
    )
    # every item once, even when several of its words match
    assert len({i["item_id"] for i in got["items"]}) == len(got["items"]) == got["total"]
    got = ok(client.get("/v1/items", params={"q": bundle.items.id(row)}))
    assert got["items"][0]["item_id"] == bundle.items.id(row)


@pytest.mark.parametrize(
    "params, status, words",
    [
        ({"q": ""}, 422, "at least one character"),
        ({"q": "   "}, 422, "at least one character"),
        ({"q": "C", "limit": 0}, 422, "limit"),
        ({"q": "C", "limit": 101}, 422, "limit"),
        ({"q": "C", "offset": 10_001}, 422, "offset"),
    ],
)
def test_bad_searches_are_4xx_with_a_message(client, params, status, words):
    assert words in refused(client.get("/v1/customers", params=params), status)


def test_a_million_ids_are_searched_by_bisection():
    ids = np.array([f"C{i:07d}" for i in range(1_000_000)])
    s = PrefixSearch.of_ids(ids)
    m = s.search("c099999", limit=20)
    assert m.total == 10 and ids[m.rows].tolist() == [f"C099999{d}" for d in range(10)]
    m = s.search("C", offset=9_990, limit=20)
    assert m.total == 1_000_000 and ids[m.rows].tolist() == [
        f"C{i:07d}" for i in range(9_990, 10_010)
    ]


# -- a customer's timeline and curve ----------------------------------------------------------
def test_the_timeline_is_the_log_by_day(client, shop, bundle):
    tx = shop.shop.transactions
    cid = str(tx["customer_id"].value_counts().index[0])  # the most active customer
    mine = tx[tx["customer_id"] == cid]
    days = sorted(pd.to_datetime(mine["timestamp"]).dt.strftime("%Y-%m-%d").unique())
    line = ok(client.get(f"/v1/customers/{cid}/timeline", params={"limit": 100}))
    assert line["has_dates"] and line["purchase_days"] == len(days)
    assert [o["date"] for o in line["orders"]] == days[::-1][:100]
    assert line["purchase_dates"] == days
    assert (line["first_purchase"], line["last_purchase"]) == (days[0], days[-1])
    newest = line["orders"][0]
    on_day = mine[pd.to_datetime(mine["timestamp"]).dt.strftime("%Y-%m-%d") == newest["date"]]
    want = on_day.groupby("item_id")["quantity"].sum().to_dict()
    assert {i["item_id"]: i["quantity"] for i in newest["items"]} == want
    spent = float((on_day["quantity"] * on_day["price"]).sum())
    assert newest["value"] == pytest.approx(spent, abs=0.02)
    # older pages
    older = ok(client.get(f"/v1/customers/{cid}/timeline",
                          params={"limit": 3, "before": days[-3]}))  # fmt: skip
    assert [o["date"] for o in older["orders"]] == days[-4::-1][:3]
    assert line["segment"] in SEGMENTS


def test_timeline_and_curve_refuse_what_they_cannot_answer(client):
    assert "ghost" in refused(client.get("/v1/customers/ghost/timeline"), 404)
    assert "ghost" in refused(client.get("/v1/customers/ghost/purchase-curve"), 404)
    r = client.get("/v1/customers/C000000/timeline", params={"before": "2025-13-45"})
    assert "YYYY-MM-DD" in refused(r, 422)
    assert refused(client.get("/v1/customers/C000000/purchase-curve", params={"days": 0}), 422)


def test_a_version_without_dated_purchases_says_so(shop, tmp_path):
    from recommender.store.artifacts import publish
    from recommender.store.bundle import save_bundle

    b = load_bundle(shop.models)
    manifest = {k: v for k, v in b.manifest.items() if k not in ("files", "version", "components")}
    save_bundle(
        tmp_path, customers=b.customers, items=b.items, history=b.history,
        popularity=b.popularity, catalog=b.catalog, manifest=manifest, als=b.als,
        timing=b.timing, repurchase=b.repurchase, version="old",
    )  # fmt: skip
    publish(tmp_path, "old")
    old = load_bundle(tmp_path)
    assert PURCHASES_FILE not in old.manifest["files"] and PurchaseLog.of(old) is None
    with TestClient(create_app(ServingSettings(models_dir=tmp_path, reload_interval_s=0))) as c:
        line = ok(c.get("/v1/customers/C000000/timeline"))
        assert not line["has_dates"] and line["orders"] == [] and "retrain" in line["note"]
        assert line["purchase_days"] >= 1 and line["last_purchase"]


def test_the_purchase_file_sums_a_day_s_lines_and_is_checked_on_read(shop, bundle, tmp_path):
    frame = pd.DataFrame(
        {
            "crow": [0, 0, 0, 1, 1],
            "irow": [2, 2, -1, 3, 3],
            "timestamp": pd.to_datetime(
                [
                    "2025-01-01 09:00",
                    "2025-01-01 18:00",
                    "2025-01-02 00:00",
                    "2025-01-03 08:00",
                    "2025-01-03 23:59",
                ]
            ),
            "quantity": [1.0, 2.0, 1.0, 1.0, 1.0],
            "price": [2.0, 2.0, 5.0, np.nan, 1.0],
        }
    )
    data = np.load(io.BytesIO(purchase_log_bytes(frame, 3)))
    assert data["indptr"].tolist() == [0, 2, 3, 3]
    assert data["item"].tolist() == [2, -1, 3]
    assert data["quantity"].tolist() == [3.0, 1.0, 2.0]
    assert data["value"][:2].tolist() == [6.0, 5.0] and np.isnan(data["value"][2])
    # a changed file is refused, not served
    path = bundle.path / PURCHASES_FILE
    good = path.read_bytes()
    try:
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        with pytest.raises(Exception, match="sha256"):
            PurchaseLog.of(bundle)
    finally:
        path.write_bytes(good)


def test_the_curve_is_the_next_purchase_probability_at_each_horizon(client, bundle):
    cid = bundle.customers.id(1)
    c = ok(client.get(f"/v1/customers/{cid}/purchase-curve", params={"days": 90}))
    assert c["days"] == list(range(1, 91))
    p = np.array(c["p_purchase"])
    assert np.all(np.diff(p) >= -1e-12) and 0 <= p[0] and p[-1] <= 1
    for h in (1, 30, 90):
        n = ok(client.get(f"/v1/customers/{cid}/next-purchase", params={"horizon_days": h}))
        assert p[h - 1] == pytest.approx(n["p_purchase"], rel=1e-9)
        assert c["p_active"] == n["p_active"]


# -- items ---------------------------------------------------------------------------------
def _repurchase_item(bundle: Bundle) -> int:
    rep = bundle.repurchase
    assert rep is not None
    counts = np.bincount(rep.pair_item_, minlength=bundle.n_items)
    return int(np.argmax(np.where(rep.is_repurchase_item_, counts, -1)))


def test_an_item_s_buyers_are_its_history_column(client, bundle):
    row = _repurchase_item(bundle)
    iid = bundle.items.id(row)
    col = bundle.history[:, row].toarray().ravel()
    got = ok(client.get(f"/v1/items/{iid}/buyers", params={"limit": 100}))
    assert got["total"] <= 100, "the test reads every buyer in one page"
    assert got["total"] == int((col > 0).sum())
    lines = [c["lines"] for c in got["customers"]]
    assert lines == sorted(lines, reverse=True)
    for c in got["customers"][:10]:
        r = bundle.customers.row(c["customer_id"])
        assert c["lines"] == col[r] and c["purchase_days"] >= 1 and c["last_bought"]
    info = ok(client.get(f"/v1/items/{iid}"))
    assert info["buyers"] == got["total"] and info["repurchase_item"] and info["cycle_days"] > 0


def test_likely_buyers_are_due_rebuyers_and_high_scoring_new_customers(client, bundle):
    row = _repurchase_item(bundle)
    iid = bundle.items.id(row)
    got = ok(client.get(f"/v1/items/{iid}/likely-buyers", params={"limit": 10}))
    # the rebuyers' probability is the one their buy-again list shows for the item
    rep = bundle.repurchase
    for c in got["rebuy"]["customers"][:5]:
        r = bundle.customers.row(c["customer_id"])
        theirs = {d["item_row"]: d["probability"] for d in rep.buy_again(r, 30.0, k=1000)}
        assert c["figure"] == pytest.approx(theirs[row], rel=1e-9)
    probs = [c["figure"] for c in got["rebuy"]["customers"]]
    assert probs == sorted(probs, reverse=True)
    # new buyers never bought it and are the top scores among those who did not
    scores = bundle.als.user_factors_ @ bundle.als.item_factors_[row]
    bought = bundle.history[:, row].toarray().ravel() > 0
    best = np.sort(scores[~bought])[::-1][:10]
    new = got["new"]["customers"]
    assert got["new"]["total"] == int((~bought).sum())
    assert np.allclose([c["figure"] for c in new], best, rtol=1e-5)
    assert not any(bought[bundle.customers.row(c["customer_id"])] for c in new)


def test_unknown_items_are_404(client):
    for path in ("/v1/items/nope", "/v1/items/nope/buyers", "/v1/items/nope/likely-buyers"):
        assert "nope" in refused(client.get(path), 404)


def test_categories_are_the_catalogue_s(client, bundle):
    got = ok(client.get("/v1/categories"))["categories"]
    want = pd.Series(bundle.catalog.category).value_counts()
    assert {c["name"]: c["items"] for c in got} == {str(k): int(v) for k, v in want.items()}


# -- campaigns -----------------------------------------------------------------------------
def test_the_at_risk_rule_holds_for_every_listed_customer(bundle):
    c = Campaigns(Answerer(bundle))
    rule = c.rule
    rows = c.select(CampaignQuery(kind="at_risk"))
    assert rows.size > 0
    timing = bundle.timing
    s, u, m = timing.summary_, timing.unit_days, timing.model_
    for r in rows:
        x, tx, T = s.x[r], s.t_x[r] / u, s.T[r] / u
        now = m.p_alive(np.array([x]), np.array([tx]), np.array([T]))[0]
        then = m.p_alive(np.array([x]), np.array([tx]), np.array([T - rule.lookback_days / u]))[0]
        assert x + 1 >= rule.min_purchase_days
        assert (T - tx) * u >= rule.lookback_days  # nothing bought in the lookback
        assert then >= rule.was_active and then - now >= rule.min_drop
        assert now >= rule.lapsed_below
    falls = [c._activity()[1][r] - c._activity()[0][r] for r in rows]
    assert falls == sorted(falls, reverse=True)
    # a stricter rule lists a subset
    strict = Campaigns(Answerer(bundle), AtRiskRule(min_drop=0.4))
    assert set(strict.select(CampaignQuery(kind="at_risk"))) <= set(rows)


def test_segments_cover_every_customer_with_a_history_once(client, bundle):
    seg = ok(client.get("/v1/campaigns", params={"limit": 1}))["segments"]
    assert list(seg) == list(SEGMENTS)
    assert sum(seg.values()) == int(bundle.timing.summary_.has_history.sum())
    one_time = int(((bundle.timing.summary_.x == 0) & bundle.timing.summary_.has_history).sum())
    assert seg["one-time"] + seg["new"] >= one_time > 0 and seg["at risk"] > 0


def test_filters_narrow_the_list_as_they_say(client, bundle):
    base = {"within_days": 21, "min_probability": 0.2, "max_probability": 0.9}
    everyone = ok(client.get("/v1/campaigns", params={**base, "limit": 100}))
    assert everyone["count"] > 0
    probs = [c["p_purchase"] for c in everyone["customers"]]
    assert probs == sorted(probs, reverse=True) and all(0.2 <= p <= 0.9 for p in probs)
    # the probability is the next-purchase answer's
    first = everyone["customers"][0]
    n = ok(client.get(f"/v1/customers/{quote(first['customer_id'], safe='')}/next-purchase",
                      params={"horizon_days": 21}))  # fmt: skip
    assert first["p_purchase"] == pytest.approx(n["p_purchase"], abs=1e-6)
    assert first["next_purchase_date"] == n["next_purchase_date"]
    cat = "Coffee & Tea"
    coffee = ok(client.get("/v1/campaigns", params={**base, "category": cat, "limit": 100}))
    assert 0 < coffee["count"] < everyone["count"]
    in_cat = np.flatnonzero(bundle.catalog.category == cat)
    for c in coffee["customers"]:
        r = bundle.customers.row(c["customer_id"])
        bought = bundle.history.indices[bundle.history.indptr[r] : bundle.history.indptr[r + 1]]
        assert np.isin(bought, in_cat).any()
    regular = ok(client.get("/v1/campaigns", params={**base, "segment": "regular", "limit": 100}))
    assert {c["segment"] for c in regular["customers"]} == {"regular"}
    assert regular["count"] <= everyone["count"]


def test_the_download_is_the_preview_s_list_with_the_api_s_picks(client, bundle):
    params = {"kind": "likely", "within_days": 30, "min_probability": 0.4, "picks": 4}
    page = ok(client.get("/v1/campaigns", params={**params, "limit": 100}))
    r = client.get("/v1/campaigns/download", params=params)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert len(table) == page["count"]
    assert list(table[0]) == [
        "customer_id", "segment", "p_purchase", "p_active", "p_active_before",
        "last_purchase", "next_purchase_date", "pick_1", "pick_2", "pick_3", "pick_4",
    ]  # fmt: skip
    assert [t["customer_id"] for t in table[:100]] == [c["customer_id"] for c in page["customers"]]
    batch = client.post(
        "/v1/recommendations/batch",
        json={"customer_ids": [t["customer_id"] for t in table[:50]], "k": 4},
    ).json()["results"]
    for t, rec in zip(table, batch, strict=False):
        assert [t[f"pick_{j}"] for j in range(1, 5)] == [i["item_id"] for i in rec["items"]]
    # a one-time buyer's probability of being active is empty, as in next-purchase
    for t in table:
        n = ok(client.get(f"/v1/customers/{quote(t['customer_id'], safe='')}/next-purchase"))
        assert (t["p_active"] == "") == (n["p_active"] is None)
        if t["p_active"] == "":
            break
    # limit takes the head of the list
    head = client.get("/v1/campaigns/download", params={**params, "limit": 5}).text
    assert list(csv.DictReader(io.StringIO(head))) == table[:5]


def test_an_empty_list_downloads_its_header(client):
    r = client.get("/v1/campaigns/download", params={"min_probability": 1, "max_probability": 1})
    assert r.status_code == 200
    assert r.text.strip() == (
        "customer_id,segment,p_purchase,p_active,p_active_before,last_purchase,"
        "next_purchase_date,pick_1,pick_2,pick_3"
    )


@pytest.mark.parametrize(
    "params, words",
    [
        ({"within_days": 0}, "between 1 and 365 days; got 0"),
        ({"within_days": 10_000}, "between 1 and 365 days; got 10000"),
        ({"within_days": "nan"}, "between 1 and 365 days"),
        ({"min_probability": 0.8, "max_probability": 0.2}, "0 <= minimum <= maximum <= 1"),
        ({"kind": "everyone"}, "kind must be one of likely, at_risk"),
        ({"segment": "vip"}, "unknown segment 'vip'"),
        ({"kind": "at_risk", "segment": "regular"}, "'at risk' segment only"),
        ({"category": "Caviar"}, "unknown category 'Caviar'"),
    ],
)
def test_bad_campaigns_are_400_with_a_message(client, params, words):
    for path in ("/v1/campaigns", "/v1/campaigns/download"):
        assert words in refused(client.get(path, params=params), 400)


def test_a_download_is_bounded(client):
    assert "1 to 100,000" in refused(
        client.get("/v1/campaigns/download", params={"limit": 100_001}), 400
    )
    assert refused(client.get("/v1/campaigns", params={"limit": 101}), 422)
    assert refused(client.get("/v1/campaigns", params={"picks": 11}), 422)


# -- the page's addresses -------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/", "/customers/C000000", "/customers/" + quote("東京/42 #a", safe=""), "/items",
             "/items/I00001",
             "/campaigns", "/model"],
)  # fmt: skip
def test_every_view_is_the_one_self_contained_page(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script>" in r.text and "/static/console.js" not in r.text
    assert "function showCustomer" in r.text and "</script>" in r.text
    assert client.head(path).status_code == 200


def test_a_published_version_gets_its_own_console(shop, tmp_path):
    """The indexes belong to the version: after a reload the search and the
    lists answer from the new one."""
    import shutil

    from recommender.store.artifacts import publish

    models = tmp_path / "models"
    shutil.copytree(shop.models, models, symlinks=True)
    app = create_app(ServingSettings(models_dir=models, reload_interval_s=0))
    with TestClient(app) as c:
        before = ok(c.get("/v1/customers", params={"q": "C0000"}))
        assert before["model_version"] == shop.version
        ok(c.get("/v1/campaigns", params={"limit": 1}))
        other = train_demo_shop(tmp_path / "other", n_customers=300, n_items=60, seed=1)
        new = next(p.name for p in other.models.iterdir() if p.name == other.version)
        shutil.copytree(other.models / new, models / new)
        publish(models, new)
        assert app.state.store.refresh(force=True).ok
        after = ok(c.get("/v1/customers", params={"q": "C0000"}))
        assert after["model_version"] == new and after["total"] == 100  # C000000..C000099
        assert ok(c.get("/v1/campaigns", params={"limit": 1}))["model_version"] == new
        assert len(app.state.consoles) <= 2


def test_a_download_out_of_time_is_refused_not_cut_short(bundle, client):
    c = Campaigns(Answerer(bundle))
    q = CampaignQuery(min_probability=0.0)
    total = c.count(q)
    assert total > 500  # two blocks of picks
    whole = c.csv(q, total, 3)
    assert whole.count("\n") == total + 1  # header and every row
    ticks = iter(range(1000))  # a clock that moves one second per reading
    with pytest.raises(TooSlow) as err:
        c.csv(q, total, 3, budget_s=0.5, clock=lambda: float(next(ticks)))
    assert err.value.done == 500 and err.value.total == total
    assert f"500 of {total:,} customers" in str(err.value) and "picks=0" in str(err.value)
    # without picks the blocks are larger: one block, so it is written whole
    assert c.csv(q, total, 0, budget_s=0.5, clock=lambda: float(next(ticks))).count("\n") == (
        total + 1
    )
    # the API gives the whole file, as the library writes it
    r = client.get("/v1/campaigns/download", params={"min_probability": 0.0, "picks": 3})
    assert r.text == whole
