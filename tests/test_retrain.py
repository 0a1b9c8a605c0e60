"""The weekly retraining job: exit codes, the promotion gate, the lock, crash
safety, retention, and managing versions from the command line.

Every run trains the small generated shop of the serving tests (300
customers, 60 items) through ``training.cli.main`` in process, and a few
through a real ``encore`` subprocess; a run takes about a second.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommender.data.synthetic import generate_shop, write_shop
from recommender.store.artifacts import (
    current_version,
    list_versions,
    prune_versions,
    publish_history,
    publish_version,
    read_manifest,
    rollback_target,
)
from recommender.store.lock import LOCK_FILE, StoreLock
from training.cli import EXIT_HELD_BACK, EXIT_INTERNAL, EXIT_LOCKED, EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--factors", "8", "--iterations", "5", "--top-n", "20", "--no-baselines", "--no-search"]


@dataclass
class Logs:
    good: Path
    items: Path
    shuffled: Path
    duplicated_day: Path
    half_customers: Path
    short: Path
    earlier: str
    """An --as-of day two weeks before the end of ``good`` (one week has too few
    buyers in so small a shop to re-score on)."""


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Logs:
    root = tmp_path_factory.mktemp("logs")
    shop = generate_shop("demo", n_customers=300, n_items=60, seed=0)
    paths = write_shop(shop, root / "shop")
    t = pd.read_csv(paths["transactions"], dtype=str)
    rng = np.random.default_rng(1)

    def write(name: str, frame: pd.DataFrame) -> Path:
        frame.to_csv(root / name, index=False)
        return root / name

    shuffled = t.assign(item_id=rng.permutation(t["item_id"].to_numpy()))
    days = t["timestamp"].str[:10]
    busiest = days.value_counts().index[0]  # a day with orders, exported twice
    customers = t["customer_id"].unique()
    kept = set(rng.choice(customers, len(customers) // 2, replace=False))
    end = pd.Timestamp(t["timestamp"].max()).normalize()
    return Logs(
        good=paths["transactions"],
        items=paths["items"],
        shuffled=write("shuffled.csv", shuffled),
        duplicated_day=write("dup.csv", pd.concat([t, t[days == busiest]])),
        half_customers=write("half.csv", t[t["customer_id"].isin(kept)]),
        short=write("short.csv", t[pd.to_datetime(t["timestamp"]) >= end - pd.Timedelta(days=90)]),
        earlier=str((end - pd.Timedelta(days=13)).date()),
    )


def train(log: Path, models: Path, *extra: str, items: Path | None = None) -> int:
    args = ["train", "--transactions", str(log), "--models-dir", str(models), *FAST, *extra]
    return main(args + (["--items", str(items)] if items else []))


@pytest.fixture(scope="module")
def base(logs, tmp_path_factory) -> Path:
    """A store whose current version was trained on the good log."""
    models = tmp_path_factory.mktemp("base") / "models"
    assert train(logs.good, models, items=logs.items) == EXIT_OK
    return models


@pytest.fixture
def store(base, tmp_path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(base, dst)
    return dst


def gate_of(models: Path, version: str) -> dict:
    return read_manifest(models / version)["gate"]


def newest(models: Path) -> str:
    return list_versions(models)[-1]


# -- exit codes and the gate -------------------------------------------------------------------


def test_a_good_log_passes_the_gate_and_is_published(base):
    v = current_version(base)
    g = gate_of(base, v)
    assert g["status"] == "passed" and g["passed"] and g["compared_with"] is None
    checks = {c["check"]: c for c in g["checks"]}
    # a store's first version is still held to popularity (judged for the gate)
    assert checks["beats popularity"]["ok"]
    assert checks["beats popularity"]["candidate"] > checks["beats popularity"]["popularity"]
    pop = read_manifest(base / v)["metrics"]["ranking"]["popularity"]
    assert pop["for_gate_only"] is True
    assert publish_history(base)[-1] == {**publish_history(base)[-1], "version": v, "how": "train"}


def test_the_same_log_again_passes_against_the_current_version(logs, store):
    before = current_version(store)
    assert train(logs.good, store, items=logs.items) == EXIT_OK
    after = current_version(store)
    assert after != before
    g = gate_of(store, after)
    assert g["compared_with"] == before and g["passed"]
    assert any(c["check"] == "ranking vs current" and c["ok"] for c in g["checks"])


def test_a_retrain_weeks_later_rescores_both_versions_on_the_same_weeks(logs, tmp_path):
    models = tmp_path / "models"
    assert train(logs.good, models, "--as-of", logs.earlier) == EXIT_OK
    first = current_version(models)
    assert train(logs.good, models) == EXIT_OK
    g = gate_of(models, current_version(models))
    assert g["compared_with"] == first and "re-scored" in g["method"]
    vs = next(c for c in g["checks"] if c["check"] == "ranking vs current")
    assert "re-scored on" in vs["detail"] and vs["tolerance"] == 0.05


def test_shuffled_item_ids_are_held_back_with_exit_3(logs, store, capsys):
    before = current_version(store)
    assert train(logs.shuffled, store, items=logs.items) == EXIT_HELD_BACK
    err = capsys.readouterr().err
    assert "held back by the promotion gate" in err and "below popularity" in err
    assert err.count("\n") == 1
    assert current_version(store) == before  # still serving the good one
    held = newest(store)
    assert held != before and gate_of(store, held)["status"] == "held back"
    assert main(["models", "list", "--models-dir", str(store)]) == EXIT_OK
    listed = capsys.readouterr().out
    line = next(x for x in listed.splitlines() if held in x)
    assert line.rstrip().endswith("held back") and not line.startswith("*")


def test_the_first_version_of_a_store_must_beat_popularity(logs, tmp_path):
    models = tmp_path / "models"
    assert train(logs.shuffled, models) == EXIT_HELD_BACK
    assert current_version(models) is None and len(list_versions(models)) == 1
    g = gate_of(models, newest(models))
    assert g["compared_with"] is None
    assert any("below popularity" in r for r in g["reasons"])


@pytest.mark.parametrize(
    "which, fragment",
    [
        ("duplicated_day", "duplicates jumped"),
        ("half_customers", "far fewer customers"),
        ("short", "far shorter than the last one"),
    ],
)
def test_broken_exports_are_held_back_naming_the_problem(logs, store, capsys, which, fragment):
    before = current_version(store)
    assert train(getattr(logs, which), store, items=logs.items) == EXIT_HELD_BACK
    assert fragment in capsys.readouterr().err
    assert current_version(store) == before
    assert any(fragment in r for r in gate_of(store, newest(store))["reasons"])


def test_force_publishes_a_held_back_version_and_records_it(logs, store):
    assert train(logs.shuffled, store, "--force", items=logs.items) == EXIT_OK
    v = current_version(store)
    g = gate_of(store, v)
    assert g["status"] == "forced" and g["forced"] and not g["passed"] and g["reasons"]
    assert publish_history(store)[-1]["forced"] is True


def test_no_publish_is_exit_0_even_when_held_back(logs, store):
    before = current_version(store)
    assert train(logs.shuffled, store, "--no-publish") == EXIT_OK
    assert current_version(store) == before


def test_bad_input_is_exit_2_and_a_bug_is_exit_1(logs, tmp_path, monkeypatch, capsys):
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\n1,2\n")
    assert train(junk, tmp_path / "m") == EXIT_USAGE
    import training.stages as stages

    def boom(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(stages, "precompute_top_n", boom)
    assert train(logs.good, tmp_path / "m") == EXIT_INTERNAL
    assert "internal error: ZeroDivisionError" in capsys.readouterr().err


# -- the lock ----------------------------------------------------------------------------------


def test_a_second_run_exits_4_naming_the_holder(logs, store, capsys):
    before = current_version(store)
    with StoreLock(store, what="a test"):
        assert train(logs.good, store) == EXIT_LOCKED
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "--wait" in err and err.count("\n") == 1
    assert current_version(store) == before


def test_wait_takes_the_lock_over_when_it_is_released(logs, store):
    lock = StoreLock(store)
    lock.acquire()
    timer = threading.Timer(1.0, lock.release)
    timer.start()
    try:
        t0 = time.monotonic()
        assert train(logs.good, store, "--wait", "30") == EXIT_OK
        assert time.monotonic() - t0 >= 0.9
    finally:
        timer.cancel()
        lock.release()


def test_a_lock_left_by_a_killed_process_does_not_block(logs, store):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from recommender.store.lock import StoreLock
                import time
                StoreLock({str(store)!r}, what="doomed").acquire()
                print("locked", flush=True)
                time.sleep(120)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert json.loads((store / LOCK_FILE).read_text())["pid"] == holder.pid
        assert train(logs.good, store) == EXIT_LOCKED
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
    # the lock file is still there, naming a dead process; the kernel dropped the lock
    assert train(logs.good, store) == EXIT_OK


# -- crash safety --------------------------------------------------------------------------------


KILLED_RUN = """
import sys, time
import training.pipeline as pipeline
def stall(bundle, plot, **kw):  # called while the version's files are being written
    print("writing", flush=True)
    time.sleep(120)
pipeline.render_report = stall
from training.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_while_writing_leaves_current_serving_and_the_next_run_cleans_up(logs, store):
    before = current_version(store)
    versions = list_versions(store)
    args = ["train", "--transactions", str(logs.good), "--models-dir", str(store), *FAST]
    run = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"},
    )
    try:
        assert run.stdout is not None
        for line in run.stdout:
            if line.strip() == "writing":
                break
        run.send_signal(signal.SIGKILL)
        run.wait(10)
    finally:
        run.kill()
    leftovers = [p.name for p in store.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, "the killed run should have been mid-write"
    assert current_version(store) == before and list_versions(store) == versions
    from recommender.store.bundle import load_bundle

    assert load_bundle(store).version == before  # current still loads and verifies
    assert train(logs.good, store) == EXIT_OK
    assert not [p for p in store.iterdir() if p.name.startswith(".tmp-")]


# -- retention, promote and rollback ----------------------------------------------------------


def copies(models: Path, n: int, year: int = 2999) -> list[str]:
    """``n`` more versions: copies of the current one, named as if made in ``year``."""
    src = current_version(models)
    assert src is not None
    names = []
    for i in range(n):
        name = f"{year}0101T0000{i:02d}Z-c0ffee"
        shutil.copytree(models / src, models / name)
        names.append(name)
    return names


def test_retention_keeps_the_newest_and_never_current_or_the_rollback_target(store):
    old = current_version(store)
    names = copies(store, 5)
    publish_version(store, old, "train")
    publish_version(store, names[0], "promote")  # current: names[0]; rollback target: old
    assert rollback_target(store) == old
    removed = prune_versions(store, keep=2)
    assert set(list_versions(store)) == {old, names[0], names[3], names[4]}
    assert set(removed) == set(names[1:3])


def test_train_keep_prunes_after_publishing(logs, store):
    first = current_version(store)
    copies(store, 3, year=2000)  # older than any run of today
    assert train(logs.good, store, "--keep", "1") == EXIT_OK
    # the new current, and the one before it (the rollback target)
    assert set(list_versions(store)) == {current_version(store), first}


def test_promote_and_rollback(logs, store, capsys):
    a = current_version(store)
    assert train(logs.shuffled, store, items=logs.items) == EXIT_HELD_BACK
    held = newest(store)
    assert main(["models", "promote", held, "--models-dir", str(store)]) == EXIT_OK
    assert current_version(store) == held
    assert main(["models", "rollback", "--models-dir", str(store)]) == EXIT_OK
    assert current_version(store) == a
    assert main(["models", "rollback", "--models-dir", str(store)]) == EXIT_OK
    assert current_version(store) == held  # like `cd -`
    assert [e["how"] for e in publish_history(store)][-3:] == ["promote", "rollback", "rollback"]
    assert main(["models", "show", a, "--models-dir", str(store)]) == EXIT_OK
    shown = capsys.readouterr().out
    assert a in shown and "gate        passed" in shown and "report.html" in shown
    assert main(["models", "promote", "nope", "--models-dir", str(store)]) == EXIT_USAGE


def test_rollback_with_nothing_before_is_exit_2(base, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(base, models)
    assert main(["models", "rollback", "--models-dir", str(models)]) == EXIT_USAGE
    assert "nothing to roll back to" in capsys.readouterr().err


def test_promote_refuses_a_damaged_version(store, capsys):
    (name,) = copies(store, 1)
    (store / name / "als.npz").write_bytes(b"broken")
    before = current_version(store)
    assert main(["models", "promote", name, "--models-dir", str(store)]) == EXIT_USAGE
    assert current_version(store) == before
    assert main(["models", "list", "--models-dir", str(store)]) == EXIT_OK
    assert "DAMAGED" in capsys.readouterr().out


# -- a real subprocess ---------------------------------------------------------------------------


def encore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_subprocess_exit_codes_0_3_and_4(logs, tmp_path):
    models = str(tmp_path / "models")
    p = encore("train", "--transactions", str(logs.good), "--models-dir", models, *FAST)
    assert p.returncode == EXIT_OK, p.stderr
    p = encore("train", "--transactions", str(logs.shuffled), "--models-dir", models, *FAST)
    assert p.returncode == EXIT_HELD_BACK, p.stderr
    assert "below popularity" in p.stderr
    with StoreLock(models):
        p = encore("train", "--transactions", str(logs.good), "--models-dir", models, *FAST)
    assert p.returncode == EXIT_LOCKED and "locked" in p.stderr


def test_a_five_row_log_and_a_window_longer_than_the_log_are_held_back(
    logs, store, tmp_path, capsys
):
    five = tmp_path / "five.csv"
    five.write_text("".join(logs.good.read_text().splitlines(keepends=True)[:6]))
    before = current_version(store)
    assert train(five, store) == EXIT_HELD_BACK
    assert "far fewer rows" in capsys.readouterr().err
    assert train(logs.good, store, "--eval-days", "400") == EXIT_HELD_BACK
    assert "has no served/ndcg@10" in capsys.readouterr().err
    assert current_version(store) == before
    # a first version too: nothing shows its list beats popularity
    assert train(five, tmp_path / "fresh") == EXIT_HELD_BACK
    assert "beats popularity" in capsys.readouterr().err
    assert current_version(tmp_path / "fresh") is None
