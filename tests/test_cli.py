"""The ``encore`` command line: exit codes, one-line errors, and the recommend export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommender.answers import Answerer
from recommender.ranking.base import top_k
from recommender.ranking.two_stage import rank_customers
from recommender.store.artifacts import current_version, list_versions
from recommender.store.bundle import load_bundle
from training import ranking
from training.cli import main
from training.export import export_recommendations

ROOT = Path(__file__).resolve().parents[1]
N_CUSTOMERS, N_ITEMS, N_GROUPS = 200, 60, 3
UCI_COLUMNS = (
    "customer_id=CustomerID,item_id=StockCode,timestamp=InvoiceDate,"
    "quantity=Quantity,price=UnitPrice"
)


def uci_shop(seed: int = 0) -> pd.DataFrame:
    """A UCI-Online-Retail-shaped export: taste groups, plus cancellations and guest orders."""
    rng = np.random.default_rng(seed)
    per_group = N_ITEMS // N_GROUPS
    rows = []
    for c in range(N_CUSTOMERS):
        g = c % N_GROUPS
        for j in range(3 + rng.poisson(6)):
            it = g * per_group + int(rng.integers(per_group)) if rng.random() < 0.85 else 0
            it = it if it else int(rng.integers(N_ITEMS))
            when = pd.Timestamp("2011-01-01") + pd.Timedelta(minutes=int(rng.integers(100 * 1440)))
            rows.append(
                (f"5{c:04d}{j:02d}", f"2{it:04d}", f"ITEM {it}", int(rng.integers(1, 13)),
                 when.strftime("%Y-%m-%d %H:%M:%S"), 1.25, str(12000 + c), "United Kingdom")
            )  # fmt: skip
    rows.append(("C581490", "20007", "ITEM 7", -3, "2011-03-01 10:00:00", 1.25, "12003", "UK"))
    rows.append(("581491", "20008", "ITEM 8", 2, "2011-03-01 10:05:00", 1.25, "", "UK"))
    cols = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
            "CustomerID", "Country"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


@pytest.fixture(scope="module")
def shop_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shop") / "online_retail.csv"
    uci_shop().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def models(shop_csv, tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("models")
    rc = main(
        ["train", "--transactions", str(shop_csv), "--columns", UCI_COLUMNS,
         "--models-dir", str(models), "--no-timing", "--factors", "8", "--iterations", "6",
         "--top-n", "20"]
    )  # fmt: skip
    assert rc == 0
    return models


def history(shop_csv: Path) -> dict[str, set[str]]:
    raw = pd.read_csv(shop_csv, dtype=str)
    raw = raw[raw["CustomerID"].notna() & (raw["Quantity"].astype(int) > 0)]
    return raw.groupby("CustomerID")["StockCode"].agg(set).to_dict()


def run_recommend(models: Path, out: Path, *args: str) -> pd.DataFrame:
    rc = main(["recommend", "--models-dir", str(models), "--out", str(out), *args])
    assert rc == 0
    if out.suffix == ".parquet":
        return pd.read_parquet(out)
    return pd.read_csv(out, dtype={"customer_id": str, "item_id": str})


def check_ranked(table: pd.DataFrame, k: int) -> None:
    assert list(table.columns) == ["customer_id", "rank", "item_id", "score"]
    for _, g in table.groupby("customer_id", sort=False):
        assert g["rank"].tolist() == list(range(1, k + 1))
        assert g["item_id"].is_unique
        assert (np.diff(g["score"].to_numpy()) <= 0).all()


# --- train -------------------------------------------------------------------------


def test_train_with_columns_publishes_a_version(models, shop_csv):
    version = current_version(models)
    assert version and list_versions(models) == [version]
    b = load_bundle(models)
    val = b.manifest["validation"]
    assert val["dropped"]["non_positive_quantity"] == 1
    assert val["dropped"]["missing_customer_id"] == 1
    assert val["first_offence"]["missing_customer_id"]["column"] == "CustomerID"
    assert b.n_customers == N_CUSTOMERS and "12003" in b.customers
    assert b.als is not None and b.manifest["config"]["als"]["factors"] == 8


def test_train_on_a_file_that_is_not_a_log_is_exit_2_one_line(tmp_path, capsys):
    bad = tmp_path / "photo.csv"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(300))
    rc = main(["train", "--transactions", str(bad), "--models-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("encore train: error: ")
    assert "binary" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists() or current_version(tmp_path / "m") is None


def test_train_without_columns_says_how_to_map(shop_csv, tmp_path, capsys):
    rc = main(["train", "--transactions", str(shop_csv), "--models-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "--columns customer_id=YourColumn" in err and "CustomerID" in err


def test_strict_names_row_and_column(shop_csv, tmp_path, capsys):
    rc = main(
        ["train", "--transactions", str(shop_csv), "--columns", UCI_COLUMNS, "--strict",
         "--models-dir", str(tmp_path / "m"), "--no-timing"]
    )  # fmt: skip
    err = capsys.readouterr().err
    n = len(uci_shop())
    assert rc == 2 and err.count("\n") == 1
    # the cancellation is data row n-1 (file line n), the first bad row
    assert f"row {n - 1} (line {n})" in err and "column 'Quantity'" in err
    assert "--strict" in err
    assert current_version(tmp_path / "m") is None


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--columns", UCI_COLUMNS, "--as-of", "someday"], "--as-of"),
        (["--columns", "shopper=CustomerID"], "unknown column"),
        (["--event-weights", "view=much"], "event weight"),
    ],
)
def test_bad_options_are_exit_2_one_line(shop_csv, tmp_path, capsys, args, fragment):
    rc = main(["train", "--transactions", str(shop_csv), "--models-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and fragment in err


def test_internal_error_is_one_line_exit_1_and_keeps_the_model(
    models, shop_csv, monkeypatch, capsys
):
    before = current_version(models)

    def boom(*a, **k):
        raise ValueError("simulated bug")

    monkeypatch.setattr(ranking, "fit_als", boom)
    rc = main(
        ["train", "--transactions", str(shop_csv), "--columns", UCI_COLUMNS,
         "--models-dir", str(models), "--no-timing"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "internal error: ValueError: simulated bug" in err and "unchanged" in err
    assert current_version(models) == before and list_versions(models) == [before]


# --- recommend ---------------------------------------------------------------------


def test_recommend_all_writes_k_ranked_rows_per_customer(models, tmp_path, capsys):
    table = run_recommend(models, tmp_path / "recs.csv", "--all", "-k", "7")
    b = load_bundle(models)
    assert len(table) == 7 * b.n_customers
    assert set(table["customer_id"]) == set(b.customers.ids_)
    assert set(table["item_id"]) <= set(b.items.ids_)
    check_ranked(table, 7)
    assert f"{b.n_customers:,} customers personalised" in capsys.readouterr().out
    # the lists are the served list's: re-ranking one customer gives the same order
    row = b.customers.row("12005")
    got = table[table["customer_id"] == "12005"]["item_id"].tolist()
    if b.served == "ranker":
        # the ranker ranks purchases like any item: nothing is hidden by default
        want, _ = rank_customers(b.stage, b.ranker, np.array([row]), 7)
        assert got == [b.items.id(i) for i in want[0]]
        return
    # ALS or item-kNN: what they bought hidden (all but repurchase items, as the API does)
    bought = b.history[row].indices
    if b.repurchase is not None:
        bought = bought[~np.asarray(b.repurchase.is_repurchase_item_, dtype=bool)[bought]]
    assert bought.size
    if b.served != "als":
        # a baseline beat the ranker: its whole-log table is served
        assert b.served == "item_knn" and b.topn_items is not None
        want = [i for i in b.topn_items[row] if i >= 0 and i not in set(bought)][:7]
        assert len(want) == 7 and got == [b.items.id(i) for i in want]
        return
    scores = b.als.score(np.array([row]))
    scores[0, bought] = -np.inf
    want, _ = top_k(scores, 7)
    assert got == [b.items.id(i) for i in want[0]]
    # and with purchases shown, the plain top-7 of the model
    shown = run_recommend(models, tmp_path / "all.csv", "--all", "-k", "7", "--include-purchased")
    want, _ = b.als.recommend(np.array([row]), b.history, k=7)
    got = shown[shown["customer_id"] == "12005"]["item_id"].tolist()
    assert got == [b.items.id(i) for i in want[0]]


def test_purchases_are_shown_as_the_served_list_ranks_them(models, shop_csv, tmp_path):
    hist = history(shop_csv)
    b = load_bundle(models)
    again = set()
    if b.repurchase is not None:
        again = {b.items.id(int(j)) for j in np.flatnonzero(b.repurchase.is_repurchase_item_)}
    ids = tmp_path / "ids.csv"
    some = sorted(hist)[:40]
    ids.write_text("customer_id\n" + "\n".join(some) + "\n")
    args = ("--customers", str(ids), "-k", "10")
    plain = run_recommend(models, tmp_path / "a.csv", *args, "--include-purchased")
    default = run_recommend(models, tmp_path / "b.csv", *args)
    excl = run_recommend(models, tmp_path / "c.csv", *args, "--exclude-purchased")

    def bought(table, *, one_off_only: bool):
        return sum(
            it in hist[c] and not (one_off_only and it in again)
            for c, it in zip(table["customer_id"], table["item_id"], strict=True)
        )

    assert bought(plain, one_off_only=False) > 0  # else this test could not tell
    assert bought(excl, one_off_only=False) == 0  # explore-only: nothing bought
    check_ranked(excl, 10)
    if b.served == "ranker":
        pd.testing.assert_frame_equal(default, plain)  # the ranker shows what it ranks
    else:
        assert bought(default, one_off_only=True) == 0  # ALS: repurchase items only


def test_parquet_output_matches_csv(models, tmp_path):
    ids = tmp_path / "ids.csv"
    ids.write_text("customer_id\n12001\nstranger\n12100\n")
    args = ("--customers", str(ids), "-k", "4")
    csv = run_recommend(models, tmp_path / "r.csv", *args)
    pq = run_recommend(models, tmp_path / "r.parquet", *args)
    assert list(pq.columns) == ["customer_id", "rank", "item_id", "score"]
    pd.testing.assert_frame_equal(
        pq.reset_index(drop=True), csv.reset_index(drop=True), check_dtype=False
    )


def test_recommend_without_a_model_says_how_to_train(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["recommend", "--models-dir", str(tmp_path / "empty"), "--all"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "no model is published" in err and "encore train --transactions" in err
    assert not (tmp_path / "recommendations.csv").exists()


def test_k_larger_than_the_catalog_is_exit_2(models, tmp_path, capsys):
    rc = main(["recommend", "--models-dir", str(models), "--all", "-k", "1000",
               "--out", str(tmp_path / "r.csv")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "-k must be between" in err
    assert not (tmp_path / "r.csv").exists()


def test_empty_customer_list_still_writes_a_file(models, tmp_path):
    ids = tmp_path / "ids.csv"
    ids.write_text("customer_id\n")
    out = tmp_path / "r.csv"
    rc = main(
        ["recommend", "--models-dir", str(models), "--customers", str(ids), "--out", str(out)]
    )
    assert rc != 0 or out.exists()


def test_a_failed_export_does_not_replace_the_previous_file(models, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    out.write_text("customer_id,rank,item_id,score\nprevious,1,x,1.0\n")
    b = load_bundle(models)
    real = Answerer.rank_rows
    calls = []

    def flaky(self, rows, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of memory in the second batch")
        return real(self, rows, *a, **k)

    monkeypatch.setattr(Answerer, "rank_rows", flaky)
    with pytest.raises(MemoryError):
        export_recommendations(b, out, k=3, batch_size=50)
    assert out.read_text().startswith("customer_id,rank,item_id,score\nprevious,")
    assert not (tmp_path / "r.csv.partial").exists()


def test_recommend_on_a_timing_only_model_is_exit_2(tmp_path, capsys):
    log = tmp_path / "cd.csv"
    rows = [(f"k{c}", "CD", f"1997-0{1 + c % 9}-1{c % 10}") for c in range(60)]
    rows += [(f"k{c}", "CD", f"1997-1{c % 3}-0{1 + c % 9}") for c in range(0, 60, 2)]
    pd.DataFrame(rows, columns=["customer_id", "item_id", "timestamp"]).to_csv(log, index=False)
    m = tmp_path / "m"
    # a version that learnt nothing judged is held back by the gate; --force publishes it
    args = ["train", "--transactions", str(log), "--models-dir", str(m), "--no-timing"]
    assert main(args) == 3
    assert main([*args, "--force"]) == 0
    capsys.readouterr()
    rc = main(["recommend", "--models-dir", str(m), "--all", "--out", str(tmp_path / "r.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no ranking model" in err


# --- real subprocesses --------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_subprocess_exit_codes_and_one_line_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    p = run_cli("train", "--transactions", str(empty), "--models-dir", "m", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert p.stderr.startswith("encore train: error: ") and "empty" in p.stderr
    p = run_cli("recommend", "--models-dir", "m", "--all", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "encore train" in p.stderr
    assert not (tmp_path / "recommendations.csv").exists()


def test_subprocess_strict_names_row_and_column(tmp_path):
    log = tmp_path / "orders.csv"
    log.write_text(
        "customer_id,item_id,timestamp\na,x,2024-01-01\nb,y,2024-13-45\nc,z,2024-01-03\n"
    )
    p = run_cli("train", "--transactions", str(log), "--strict", "--models-dir", "m", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "row 2 (line 3)" in p.stderr and "column 'timestamp'" in p.stderr
    assert "'2024-13-45'" in p.stderr
