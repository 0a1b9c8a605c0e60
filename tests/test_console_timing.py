"""How the next-purchase figures are read and worded, on the demo shop.

BG/NBD gives every customer without a repeat purchase ``p_active = 1``; read
at face value that put "still an active customer: 100%" above "has most
likely stopped buying" for hundreds of the demo's customers. These tests hold
every customer's figures and words to one reading, and every surface to one
"as of" day.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recommender.answers import (
    MAX_DATE_DAYS,
    as_of_date,
    due_table,
    likely_purchase_days,
    purchase_curve,
    timing_table,
    timing_words,
)
from recommender.store.bundle import Bundle, load_bundle
from serving.app import create_app
from serving.settings import ServingSettings
from tests.console_shop import DemoShop, train_demo_shop


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoShop:
    return train_demo_shop(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def bundle(demo) -> Bundle:
    return load_bundle(demo.models)


@pytest.fixture(scope="module")
def table(bundle) -> pd.DataFrame:
    return timing_table(bundle, np.arange(bundle.n_customers), 90.0, rounded=False)


def test_one_time_buyers_get_no_active_figure_under_bgnbd(bundle, table):
    timing = bundle.timing
    assert timing.model_name_ == "bgnbd", "the demo shop is fitted with BG/NBD"
    one_time = timing.summary_.x == 0
    assert one_time.sum() > 300  # the "hundreds" of the issue
    raw = timing.predict(90.0)["p_active"]
    assert np.all(raw[one_time] == 1.0)  # what the model says of them, by construction
    assert table["p_active"].isna().to_numpy().tolist() == one_time.tolist()
    assert table["p_active"].dropna().between(0, 1).all()


def test_no_customer_reads_as_active_and_lapsed_at_once(bundle, table):
    contradictions = 0
    for row in range(bundle.n_customers):
        words = " ".join(timing_words(bundle, row, table.iloc[row].to_dict(), 90.0))
        active = re.search(r"still a customer: (under |over )?(\d+)%", words)
        stopped = "stopped buying" in words
        if stopped and (active is None or int(active.group(2)) >= 50):
            contradictions += 1
        if "100%" in words and "still a customer" in words and stopped:
            contradictions += 1
        # a date and "no likely date" never stand together
        assert ("No likely date" in words) != bool(table.iloc[row]["next_purchase_date"])
    assert contradictions == 0


def test_the_date_is_where_the_plotted_probability_crosses_one_half(bundle, table):
    dated = np.flatnonzero(table["next_purchase_date"].to_numpy() != "")
    undated = np.flatnonzero(table["next_purchase_date"].to_numpy() == "")
    assert dated.size > 100 and undated.size > 100
    last = pd.Timestamp(as_of_date(bundle.manifest))
    for row in list(dated[:40]) + list(undated[:40]):
        curve = purchase_curve(bundle, int(row), np.arange(1, MAX_DATE_DAYS + 1))
        t = table.iloc[row]
        assert curve[89] == pytest.approx(t["p_purchase"], rel=1e-9)  # the plot at 90 days
        if t["next_purchase_date"]:
            d = int(t["median_days_to_next"])
            assert curve[d - 1] >= 0.5 and (d == 1 or curve[d - 2] < 0.5)
            assert t["next_purchase_date"] == (last + pd.Timedelta(days=d)).strftime("%Y-%m-%d")
        else:
            assert curve[-1] < 0.5


def test_the_due_list_reads_the_figures_the_same_way(bundle, table):
    due = due_table(bundle, 90.0, 0.0, bundle.n_customers)
    merged = due.merge(table, on="customer_id", suffixes=("", "_t"))
    assert len(merged) == int(bundle.timing.summary_.has_history.sum())
    assert (merged["p_active"].isna() == merged["p_active_t"].isna()).all()
    assert (merged["next_purchase_date"] == merged["next_purchase_date_t"]).all()


def test_the_date_rule_costs_little_on_every_customer(bundle):
    days = likely_purchase_days(bundle.timing, np.arange(bundle.n_customers))
    finite = days[np.isfinite(days)]
    assert np.all((finite >= 1) & (finite <= MAX_DATE_DAYS) & (finite == np.round(finite)))


def test_as_of_is_the_last_day_of_the_log_everywhere(demo, bundle, capsys):
    last_line = demo.shop.transactions["timestamp"].max()
    day = pd.Timestamp(last_line).strftime("%Y-%m-%d")
    assert as_of_date(bundle.manifest) == day
    assert as_of_date("2026-01-01T00:00:00") == "2025-12-31"
    assert as_of_date("2026-01-01T12:30:00") == "2026-01-01"  # an instant inside a day
    with TestClient(create_app(ServingSettings(models_dir=demo.models))) as client:
        assert client.get("/v1/model").json()["as_of"] == day
        cid = bundle.customers.id(0)
        assert client.get(f"/v1/customers/{cid}/next-purchase").json()["as_of"] == day
    from training.cli import main

    assert main(["models", "list", "--models-dir", str(demo.models)]) == 0
    listed = capsys.readouterr().out
    assert f"  {day}  " in listed
    assert main(["models", "show", demo.version, "--models-dir", str(demo.models)]) == 0
    assert f"as of {day}" in capsys.readouterr().out
