"""One answer per question: the API and the batch exports give a customer the same answer.

The small shop of :mod:`tests.test_serving` is trained with the real pipeline
(ALS, top-N table, timing, buy-again, a catalogue with categories and some
unavailable items). For a sample of customers, unknown ids included, and every
business rule, the picks of ``GET /v1/customers/{id}/recommendations`` are the
rows ``encore recommend`` writes; the figures of ``GET .../next-purchase`` and
of the due list are the rows ``encore next-purchase`` writes. A synthetic
catalogue past the pruned-search threshold checks the single-customer search
against the blocked export.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from recommender.answers import Answerer, AnswerError, Rules, purchase_dates, timing_table
from recommender.data.ids import IdIndex
from recommender.ranking.als import ALSRecommender
from recommender.ranking.als_search import PRUNE_MIN_ITEMS
from recommender.ranking.base import top_k
from recommender.store.bundle import Bundle, Catalog, load_bundle
from serving.app import create_app
from tests.test_serving import busy_customers, settings, train_small_shop
from training.cli import main
from training.export import export_recommendations

pytestmark = pytest.mark.usefixtures("thread_limits_restored")


#: The small shops trained with the real pipeline: on the 300-customer demo shop
#: the two-stage ranker loses to ALS on the evaluation window, so ALS's list is
#: served (the fall-back); on a 600-customer grocery shop the ranker wins.
SHOPS = {
    "als-served": {},
    "ranker-served": {"preset": "grocery", "n_customers": 600, "n_items": 120},
}


@pytest.fixture(scope="module", params=list(SHOPS))
def trained(request, tmp_path_factory):
    return train_small_shop(tmp_path_factory.mktemp("answers"), **SHOPS[request.param])


@pytest.fixture(scope="module")
def bundle(trained) -> Bundle:
    return load_bundle(trained.models)


@pytest.fixture(scope="module")
def client(trained):
    with TestClient(create_app(settings(trained.models))) as c:
        yield c


@pytest.fixture(scope="module")
def sample(bundle, tmp_path_factory) -> tuple[list[str], Path]:
    """Busy customers, a random spread, ids the model has never seen; and a file of them."""
    rng = np.random.default_rng(3)
    spread = rng.choice(bundle.customers.ids_, size=25, replace=False)
    ids = list(dict.fromkeys([*busy_customers(bundle, 15), *map(str, spread)]))
    ids += ["nobody", "new-shopper-7"]
    path = tmp_path_factory.mktemp("ids") / "ids.csv"
    path.write_text("customer_id\n" + "\n".join(ids) + "\n")
    return ids, path


def api_picks(client, cid: str, k: int, params: dict) -> tuple[str, list[str], list[float]]:
    r = client.get(f"/v1/customers/{cid}/recommendations", params={"k": k, **params})
    assert r.status_code == 200, r.text
    body = r.json()
    return (
        body["strategy"],
        [i["item_id"] for i in body["items"]],
        [i["score"] for i in body["items"]],
    )


def export_picks(models: Path, ids_file: Path, out: Path, k: int, args: list[str]) -> pd.DataFrame:
    rc = main(
        ["recommend", "--models-dir", str(models), "--customers", str(ids_file), "-k", str(k),
         "--out", str(out), *args]
    )  # fmt: skip
    assert rc == 0
    return pd.read_csv(out, dtype={"customer_id": str, "item_id": str}, keep_default_na=False)


def _rules(bundle: Bundle) -> list[tuple[str, dict, list[str]]]:
    """(name, API query parameters, ``encore recommend`` options) for every rule."""
    cats = sorted(Answerer(bundle).categories)
    hot = [bundle.items.id(int(j)) for j in np.argsort(-bundle.popularity, kind="stable")[:6]]
    return [
        ("defaults", {}, []),
        ("include purchased", {"exclude_purchased": False}, ["--include-purchased"]),
        ("exclude purchased", {"exclude_purchased": True}, ["--exclude-purchased"]),
        ("one category", {"category": [cats[0]]}, ["--category", cats[0]]),
        (
            "two categories",
            {"category": cats[1:3]},
            ["--category", cats[1], "--category", cats[2]],
        ),
        ("exclude items", {"exclude_items": hot}, ["--exclude-items", *hot]),
        ("all items", {"available_only": False}, ["--all-items"]),
        ("available only", {"available_only": True}, ["--available-only"]),
        (
            "category, purchases and unavailable shown",
            {"category": [cats[0]], "exclude_purchased": False, "available_only": False},
            ["--category", cats[0], "--include-purchased", "--all-items"],
        ),
    ]


def test_the_shop_exercises_every_rule(bundle, sample):
    """Otherwise the agreement below could hold for lack of anything to disagree on."""
    a = Answerer(bundle)
    assert a.any_unavailable and len(a.categories) >= 3
    assert a.repurchase_items.any() and not a.repurchase_items.all()
    ids, _ = sample
    rows = bundle.customers.rows(ids)
    assert (rows < 0).sum() == 2
    hist = [a.history(int(r)) for r in rows[rows >= 0]]
    assert any(a.repurchase_items[h].any() and (~a.repurchase_items[h]).any() for h in hist)


@pytest.mark.parametrize("k", [5, 25], ids=["k5-table", "k25-beyond-the-table"])
def test_the_api_and_encore_recommend_give_the_same_picks(
    client, trained, bundle, sample, k, tmp_path
):
    # k=25 is more than the top-N table holds (20): every known customer is
    # then ranked by exact scores, on both sides
    ids, ids_file = sample
    differs_from_default = set()
    default: dict[str, list[str]] = {}
    for name, params, args in _rules(bundle):
        table = export_picks(trained.models, ids_file, tmp_path / "r.csv", k, args)
        assert table["customer_id"].drop_duplicates().tolist() == ids
        for cid in ids:
            strategy, items, scores = api_picks(client, cid, k, params)
            rows = table[table["customer_id"] == cid]
            assert rows["item_id"].tolist() == items, (name, cid, strategy)
            assert rows["rank"].tolist() == list(range(1, len(items) + 1))
            np.testing.assert_allclose(rows["score"], scores, atol=2e-6, err_msg=f"{name} {cid}")
            assert strategy == ("popular" if bundle.customers.row(cid) is None else "personalized")
            if name == "defaults":
                default[cid] = items
            elif items != default[cid]:
                differs_from_default.add(name)
    # each rule changed somebody's picks, so agreeing on it means something
    rule_names = {name for name, _, _ in _rules(bundle)}
    # the ranker's list shows purchases as it ranks them: including them is its default
    same = {"defaults", "available only"} | (
        {"include purchased"} if bundle.served == "ranker" else set()
    )
    assert differs_from_default == rule_names - same


def test_the_shops_serve_the_lists_they_are_meant_to(request, bundle):
    kind = request.node.callspec.params["trained"]
    assert bundle.served == ("ranker" if kind == "ranker-served" else "als")
    assert bundle.manifest["serving"]["reason"]
    if kind == "ranker-served":
        assert bundle.ranker is not None and bundle.stage is not None
        assert bundle.manifest["components"]["ranker"]
        assert bundle.topn_items is not None  # the ranker's own table


def test_the_api_batch_and_recent_items_follow_the_same_rules(client, bundle, sample):
    ids, _ = sample
    rules = {"category": sorted(Answerer(bundle).categories)[:2], "exclude_purchased": False}
    r = client.post("/v1/recommendations/batch", json={"customer_ids": ids, "k": 7, **rules})
    assert r.status_code == 200, r.text
    for cid, res in zip(ids, r.json()["results"], strict=True):
        strategy, items, _ = api_picks(client, cid, 7, rules)
        assert (res["strategy"], [i["item_id"] for i in res["items"]]) == (strategy, items)
    # a customer with recent items but none the model knows: their ordinary picks
    cid = ids[0]
    r = client.post(
        "/v1/recommendations", json={"customer_id": cid, "recent_items": ["no-such-item"], "k": 7}
    )
    assert r.status_code == 200 and r.json()["ignored_items"] == ["no-such-item"]
    assert [i["item_id"] for i in r.json()["items"]] == api_picks(client, cid, 7, {})[1]


def test_rule_errors_are_the_same_everywhere(client, trained, sample, tmp_path, capsys):
    _, ids_file = sample
    r = client.get("/v1/customers/x/recommendations", params={"category": "no-such-category"})
    assert r.status_code == 400 and "no-such-category" in r.json()["detail"]
    rc = main(["recommend", "--models-dir", str(trained.models), "--customers", str(ids_file),
               "--category", "no-such-category", "--out", str(tmp_path / "r.csv")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "unknown category 'no-such-category'" in err
    assert not (tmp_path / "r.csv").exists()


def test_next_purchase_rows_of_the_api_and_the_export_agree(
    client, trained, bundle, sample, tmp_path
):
    ids, ids_file = sample
    out = tmp_path / "np.csv"
    args = ["next-purchase", "--models-dir", str(trained.models), "--customers", str(ids_file)]
    assert main([*args, "--horizon-days", "30", "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"customer_id": str}, keep_default_na=False)
    known = [c for c in ids if bundle.customers.row(c) is not None]
    assert table["customer_id"].tolist() == known
    undated = 0
    for row in table.to_dict(orient="records"):
        n = client.get(f"/v1/customers/{row['customer_id']}/next-purchase").json()
        for col in ("p_active", "expected_purchases", "p_purchase"):
            assert row[col] == pytest.approx(round(n[col], 6), abs=1e-9), col
        # money to the cent, from the one spend model (the shop has prices)
        assert n["value_note"] is None
        for col in ("expected_order_value", "expected_spend", "clv"):
            assert n[col] is not None and n[col] >= 0, col
            assert float(row[col]) == pytest.approx(round(n[col], 2), abs=1e-9), col
        assert n["expected_spend"] == pytest.approx(
            n["expected_purchases"] * n["expected_order_value"]
        )
        if n["median_days_to_next"] is None:
            undated += 1
            assert row["median_days_to_next"] == "" and row["next_purchase_date"] == ""
            assert n["next_purchase_date"] is None
        else:
            assert float(row["median_days_to_next"]) == round(n["median_days_to_next"], 2)
            assert row["next_purchase_date"] == n["next_purchase_date"]
    assert 0 < undated < len(table)  # both kinds of rows were compared
    # the due list's rows are those rows too
    r = client.get("/v1/customers/due", params={"within_days": 30, "min_probability": 0.0,
                                                "limit": 1_000_000})  # fmt: skip
    due = pd.read_csv(io.StringIO(r.text), dtype={"customer_id": str}, keep_default_na=False)
    both = due.merge(table, on="customer_id", suffixes=("_due", ""))
    assert len(both) >= len(table) - undated
    for col in ("p_active", "expected_purchases", "p_purchase", "median_days_to_next",
                "next_purchase_date", "expected_order_value", "expected_spend",
                "clv"):  # fmt: skip
        assert both[f"{col}_due"].tolist() == both[col].tolist(), col
    assert list(csv.reader(io.StringIO(r.text)))[0] == [
        "customer_id", "p_purchase", "p_active", "expected_purchases", "median_days_to_next",
        "next_purchase_date", "expected_order_value", "expected_spend", "clv",
    ]  # fmt: skip


def test_lifetime_value_terms_agree_and_matter(client, trained, bundle, sample, tmp_path):
    """The clv horizon and discount rate mean the same on the API and the export."""
    ids, ids_file = sample
    out = tmp_path / "np.csv"
    assert main(["next-purchase", "--models-dir", str(trained.models), "--customers",
                 str(ids_file), "--clv-horizon-days", "90", "--discount-rate", "0",
                 "--out", str(out)]) == 0  # fmt: skip
    table = pd.read_csv(out, dtype={"customer_id": str})
    for row in table.head(10).to_dict(orient="records"):
        cid = row["customer_id"]
        terms = {"clv_horizon_days": 90, "annual_discount_rate": 0}
        short = client.get(f"/v1/customers/{cid}/next-purchase", params=terms).json()
        default = client.get(f"/v1/customers/{cid}/next-purchase").json()
        assert row["clv"] == pytest.approx(round(short["clv"], 2), abs=1e-9)
        assert short["clv_horizon_days"] == 90 and default["clv_horizon_days"] == 365
        # undiscounted over 90 days: expected purchases within 90 days x order value
        p90 = client.get(f"/v1/customers/{cid}/next-purchase", params={"horizon_days": 90}).json()
        assert short["clv"] == pytest.approx(p90["expected_spend"], rel=1e-9)
        assert default["clv"] >= short["clv"]


def test_due_by_expected_spend_is_sorted_and_agrees_with_encore_due(client, trained, tmp_path):
    params = {"within_days": 30, "min_probability": 0.1, "limit": 1_000_000}
    api = client.get(
        "/v1/customers/due", params={**params, "format": "json", "sort": "expected_spend"}
    ).json()["customers"]
    spend = [r["expected_spend"] for r in api]
    assert len(spend) > 10 and spend == sorted(spend, reverse=True)
    by_p = client.get("/v1/customers/due", params={**params, "format": "json"}).json()
    assert {r["customer_id"] for r in by_p["customers"]} == {r["customer_id"] for r in api}
    assert [r["customer_id"] for r in by_p["customers"]] != [r["customer_id"] for r in api]
    out = tmp_path / "due.csv"
    assert main(["due", "--models-dir", str(trained.models), "--within-days", "30",
                 "--min-probability", "0.1", "--sort", "expected_spend",
                 "--out", str(out)]) == 0  # fmt: skip
    table = pd.read_csv(out, dtype={"customer_id": str})
    assert table["customer_id"].tolist() == [r["customer_id"] for r in api]
    for col in ("expected_order_value", "expected_spend", "clv", "p_purchase"):
        assert table[col].tolist() == pytest.approx([r[col] for r in api], abs=1e-9), col


def test_the_date_rule():
    as_of = pd.Timestamp("2024-03-01")  # the day after the log's last day
    got = purchase_dates(as_of, np.array([0.2, 1.0, 1.5, 30.0, np.inf, np.nan]))
    assert got.tolist() == ["2024-03-01", "2024-03-01", "2024-03-02", "2024-03-30", "", ""]


def test_a_version_without_timing_cannot_answer_timing(bundle):
    import dataclasses

    bare = dataclasses.replace(bundle, timing=None, repurchase=None)
    with pytest.raises(AnswerError) as err:
        timing_table(bare, np.array([0]), 30.0)
    assert err.value.kind == "unavailable"
    with pytest.raises(AnswerError) as err:
        Answerer(bare).buy_again(0, 30.0, 5)
    assert err.value.kind == "unavailable"
    with pytest.raises(AnswerError) as err:
        Answerer(bare).for_customer("x", 5, Rules(categories=["nope"]))
    assert err.value.kind == "bad_request"


# -- a catalogue large enough for the pruned search -------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Bundle:
    """Random ALS-like factors over more items than the pruned-search threshold."""
    rng = np.random.default_rng(11)
    n_c, n_i, f = 300, PRUNE_MIN_ITEMS + 500, 16
    model = ALSRecommender(factors=f)
    model.user_factors_ = rng.standard_normal((n_c, f), dtype=np.float32)
    # popular items get the long factors under ALS; a spread of norms lets the bound cut
    scale = rng.lognormal(0.0, 0.6, n_i).astype(np.float32)[:, None]
    model.item_factors_ = rng.standard_normal((n_i, f), dtype=np.float32) * scale
    rows = np.repeat(np.arange(n_c), 12)
    history = sp.csr_matrix(
        (np.ones(rows.size, np.float32), (rows, rng.integers(0, n_i, rows.size))), shape=(n_c, n_i)
    )
    history.sum_duplicates()
    # the customers' own best items are bought, so hiding them changes the picks
    best = np.argsort(-(model.user_factors_ @ model.item_factors_.T), axis=1)[:, :3]
    history = (history + sp.csr_matrix(
        (np.ones(best.size, np.float32), (np.repeat(np.arange(n_c), 3), best.ravel())),
        shape=(n_c, n_i),
    )).tocsr()  # fmt: skip
    catalog = Catalog.empty(n_i)
    catalog.category = np.array([f"c{j % 7}" for j in range(n_i)])
    catalog.available = rng.random(n_i) > 0.1
    return Bundle(
        version="big",
        path=tmp_path_factory.mktemp("big"),
        manifest={},
        customers=IdIndex(np.array([f"C{i:04d}" for i in range(n_c)])),
        items=IdIndex(np.array([f"I{i:06d}" for i in range(n_i)])),
        history=history,
        popularity=rng.random(n_i, dtype=np.float32),
        catalog=catalog,
        als=model,
    )


@pytest.mark.parametrize(
    "rules",
    [
        Rules(),
        Rules(exclude_purchased=False),
        Rules(available_only=False),
        Rules(categories=["c3"]),
        Rules(categories=["c1", "c2", "c4", "c5", "c6"], exclude_items=["I000010", "I000011"]),
    ],
    ids=["defaults", "keep-purchased", "unavailable-too", "category", "categories-and-items"],
)
def test_pruned_single_customer_answers_equal_the_blocked_export(big, rules, tmp_path):
    answerer = Answerer(big)
    assert answerer.search is not None  # the single-customer path prunes
    ids = [*big.customers.ids_[:120].tolist(), "stranger"]
    out = tmp_path / "big.csv"
    stats = export_recommendations(
        big,
        out,
        customer_ids=np.array(ids),
        k=10,
        categories=rules.categories,
        exclude_items=rules.exclude_items,
        exclude_purchased=rules.exclude_purchased,
        available_only=rules.available_only,
        batch_size=50,
    )
    assert stats == {"personalized": 120, "popular": 1}
    table = pd.read_csv(out, dtype={"customer_id": str, "item_id": str})
    for cid, rows in table.groupby("customer_id", sort=False):
        answer = answerer.for_customer(str(cid), 10, rules)
        assert rows["item_id"].tolist() == [big.items.id(p.item_row) for p in answer.picks]
        np.testing.assert_allclose(
            rows["score"], [p.score for p in answer.picks], rtol=1e-5, atol=1e-5
        )
    # and the rule itself: nothing bought, unavailable or outside the categories
    allowed = answerer.allowed(rules)
    for cid, rows in table.groupby("customer_id", sort=False):
        got = big.items.rows(rows["item_id"].to_numpy())
        assert allowed[got].all()
        r = big.customers.row(str(cid))
        if r is not None and rules.exclude_purchased:
            assert not np.isin(got, answerer.history(r)).any()


def test_due_items_are_the_buy_again_items_due_with_probability_at_least_a_half(bundle):
    """The per-version table behind the "due to rebuy" reason says what the
    buy-again model says, customer by customer."""
    a = Answerer(bundle, due_days=30.0)
    asked = Answerer(bundle, due_days=30.0, due_once=False)  # one customer at a time
    rep = bundle.repurchase
    assert rep is not None
    n_due = 0
    for row in range(bundle.n_customers):
        expected = {
            int(d["item_row"])
            for d in rep.buy_again(row, 30.0, k=bundle.n_items)
            if d["probability"] >= 0.5
        }
        assert a.due_items(row) == expected, row
        assert asked.due_items(row) == expected, row
        n_due += len(expected)
    assert n_due > 0  # the shop has due items, so the comparison says something
    assert asked.due_items(bundle.n_customers) == a.due_items(bundle.n_customers) == set()


def test_recent_items_and_unknown_customers_keep_working(client, bundle):
    """Whatever list is served, recent items fold into ALS and strangers get popular items."""
    recent = [bundle.items.id(int(i)) for i in np.argsort(-bundle.popularity)[:3]]
    r = client.post("/v1/recommendations", json={"recent_items": recent, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "folded_in" and len(body["items"]) == 5
    assert not {i["item_id"] for i in body["items"]} & set(recent)
    r = client.get("/v1/customers/somebody-new/recommendations", params={"k": 4})
    assert r.status_code == 200 and r.json()["strategy"] == "popular"


# -- a category filter on a large catalogue: its own blocks, the general rule's picks -----


@pytest.fixture(scope="module", params=["no table", "top-50 table"])
def shelves(request, big) -> Bundle:
    """``big`` with a category of six items and some items in none; with and
    without a top-N table (exact, purchases included, as training writes it)."""
    n_i = big.n_items
    names = ["tiny" if j < 6 else "" if j < 40 else f"c{j % 7}" for j in range(n_i)]
    catalog = dataclasses.replace(big.catalog, category=np.array(names))
    if request.param == "no table":
        return dataclasses.replace(big, catalog=catalog)
    als = big.als
    assert als is not None and als.user_factors_ is not None and als.item_factors_ is not None
    items, scores = top_k(als.user_factors_ @ als.item_factors_.T, 50)
    return dataclasses.replace(big, catalog=catalog, topn_items=items, topn_scores=scores)


@pytest.mark.parametrize(
    "rules",
    [
        Rules(categories=["tiny"]),
        Rules(categories=["tiny"], available_only=False, exclude_purchased=False),
        Rules(categories=["c3"]),
        Rules(categories=["c1", "tiny", "c1"], exclude_items=["I000003", "I000050", "I000043"]),
        Rules(categories=["c2", "c5"], exclude_purchased=True),
        Rules(categories=["c6", "c4"], exclude_purchased=False, available_only=False),
    ],
    ids=["k-over-its-size", "tiny-all", "one", "several-excluded", "two-explore", "two-all"],
)
def test_a_category_filter_gives_the_picks_of_the_general_rule(shelves, rules):
    """The single-request path scores only the asked categories' items (laid
    out per category once per version) and never builds the catalogue's mask;
    its picks and reasons are those of scoring every item under the mask."""
    fast = Answerer(shelves)
    full = Answerer(shelves, prune_min_items=2**62)  # every item scored under the mask
    assert fast._by_category is not None and full.search is None
    allowed = full.allowed(rules)
    rng = np.random.default_rng(4)
    for cid in shelves.customers.ids_[:60]:
        row = shelves.customers.row(str(cid))
        assert row is not None
        for k in (1, 10, 25):
            a, b = fast.for_customer(str(cid), k, rules), full.for_customer(str(cid), k, rules)
            assert a.strategy == b.strategy == "personalized"
            assert [p.item_row for p in a.picks] == [p.item_row for p in b.picks]
            assert [p.reason for p in a.picks] == [p.reason for p in b.picks]
            np.testing.assert_allclose(
                [p.score for p in a.picks], [p.score for p in b.picks], rtol=1e-5, atol=1e-5
            )
            got = np.array([p.item_row for p in a.picks], dtype=np.int64)
            assert allowed[got].all()
            if rules.exclude_purchased:
                assert not np.isin(got, fast.history(row)).any()
        # the few allowed items of a small category are all shown, and no more
        if rules.categories == ["tiny"]:
            assert len(fast.for_customer(str(cid), 25, rules).picks) <= 6
        recent = [str(x) for x in rng.choice(shelves.items.ids_, size=3, replace=False)]
        for customer in (None, str(cid)):
            a = fast.for_recent(recent, 10, rules, customer_id=customer)
            b = full.for_recent(recent, 10, rules, customer_id=customer)
            assert a.strategy == b.strategy == "folded_in"
            assert [(p.item_row, p.reason) for p in a.picks] == [
                (p.item_row, p.reason) for p in b.picks
            ]
            np.testing.assert_allclose(
                [p.score for p in a.picks], [p.score for p in b.picks], rtol=1e-5, atol=1e-5
            )


def test_an_unknown_category_is_still_a_bad_request_on_the_fast_path(shelves):
    fast = Answerer(shelves)
    cid = str(shelves.customers.ids_[0])
    for rules in (Rules(categories=["nope"]), Rules(categories=["c1", "nope"])):
        for ask in (
            lambda r: fast.for_customer(cid, 10, r),
            lambda r: fast.for_recent([str(shelves.items.ids_[7])], 10, r, customer_id=cid),
        ):
            with pytest.raises(AnswerError) as err:
                ask(rules)
            assert err.value.kind == "bad_request" and "'nope'" in err.value.message
