"""The recommendation routes write the response models' JSON without building them.

:mod:`serving.encoding` writes the bytes itself (item fields once per version);
they must be the bytes ``Recommendations(...).model_dump_json()`` writes for
every kind of answer: personalized with reasons, folded in with ignored ids,
popular, empty, and items whose titles need escaping or whose price is missing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from recommender.answers import Answer, Answerer, Pick, Rules
from recommender.data.ids import IdIndex
from recommender.ranking.als import ALSRecommender
from recommender.store.bundle import Bundle, Catalog
from serving.app import create_app
from serving.encoding import ItemJson
from serving.schemas import BatchResponse, Recommendation, Recommendations, item_fields
from tests.test_serving import busy_customers, settings, train_small_shop

pytestmark = pytest.mark.usefixtures("thread_limits_restored")

TITLES = ["plain", 'quote " and \\ backslash', "tab\tnewline\n", "é ü 漢字 🙂", "", "\u2028x"]


def as_models(bundle: Bundle, customer_id: str | None, answer: Answer) -> Recommendations:
    """The response as the models give it (what the routes returned before)."""
    return Recommendations(
        customer_id=customer_id,
        strategy=answer.strategy,
        model_version=bundle.version,
        items=[
            Recommendation(
                rank=i + 1, score=p.score, reason=p.reason, **item_fields(bundle, p.item_row)
            )
            for i, p in enumerate(answer.picks)
        ],
        ignored_items=answer.ignored,
    )


@pytest.fixture(scope="module")
def odd() -> Bundle:
    """A small version whose catalogue needs escaping, with missing prices and titles."""
    rng = np.random.default_rng(5)
    n_c, n_i, f = 30, 60, 4
    model = ALSRecommender(factors=f)
    model.user_factors_ = rng.standard_normal((n_c, f), dtype=np.float32)
    model.item_factors_ = rng.standard_normal((n_i, f), dtype=np.float32)
    rows = np.repeat(np.arange(n_c), 4)
    history = sp.csr_matrix(
        (np.ones(rows.size, np.float32), (rows, rng.integers(0, n_i, rows.size))),
        shape=(n_c, n_i),
    )
    history.sum_duplicates()
    catalog = Catalog.empty(n_i)
    catalog.title = np.array([TITLES[j % len(TITLES)] for j in range(n_i)])
    catalog.category = np.array(["", 'Shoes & "Boots"', "Café"] * (n_i // 3))
    catalog.price = np.where(np.arange(n_i) % 4 == 0, np.nan, np.round(rng.random(n_i) * 90, 2))
    catalog.available = np.arange(n_i) % 9 != 0
    return Bundle(
        version="odd-1",
        path=None,  # type: ignore[arg-type]
        manifest={},
        customers=IdIndex(np.array([f"C {i} ü" for i in range(n_c)])),
        items=IdIndex(np.array([f'I"{i}' for i in range(n_i)])),
        history=history,
        popularity=rng.random(n_i, dtype=np.float32),
        catalog=catalog,
        als=model,
    )


def answers_of(answerer: Answerer) -> list[tuple[str | None, Answer]]:
    b = answerer.bundle
    ids = [b.customers.id(i) for i in range(min(len(b.customers), 12))]
    cats = sorted(answerer.categories)[:2]
    items = [b.items.id(j) for j in range(0, b.n_items, max(b.n_items // 5, 1))]
    out: list[tuple[str | None, Answer]] = []
    for cid in [*ids, "nobody", None]:
        out.append((cid, answerer.for_customer(cid, 7)))
        out.append((cid, answerer.for_customer(cid, 3, Rules(categories=cats[:1]))))
        out.append((cid, answerer.for_recent([*items[:3], "unknown item"], 5, customer_id=cid)))
    out.append(("C 1 ü", Answer("popular", [])))  # nothing allowed: an empty list
    # scores that are not finite are written as null, as the models write them
    out.append(("C 2 ü", Answer("personalized", [Pick(1, float("nan"), "x"), Pick(2, -1e-7, "y")])))
    return out


def test_written_bytes_equal_the_models_json_on_an_odd_catalogue(odd):
    answerer = Answerer(odd)
    items_json = ItemJson(odd)
    cases = answers_of(answerer)
    assert {a.strategy for _, a in cases} == {"personalized", "popular", "folded_in"}
    assert any(a.ignored for _, a in cases)
    for cid, answer in cases:
        written = items_json.recommendations(cid, answer)
        assert written == as_models(odd, cid, answer).model_dump_json().encode(), (cid, answer)
    # twice: the second time from the item fields kept for the version
    for cid, answer in cases:
        written = items_json.recommendations(cid, answer)
        assert written == as_models(odd, cid, answer).model_dump_json().encode()
    ids = [cid or "" for cid, _ in cases]
    batch = items_json.batch(ids, [a for _, a in cases])
    expected = BatchResponse(
        model_version=odd.version,
        results=[as_models(odd, cid, a) for cid, (_, a) in zip(ids, cases, strict=True)],
    )
    assert batch == expected.model_dump_json().encode()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_small_shop(tmp_path_factory.mktemp("encoding"))


def test_the_routes_answer_the_models_json(trained):
    with TestClient(create_app(settings(trained.models))) as client:
        answerer = client.app.state.store.answerer  # type: ignore[attr-defined]
        bundle = answerer.bundle
        for cid in [*busy_customers(bundle, 5), "nobody"]:
            r = client.get(f"/v1/customers/{cid}/recommendations", params={"k": 8})
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            expected = as_models(bundle, cid, answerer.for_customer(cid, 8))
            assert r.content == expected.model_dump_json().encode()
            Recommendations.model_validate_json(r.content)  # the documented schema
        recent = [bundle.items.id(0), "never sold"]
        r = client.post("/v1/recommendations", json={"recent_items": recent, "k": 4})
        expected = as_models(bundle, None, answerer.for_recent(recent, 4))
        assert r.status_code == 200 and r.content == expected.model_dump_json().encode()
        assert json.loads(r.content)["ignored_items"] == ["never sold"]
