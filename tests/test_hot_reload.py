"""Hot reload under load: new versions swap in, broken ones are refused, no request fails.

The app polls ``models/current`` every 50 ms while four threads send requests
without pause; the test publishes a good version, then a series of corrupt
and half-written ones, then rolls back, and every single response must be a
200 answered by a version that passed its checks.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from recommender.store.artifacts import CURRENT_POINTER, publish, sha256_file
from recommender.store.bundle import load_bundle
from serving.app import create_app
from serving.settings import ServingSettings
from tests.test_serving import TrainedShop, train_small_shop

POLL_S = 0.05
TIMEOUT_S = 15.0


pytestmark = pytest.mark.usefixtures("thread_limits_restored")


@dataclass
class Versions:
    models: Path  # holds version A (published) and version B (not published)
    a: str
    b: str
    customers: list[str]  # known to both versions
    items: list[str]


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> Versions:
    root = tmp_path_factory.mktemp("reload")
    first: TrainedShop = train_small_shop(root / "a", seed=0)
    second: TrainedShop = train_small_shop(root / "b", seed=1, do_publish=False)
    shutil.copytree(second.models / second.version, first.models / second.version)
    ba, bb = load_bundle(first.models, first.version), load_bundle(first.models, second.version)
    customers = sorted(set(ba.customers.ids_) & set(bb.customers.ids_))
    items = sorted(set(ba.items.ids_) & set(bb.items.ids_))
    assert len(customers) > 50 and len(items) > 20
    return Versions(first.models, first.version, second.version, customers[:40], items[:20])


@pytest.fixture
def models(versions, tmp_path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(versions.models, dst)
    return dst


# -- ways to break a version ------------------------------------------------------------------


def copy_version(models: Path, src: str, name: str) -> Path:
    """A copy of version ``src`` named ``name`` (its manifest says so too)."""
    dst = models / name
    shutil.copytree(models / src, dst)
    man = json.loads((dst / "manifest.json").read_text())
    man["version"] = name
    (dst / "manifest.json").write_text(json.dumps(man))
    return dst


def flip_bytes(path: Path) -> Path:
    """Same size, different bytes: only the sha256 check can tell."""
    data = bytearray((path / "als.npz").read_bytes())
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    (path / "als.npz").write_bytes(bytes(data))
    return path


def truncate(path: Path) -> Path:
    f = path / "als.npz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return path


def bad_manifest(path: Path) -> Path:
    (path / "manifest.json").write_text('{"format": "encore-bundle", "schema_')
    return path


def future_schema(path: Path) -> Path:
    man = json.loads((path / "manifest.json").read_text())
    man["schema_version"] = 99
    (path / "manifest.json").write_text(json.dumps(man))
    return path


def nan_factors_with_good_hashes(path: Path) -> Path:
    """Garbage that passes the hash check: NaN factors, manifest updated to match."""
    with np.load(path / "als.npz") as f:
        uf, itf = f["user_factors"].copy(), f["item_factors"]
    uf[3, 1] = np.nan
    with open(path / "als.npz", "wb") as fh:
        np.savez(fh, user_factors=uf, item_factors=itf)
    man = json.loads((path / "manifest.json").read_text())
    man["files"]["als.npz"]["sha256"] = sha256_file(path / "als.npz")
    man["files"]["als.npz"]["bytes"] = (path / "als.npz").stat().st_size
    (path / "manifest.json").write_text(json.dumps(man))
    return path


def missing_file(path: Path) -> Path:
    """Half-written: the manifest is there, a file it lists is not."""
    (path / "timing.npz").unlink()
    return path


CORRUPT: dict[str, Callable[[Path], Path]] = {
    "flipped": flip_bytes,
    "truncated": truncate,
    "bad-manifest": bad_manifest,
    "future-schema": future_schema,
    "nan-factors": nan_factors_with_good_hashes,
    "missing-file": missing_file,
}


def point_current_at(models: Path, name: str) -> None:
    """Switch ``current`` by hand (``publish`` refuses incomplete versions)."""
    tmp = models / ".pointer"
    tmp.write_text(name + "\n")
    tmp.replace(models / CURRENT_POINTER)


# -- load ---------------------------------------------------------------------------------------


@dataclass
class Load:
    """Threads sending requests until stopped; every answer is recorded."""

    client: TestClient
    customers: list[str]
    items: list[str]
    threads: int = 4
    stop: threading.Event = field(default_factory=threading.Event)
    statuses: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _requests(self, n: int):
        c = self.customers[n % len(self.customers)]
        i = self.items[n % len(self.items)]
        kind = n % 5
        if kind == 0:
            return self.client.get(f"/v1/customers/{c}/recommendations", params={"k": 5})
        if kind == 1:
            return self.client.get(f"/v1/customers/{c}/next-purchase")
        if kind == 2:
            return self.client.post("/v1/recommendations", json={"recent_items": [i], "k": 5})
        if kind == 3:
            return self.client.get(f"/v1/items/{i}/similar", params={"k": 5})
        return self.client.post(
            "/v1/recommendations/batch", json={"customer_ids": self.customers[:8], "k": 3}
        )

    def _run(self, seed: int) -> None:
        n = seed
        while not self.stop.is_set():
            try:
                r = self._requests(n)
                version = r.json().get("model_version") if r.status_code == 200 else None
                ok = r.status_code == 200 and version is not None
                detail = "" if ok else f"{r.status_code} {r.text[:200]}"
            except Exception as exc:  # the request itself blew up: a failure too
                ok, version, detail = False, None, f"{type(exc).__name__}: {exc}"
                r = None
            with self.lock:
                self.statuses[r.status_code if r is not None else "exception"] += 1
                if ok:
                    self.versions[version] += 1
                else:
                    self.failures.append(detail)
            n += self.threads

    def __enter__(self) -> Load:
        self._threads = [
            threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(self.threads)
        ]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "a request thread hung"

    def total(self) -> int:
        with self.lock:
            return sum(self.statuses.values())

    def seen(self, version: str) -> int:
        with self.lock:
            return self.versions[version]


def wait_for(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def model_info(client: TestClient) -> dict:
    r = client.get("/v1/model")
    assert r.status_code == 200, f"no model served: {r.status_code} {r.text}"
    return r.json()


def served(client: TestClient) -> str:
    return model_info(client)["version"]


def refused(client: TestClient, name: str) -> bool:
    events = model_info(client)["reloads"]["last_events"]
    return any(e["version"] == name and not e["ok"] for e in events)


def settle(load: Load, version: str, more: int = 40) -> None:
    """Let the load run until it has seen ``more`` further answers from ``version``."""
    target = load.seen(version) + more
    wait_for(lambda: load.seen(version) >= target, f"{more} more answers from {version}")


# -- the scenario -------------------------------------------------------------------------------


def test_versions_swap_under_load_and_broken_ones_are_refused(versions, models):
    a, b = versions.a, versions.b
    app = create_app(ServingSettings(models_dir=models, reload_interval_s=POLL_S))
    with TestClient(app) as client:
        assert served(client) == a
        with Load(client, versions.customers, versions.items) as load:
            settle(load, a)

            # (a) a new good version is picked up by polling
            publish(models, b)
            wait_for(lambda: served(client) == b, f"version {b} to be served")
            settle(load, b)

            # (b) corrupt versions are refused and b keeps serving
            for name, damage in CORRUPT.items():
                damage(copy_version(models, a, name))
                publish(models, name)
                wait_for(lambda n=name: refused(client, n), f"{name} to be refused")
                assert served(client) == b, name
                assert client.get("/readyz").json() == {
                    "status": "ready",
                    "version": b,
                    "detail": None,
                    "fallback_from": None,
                }
                settle(load, b, more=10)

            # (c) half-written: a temporary directory, and a version that never arrived
            half = models / ".tmp-half-written"
            half.mkdir()
            (half / "customers.npy").write_bytes(b"\x93NUMPY")
            for name in (half.name, "20990101T000000Z-gone"):
                point_current_at(models, name)
                wait_for(lambda n=name: refused(client, n), f"{name} to be refused")
                assert served(client) == b
                settle(load, b, more=10)

            # a refused version is not retried on every poll
            failed_before = model_info(client)["reloads"]["reloads_failed"]
            time.sleep(6 * POLL_S)
            assert model_info(client)["reloads"]["reloads_failed"] == failed_before

            # rolling back to the first version works like any other publish
            publish(models, a)
            wait_for(lambda: served(client) == a, f"roll back to {a}")
            settle(load, a)

        metrics = client.get("/metrics").text

    assert load.failures == [], (len(load.failures), load.failures[:5], load.statuses)
    assert set(load.versions) == {a, b}, load.versions  # never a refused version
    assert load.total() > 300, load.statuses
    n_refused = len(CORRUPT) + 2
    gauges = {
        s.labels["outcome"]: s.value
        for fam in text_string_to_metric_families(metrics)
        for s in fam.samples
        if s.name == "encore_model_reloads"
    }
    assert gauges == {"ok": 3.0, "failed": float(n_refused)}


def test_damaged_versions_are_refused_even_without_hash_checks(versions, models):
    """``ENCORE_VERIFY_HASHES=false`` skips the sha256 check, not the refusal.

    Flipped bytes inside ``als.npz`` then surface as ``zipfile.BadZipFile``
    (a bad CRC); that must be a refused version, counted and reported, not
    an error retried and logged on every poll.
    """
    app = create_app(ServingSettings(models_dir=models, reload_interval_s=0, verify_hashes=False))
    with TestClient(app) as client:
        store = app.state.store
        for name, damage in CORRUPT.items():
            damage(copy_version(models, versions.a, name))
            publish(models, name)
            event = store.refresh()
            assert not event.ok and name in event.message, (name, event)
            assert store.version == versions.a
            assert refused(client, name)
            # refused once, not retried on the next poll
            assert store.refresh().message.startswith("refused earlier")
        assert store.reloads_failed == len(CORRUPT)
        assert client.get("/v1/customers/x/recommendations").json()["model_version"] == versions.a


def test_admin_reload_under_load(versions, models):
    a, b = versions.a, versions.b
    token = {"Authorization": "Bearer t0ken"}
    app = create_app(ServingSettings(models_dir=models, reload_interval_s=0, admin_token="t0ken"))
    with TestClient(app) as client:
        with Load(client, versions.customers, versions.items) as load:
            settle(load, a)
            publish(models, b)
            r = client.post("/v1/admin/reload", headers=token)
            assert r.status_code == 200 and r.json()["version"] == b, r.text
            settle(load, b)
            truncate(copy_version(models, a, "truncated"))
            publish(models, "truncated")
            r = client.post("/v1/admin/reload", headers=token)
            assert r.status_code == 409 and "truncated" in r.json()["detail"], r.text
            settle(load, b)
            # the same version again is a reload, not a change: still no failure
            publish(models, b)
            assert client.post("/v1/admin/reload", headers=token).status_code == 200
            settle(load, b)
    assert load.failures == [], (load.failures[:5], load.statuses)
    assert set(load.versions) == {a, b}


def test_a_request_in_flight_finishes_on_the_version_it_started_with(versions, models):
    a, b = versions.a, versions.b
    app = create_app(ServingSettings(models_dir=models, reload_interval_s=0))
    with TestClient(app) as client:
        store = app.state.store
        old = store.answerer
        started, go = threading.Event(), threading.Event()
        # a batch: it runs in a worker thread, so the loop answers others while it is
        # held (one customer's answer runs on the loop, where holding it would hold all)
        real = old.for_ids

        def held(*args, **kwargs):
            started.set()
            assert go.wait(TIMEOUT_S), "the test never released the request"
            return real(*args, **kwargs)

        old.for_ids = held  # only this answerer instance waits
        result: dict = {}
        cid = versions.customers[0]
        t = threading.Thread(
            target=lambda: result.update(
                r=client.post("/v1/recommendations/batch", json={"customer_ids": [cid], "k": 5})
            )
        )
        t.start()
        try:
            assert started.wait(TIMEOUT_S), "the request never reached the answerer"
            publish(models, b)
            assert store.refresh().ok and store.version == b
            # while the old request is still held, new ones are answered by b
            now = client.get(f"/v1/customers/{cid}/recommendations", params={"k": 5})
            assert now.status_code == 200 and now.json()["model_version"] == b
        finally:
            go.set()
            t.join(TIMEOUT_S)
        r = result["r"]
        assert r.status_code == 200 and r.json()["model_version"] == a
        assert len(r.json()["results"][0]["items"]) == 5
