"""What the server does with the versions ``encore models`` manages: it picks
up a promotion or a rollback without a restart, falls back at start-up to the
newest good version when the published one is damaged, says why when nothing
can be served, and serves each version's training report."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recommender.store.artifacts import current_version, publish, publish_version, read_manifest
from serving.app import create_app
from serving.settings import ServingSettings
from tests.test_hot_reload import Versions, copy_version, flip_bytes, versions  # noqa: F401
from training.cli import EXIT_OK, main

pytestmark = pytest.mark.usefixtures("thread_limits_restored")


@pytest.fixture
def models(versions, tmp_path) -> Path:  # noqa: F811
    dst = tmp_path / "models"
    shutil.copytree(versions.models, dst)
    return dst


def app(models: Path, poll: float = 0.0):
    return create_app(ServingSettings(models_dir=models, reload_interval_s=poll))


def wait_until(client: TestClient, version: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/v1/model").json().get("version") == version:
            return
        time.sleep(0.02)
    raise AssertionError(f"the server never served {version}")


def test_the_server_picks_up_promote_and_rollback_without_a_restart(models, versions):  # noqa: F811
    a, b = versions.a, versions.b
    publish_version(models, a, "train")
    with TestClient(app(models, poll=0.05)) as client:
        assert client.get("/v1/model").json()["version"] == a
        assert main(["models", "promote", b, "--models-dir", str(models)]) == EXIT_OK
        wait_until(client, b)
        assert main(["models", "rollback", "--models-dir", str(models)]) == EXIT_OK
        assert current_version(models) == a
        wait_until(client, a)  # a version it served before loads again


def test_a_version_refused_once_loads_after_current_moved_elsewhere(models, versions):  # noqa: F811
    a, b = versions.a, versions.b
    stash = models / "stash.npz"
    with TestClient(app(models, poll=0.05)) as client:
        shutil.move(models / b / "als.npz", stash)  # b unreadable for a moment
        publish(models, b)
        deadline = time.monotonic() + 15
        while not any(
            e["version"] == b and not e["ok"]
            for e in client.get("/v1/model").json()["reloads"]["last_events"]
        ):
            assert time.monotonic() < deadline, "b was never refused"
            time.sleep(0.02)
        assert client.get("/v1/model").json()["version"] == a
        shutil.move(stash, models / b / "als.npz")
        publish(models, a)
        time.sleep(0.2)
        publish(models, b)  # current moved away and back: b gets a new chance
        wait_until(client, b)


def test_start_up_falls_back_to_the_newest_good_version(models, versions):  # noqa: F811
    a, b = versions.a, versions.b
    newest = "29990101T000000Z-dead00"
    flip_bytes(copy_version(models, b, newest))
    publish(models, newest)
    with TestClient(app(models)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        # b is newer than a by name only if the fixture wrote it later
        good = max(a, b)
        assert body["version"] == good and body["fallback_from"] == newest
        assert "damaged" in body["detail"] and "sha256" in body["detail"]
        info = client.get("/v1/model").json()
        assert info["version"] == good and info["fallback_from"] == newest
        assert newest in info["note"]
        r = client.get(f"/v1/customers/{versions.customers[0]}/recommendations")
        assert r.status_code == 200
        # a good version published later replaces the stand-in and clears the note
        publish(models, a)
        client.app.state.store.refresh()  # what the poll does (it is off here)
        info = client.get("/v1/model").json()
        assert info["version"] == a and info["fallback_from"] is None and info["note"] is None


def test_held_back_versions_are_not_fallen_back_to(models, versions):  # noqa: F811
    a, b = versions.a, versions.b
    held = "29990101T000000Z-be1d00"
    path = copy_version(models, b, held)
    man = read_manifest(path)
    assert "gate" in man  # versions written by the pipeline carry a verdict
    text = (path / "manifest.json").read_text()
    (path / "manifest.json").write_text(text.replace('"status": "passed"', '"status": "held back"'))
    broken = "29990102T000000Z-dead00"
    flip_bytes(copy_version(models, b, broken))
    publish(models, broken)
    with TestClient(app(models)) as client:
        assert client.get("/readyz").json()["version"] == max(a, b)


def test_503_says_nothing_is_published_or_every_version_is_damaged(tmp_path, models, versions):  # noqa: F811
    empty = tmp_path / "empty"
    empty.mkdir()
    with TestClient(app(empty)) as client:
        r = client.get("/v1/customers/x/recommendations")
        assert r.status_code == 503 and "no model is published" in r.json()["detail"]
    for v in (versions.a, versions.b):
        flip_bytes(models / v)
    publish(models, versions.a)
    with TestClient(app(models)) as client:
        r = client.get("/v1/customers/x/recommendations")
        detail = r.json()["detail"]
        assert r.status_code == 503 and "damaged" in detail and "sha256" in detail
        assert "no other good version" in detail or "other version(s) tried" in detail
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "damaged" in ready.json()["detail"]


def test_the_report_holds_the_manifests_figures_and_is_served(models, versions):  # noqa: F811
    publish(models, versions.a)
    man = read_manifest(models / versions.a)
    page = (models / versions.a / "report.html").read_text()
    assert "report.html" in man["files"]  # hashed like every file
    assert versions.a in page
    als = man["metrics"]["ranking"]["als"]["ndcg@10"]
    assert f"{als:.4f}" in page
    assert f"{man['metrics']['timing']['rmse']:.4f}" in page
    assert f"{man['data']['rows']:,}" in page
    assert man["gate"]["status"] in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 2  # calibration, days
    assert "Sample customers" in page and "http" not in page.lower().replace("http-equiv", "")
    with TestClient(app(models)) as client:
        info = client.get("/v1/model").json()
        assert info["report_url"] == "/v1/model/report"
        assert info["gate"]["status"] == man["gate"]["status"]
        r = client.get("/v1/model/report")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert r.text == page
