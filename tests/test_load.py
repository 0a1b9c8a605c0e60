"""A burst of concurrent requests to a real server on the loopback, across a hot swap.

The app runs under uvicorn on 127.0.0.1 (an ephemeral port) while sixteen
keep-alive clients send a bounded number of requests; midway a new version is
published. Every answer must be a 200 from one of the two versions, and no
request may take as long as the server's deadline. Loopback only, bounded in
count and time, and it stops by itself. The listening sockets of several
workers split a burst of new connections between them.
"""

from __future__ import annotations

import gc
import shutil
import socket
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

from recommender.answers import Answerer
from recommender.store.artifacts import publish
from serving.app import create_app
from serving.settings import ServingSettings
from serving.state import ModelStore
from serving.workers import bind_sockets, spreads_connections
from tests.test_hot_reload import Versions, versions  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("thread_limits_restored")

CLIENTS = 16
PER_CLIENT = 60
DEADLINE_S = 2.0


class Server:
    """uvicorn in a background thread on an ephemeral loopback port."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def test_a_burst_across_a_hot_swap_gets_no_error_and_no_slow_answer(versions, tmp_path):  # noqa: F811
    models = tmp_path / "models"
    shutil.copytree(versions.models, models)
    settings = ServingSettings(
        models_dir=models, reload_interval_s=0.05, request_deadline_s=DEADLINE_S
    )
    app = create_app(settings)
    results: list[tuple[int, str | None, float]] = []
    lock = threading.Lock()
    swapped = threading.Event()

    def client(k: int, base: str) -> None:
        with httpx.Client(base_url=base, timeout=10.0) as http:
            for n in range(PER_CLIENT):
                c = versions.customers[(k * PER_CLIENT + n) % len(versions.customers)]
                t0 = time.perf_counter()
                if n % 3 == 2:
                    r = http.post(
                        "/v1/recommendations/batch",
                        json={"customer_ids": versions.customers[:10], "k": 5},
                    )
                else:
                    r = http.get(f"/v1/customers/{c}/recommendations", params={"k": 10})
                took = time.perf_counter() - t0
                version = r.json().get("model_version") if r.status_code == 200 else None
                with lock:
                    results.append((r.status_code, version, took))
                    if len(results) == CLIENTS * PER_CLIENT // 2 and not swapped.is_set():
                        publish(models, versions.b)
                        swapped.set()

    t_start = time.monotonic()
    with Server(app) as base, ThreadPoolExecutor(CLIENTS) as pool:
        assert httpx.get(f"{base}/v1/model").json()["version"] == versions.a
        list(pool.map(lambda k: client(k, base), range(CLIENTS)))
        # the swap lands within a few polls; the last answers come from b
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/v1/model").json()["version"] != versions.b:
            assert time.monotonic() < deadline, "the new version was never served"
            time.sleep(0.05)
    assert time.monotonic() - t_start < 120
    statuses = {s for s, _, _ in results}
    assert statuses == {200}, [r for r in results if r[0] != 200][:5]
    assert len(results) == CLIENTS * PER_CLIENT
    assert {v for _, v, _ in results} <= {versions.a, versions.b}
    assert swapped.is_set()
    slowest = max(t for _, _, t in results)
    assert slowest < DEADLINE_S, slowest


@pytest.mark.skipif(not spreads_connections(), reason="SO_REUSEPORT spreads connections on Linux")
def test_the_workers_sockets_share_the_address_and_split_a_burst_of_connections():
    # what `encore serve --workers 2` binds: one listening socket per worker
    socks = bind_sockets("127.0.0.1", 0, 2)
    clients = []
    try:
        assert len({s.getsockname() for s in socks}) == 1
        for s in socks:
            s.listen(128)
            s.setblocking(False)
        # a burst, as a frontend opens its keep-alive pool; each connection is
        # queued on one socket, so each worker accepts only its share
        for _ in range(64):
            clients.append(socket.create_connection(socks[0].getsockname(), timeout=5))
        accepted = [0, 0]
        deadline = time.monotonic() + 5
        while sum(accepted) < 64 and time.monotonic() < deadline:
            for i, s in enumerate(socks):
                try:
                    conn, _ = s.accept()
                except BlockingIOError:
                    continue
                conn.close()
                accepted[i] += 1
        assert sum(accepted) == 64
        # a hash of the addresses: 64 connections all on one socket would be a 2**-63 chance
        assert min(accepted) >= 8, accepted
    finally:
        for c in clients:
            c.close()
        for s in socks:
            s.close()


def test_each_load_collects_once_then_freezes_and_frees_the_replaced_version(
    versions,  # noqa: F811
    tmp_path,
):
    models = tmp_path / "models"
    shutil.copytree(versions.models, models)
    store = ModelStore(ServingSettings(models_dir=models, reload_interval_s=0, freeze_gc=True))
    try:
        assert store.refresh().ok and store.version == versions.a
        # the libraries and the version are out of the collector's sight...
        assert gc.get_freeze_count() > 10_000
        answerer = store.answerer
        old = weakref.ref(answerer)
        # a version whose objects form a reference cycle: only the collector frees it
        answerer.cycle = [answerer]  # type: ignore[union-attr]
        del answerer
        publish(models, versions.b)
        assert store.refresh().ok and store.version == versions.b
        # ...yet a replaced version is not kept for good
        assert old() is None
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


def test_a_version_is_asked_a_question_before_it_serves(versions, tmp_path, monkeypatch):  # noqa: F811
    models = tmp_path / "models"
    shutil.copytree(versions.models, models)
    store = ModelStore(ServingSettings(models_dir=models, reload_interval_s=0, freeze_gc=False))
    assert store.refresh().ok and store.version == versions.a
    # what a version builds on first use is built while it loads, not by the first requests
    als = store.answerer.bundle.als  # type: ignore[union-attr]
    assert getattr(als, "_item_norms", None) is not None and getattr(als, "_yty", None) is not None

    def broken(self, *args, **kwargs):
        raise ValueError("cannot answer")

    monkeypatch.setattr(Answerer, "for_customer", broken)
    publish(models, versions.b)
    event = store.refresh()
    # a version that cannot answer is refused like a damaged one; the old one serves on
    assert not event.ok and "cannot answer" in event.message
    assert store.version == versions.a
