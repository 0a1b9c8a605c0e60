"""`encore train` / `recommend` end to end, in-process and as a real subprocess."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommender.data.synthetic import generate_shop, write_shop
from recommender.store.artifacts import current_version, list_versions
from recommender.store.bundle import load_bundle
from training import ranking
from training.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    d = tmp_path_factory.mktemp("shop")
    s = generate_shop("demo", n_customers=500, n_items=120, seed=3)
    return s, write_shop(s, d)


@pytest.fixture(scope="module")
def trained(shop, tmp_path_factory):
    _, paths = shop
    models = tmp_path_factory.mktemp("models")
    rc = main(
        [
            "train",
            "--transactions",
            str(paths["transactions"]),
            "--items",
            str(paths["items"]),
            "--models-dir",
            str(models),
            "--top-n",
            "50",
        ]
    )
    assert rc == 0
    return models


def test_train_publishes_an_evaluated_version(trained):
    version = current_version(trained)
    man = json.loads((trained / version / "manifest.json").read_text())
    rank = man["metrics"]["ranking"]
    assert set(rank) == {
        "als", "popularity", "item_knn", "personal_frequency", "p_topfreq", "tifu_knn", "ranker"
    }  # fmt: skip
    assert rank["als"]["ndcg@10"] > 1.5 * rank["popularity"]["ndcg@10"]
    for key in ("rows", "customers", "items", "time_min", "time_max", "sha256"):
        assert key in man["data"]
    assert man["validation"]["rows_dropped"] == 0
    assert man["components"] == {
        "als": True, "topn": True, "timing": True, "repurchase": True, "spend": True,
        "health": True, "ranker": man["serving"]["list"] == "ranker",
    }  # fmt: skip
    assert "timing" in man["metrics"] and "buy_again" in man["metrics"]
    assert man["libraries"]["implicit"] != "not installed"
    assert len(man["config_hash"]) == 16
    # a small log is searched by default (see test_pipeline for the rules)
    assert man["config"]["search"]["enabled"] is None and len(man["search"]["trials"]) > 1


def test_no_search_and_search_options(shop, tmp_path, capsys):
    _, paths = shop
    base = ["train", "--transactions", str(paths["transactions"]), "--no-timing"]
    with pytest.raises(SystemExit) as exc:
        main([*base, "--search", "--no-search"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert main([*base, "--no-search", "--models-dir", str(tmp_path)]) == 0
    man = json.loads((tmp_path / current_version(tmp_path) / "manifest.json").read_text())
    assert man["config"]["search"]["enabled"] is False and man["search"] is None


def test_crash_mid_training_leaves_the_published_version(trained, shop, monkeypatch, capsys):
    _, paths = shop
    before = current_version(trained)
    versions = list_versions(trained)

    def boom(*a, **k):
        raise MemoryError("simulated crash in the middle of fitting")

    monkeypatch.setattr(ranking, "fit_als", boom)
    rc = main(["train", "--transactions", str(paths["transactions"]), "--models-dir", str(trained)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "published model is unchanged" in err and "Traceback" not in err
    assert current_version(trained) == before and list_versions(trained) == versions
    assert not [p for p in trained.iterdir() if p.name.startswith(".tmp")]


def test_as_of_drops_later_rows(shop, tmp_path):
    s, paths = shop
    rc = main(
        [
            "train",
            "--transactions",
            str(paths["transactions"]),
            "--models-dir",
            str(tmp_path),
            "--as-of",
            "2025-11-30",
            "--no-baselines",
        ]
    )
    assert rc == 0
    man = json.loads((tmp_path / current_version(tmp_path) / "manifest.json").read_text())
    later = (s.transactions["timestamp"] >= "2025-12-01").sum()
    assert man["validation"]["dropped"]["after_as_of"] == later > 0
    assert man["as_of"].startswith("2025-12-01")
    assert man["metrics"]["timing"]["window"].startswith("after --as-of")


def test_recommend_all_csv(trained, shop, tmp_path):
    out = tmp_path / "recs.csv"
    assert (
        main(["recommend", "--models-dir", str(trained), "--all", "-k", "5", "--out", str(out)])
        == 0
    )
    t = pd.read_csv(out, dtype={"customer_id": str, "item_id": str})
    assert list(t.columns) == ["customer_id", "rank", "item_id", "score"]
    per = t.groupby("customer_id").size()
    assert (per == 5).all() and len(per) == shop[0].transactions["customer_id"].nunique()
    assert (t.groupby("customer_id")["score"].diff().dropna() <= 1e-9).all()


def test_recommend_customers_file_parquet_and_exclusions(trained, shop, tmp_path):
    s, _ = shop
    # purchases are hidden except items people buy again (the API's rule): take
    # the customer with the most purchases of other items
    b = load_bundle(trained)
    again = set()
    if b.repurchase is not None:
        again = {b.items.id(int(j)) for j in np.flatnonzero(b.repurchase.is_repurchase_item_)}
    others = s.transactions[~s.transactions["item_id"].isin(again)]
    known = others.groupby("customer_id")["item_id"].nunique().idxmax()
    ids = tmp_path / "ids.csv"
    ids.write_text(f"customer_id\n{known}\nnew-customer\n")
    out = tmp_path / "recs.parquet"
    assert (
        main(
            [
                "recommend",
                "--models-dir",
                str(trained),
                "--customers",
                str(ids),
                "-k",
                "10",
                "--exclude-purchased",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    t = pd.read_parquet(out)
    bought = set(s.transactions.loc[s.transactions["customer_id"] == known, "item_id"])
    assert not set(t.loc[t["customer_id"] == known, "item_id"]) & (bought - again)
    # with purchases shown, some of them are picked: the rule above hid something
    assert main(["recommend", "--models-dir", str(trained), "--customers", str(ids), "-k", "10",
                 "--include-purchased", "--out", str(out)]) == 0  # fmt: skip
    shown = pd.read_parquet(out)
    assert set(shown.loc[shown["customer_id"] == known, "item_id"]) & (bought - again)
    # the unknown customer gets the popular list
    assert len(t[t["customer_id"] == "new-customer"]) == 10


def test_recommend_without_a_model(tmp_path, capsys):
    assert main(["recommend", "--models-dir", str(tmp_path), "--all"]) == 2
    assert "encore train" in capsys.readouterr().err


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def test_subprocess_bad_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    p = run_cli("train", "--transactions", str(bad), "--models-dir", str(tmp_path / "m"))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "missing column(s)" in p.stderr


def test_subprocess_strict_names_row_and_column(tmp_path):
    bad = Path(__file__).parent / "data" / "bad" / "every_bad_row.csv"
    p = run_cli(
        "train", "--transactions", str(bad), "--strict", "--models-dir", str(tmp_path / "m")
    )
    assert p.returncode == 2
    assert "row 3 (line 4), column 'customer_id'" in p.stderr and "Traceback" not in p.stderr


def test_subprocess_train_publishes_and_prints_everything(shop, tmp_path):
    """Run as a command whose output goes into a pipe, training prints its
    whole summary, exits 0 and leaves the version published."""
    _, paths = shop
    models = tmp_path / "m"
    p = run_cli("train", "--transactions", str(paths["transactions"]), "--models-dir", str(models))
    assert p.returncode == 0, p.stderr
    # the summary ends with the published version and the run time (the
    # line may wrap where the path is long)
    tail = " ".join(p.stdout.split()[-12:])
    version = current_version(models)
    assert version is not None and "published as current" in tail and version in tail
    assert re.search(r"\(\d+\.\ds\)$", p.stdout.rstrip()), p.stdout[-300:]
