"""Bounded work per request: body size, a deadline, batch size times k, and
paths that cannot name an id; and the small things a new user tripped on."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from recommender.answers import Answerer
from serving.app import create_app
from tests.test_serving import settings, train_small_shop

pytestmark = pytest.mark.usefixtures("thread_limits_restored")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_small_shop(tmp_path_factory.mktemp("limits"))


@pytest.fixture(scope="module")
def client(trained):
    with TestClient(create_app(settings(trained.models, max_body_bytes=64 * 1024))) as c:
        yield c


def test_head_of_the_page_is_answered(client):
    r = client.head("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("/v1/customers/a%0Ab/recommendations", "control character"),
        ("/v1/customers/a%00/next-purchase", "control character"),
        ("/v1/customers/a%FFb/recommendations", "not valid UTF-8"),
        ("/v1/customers/x/recommendations?exclude_items=a%0Db", "control character"),
        ("/v1/customers/x/recommendations?exclude_items=%C3%28", "not valid UTF-8"),
    ],
)
def test_ids_that_cannot_exist_are_422_not_404_or_echoed(client, url, fragment):
    r = client.get(url)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]


def test_an_id_with_accents_and_spaces_still_answers(client):
    r = client.get("/v1/customers/Ren%C3%A9e%20M%C3%BCller/recommendations?k=2")
    assert r.status_code == 200 and r.json()["strategy"] == "popular"


def test_a_batch_is_bounded_by_customers_times_k(client, trained):
    ids = [f"c{i}" for i in range(1000)]
    r = client.post("/v1/recommendations/batch", json={"customer_ids": ids, "k": 956})
    assert r.status_code == 422
    assert "at most 20,000 picks" in r.json()["detail"] and "956,000" in r.json()["detail"]
    r = client.post("/v1/recommendations/batch", json={"customer_ids": ids, "k": 20})
    assert r.status_code == 200 and len(r.json()["results"]) == 1000


def test_a_large_body_is_413_whether_or_not_it_says_its_length(client):
    big = b'{"customer_ids": ["x"], "junk": "' + b"a" * (10 << 20) + b'"}'
    headers = {"content-type": "application/json"}
    r = client.post("/v1/recommendations/batch", content=big, headers=headers)
    assert r.status_code == 413 and "over 65,536 bytes" in r.json()["detail"]

    def streamed():  # no Content-Length: the limit counts what arrives
        for start in range(0, len(big), 1 << 16):
            yield big[start : start + (1 << 16)]

    r = client.post("/v1/recommendations/batch", content=streamed(), headers=headers)
    assert r.status_code == 413 and "over 65,536 bytes" in r.json()["detail"]
    # a body under the limit is still read
    r = client.post("/v1/recommendations/batch", json={"customer_ids": ["x"], "k": 3})
    assert r.status_code == 200


def test_a_request_past_its_deadline_gets_503_in_time(trained, monkeypatch):
    def slow(self, *args, **kwargs):
        time.sleep(1.5)
        raise AssertionError("the answer of a request past its deadline is never sent")

    # the batch: the route whose work can be long (one customer's answer is
    # bounded to milliseconds and answered on the event loop)
    monkeypatch.setattr(Answerer, "for_ids", slow)
    with TestClient(create_app(settings(trained.models, request_deadline_s=0.3))) as c:
        t0 = time.perf_counter()
        r = c.post("/v1/recommendations/batch", json={"customer_ids": ["x"], "k": 3})
        took = time.perf_counter() - t0
        assert r.status_code == 503 and "longer than 0.3 s" in r.json()["detail"]
        assert took < 1.2
        assert c.get("/healthz").status_code == 200  # the server goes on answering


def test_docs_load_their_assets_from_the_package(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "http://" not in page.text.replace(
        "http://testserver", ""
    )
    assets = [s.split('"')[0] for s in page.text.split('src="')[1:]]
    assets += [s.split('"')[0] for s in page.text.split('href="')[1:]]
    local = [a for a in assets if a.startswith("/")]
    assert any(a.endswith(".js") for a in local) and any(a.endswith(".css") for a in local)
    for a in local:
        assert client.get(a).status_code == 200, a
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "cdn" not in redoc.text.lower()
