"""The next-purchase model inside `encore train`, on the real CDNOW log.

CDNOW has no item detail (every row is "a CD"), so the ranking model must be
skipped with a warning while the timing model is trained, backtested on the
rows after --as-of, and published.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recommender.store.bundle import load_bundle
from training.config import TrainConfig
from training.export import export_next_purchase
from training.pipeline import train
from training.timing_step import _top_from_sparse, calibration_report

CDNOW = Path(__file__).parent / "data" / "CDNOW_sample.txt"


@pytest.fixture(scope="module")
def cdnow_csv(tmp_path_factory):
    raw = pd.read_csv(
        CDNOW,
        sep=r"\s+",
        header=None,
        dtype={2: str},
        names=["master", "customer_id", "date", "quantity", "value"],
    )
    # One row per customer and day, priced at the day's dollar value: an order
    # as the spend model reads it (same-day lines summed), and no two rows
    # alike for the log's check to drop as duplicates.
    out = (
        pd.DataFrame(
            {
                "customer_id": raw["customer_id"].astype(str),
                "item_id": "CD",
                "timestamp": pd.to_datetime(raw["date"], format="%Y%m%d").dt.strftime("%Y-%m-%d"),
                "price": raw["value"],
            }
        )
        .groupby(["customer_id", "item_id", "timestamp"], as_index=False, sort=False)["price"]
        .sum()
    )
    path = tmp_path_factory.mktemp("cdnow") / "cdnow.csv"
    out.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(cdnow_csv, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    messages = []
    result = train(
        cdnow_csv,
        models_dir=models,
        as_of="1997-09-30",
        config=TrainConfig(timing_p_horizon_days=91),
        say=messages.append,
    )
    return result, models, messages


def test_ranking_skipped_with_a_reason(trained):
    result, _, _ = trained
    assert not result.manifest["components"]["als"]
    assert result.manifest["components"]["timing"]
    assert any("ranking model skipped" in w and "1 distinct item" in w for w in result.warnings)


def test_backtest_matches_published_figures(trained):
    """Fader, Hardie & Lee (2005): 1,882 holdout purchases; the published models
    score per-customer RMSE 1.603-1.608, predict ~1,653 (-12%), Brier 0.110 at 13 weeks."""
    result, _, _ = trained
    t = result.manifest["metrics"]["timing"]
    assert t["window"].startswith("after --as-of")
    assert t["total_actual"] == 1882
    assert t["customers"] == 2357
    assert 1.59 < t["rmse"] < 1.62
    assert abs(t["brier"] - 0.110) < 0.003
    assert -0.17 < t["relative_bias"] < -0.10
    # honest baselines are worse on every count metric
    for name in ("past_rate", "average_rate"):
        assert t["baselines"][name]["rmse"] > t["rmse"]
        assert t["baselines"][name]["brier"] > t["brier"]
    sel = result.manifest["metrics"]["timing_selection"]
    assert sel["chosen"] in ("bgnbd", "pareto_nbd", "mbgnbd")
    assert set(sel["candidates"]) == {"bgnbd", "pareto_nbd", "mbgnbd"}


def test_calibration_plot_is_drawn_from_the_manifest_table(trained):
    """The published picture is the reliability diagram of the calibration
    table the manifest holds, hashed like every other file."""
    result, models, _ = trained
    png = (result.path / "timing_calibration.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png == calibration_report(result.manifest["metrics"]["timing"])
    assert "timing_calibration.png" in result.manifest["files"]


def test_rows_after_as_of_are_counted(trained):
    result, _, _ = trained
    v = result.manifest["validation"]
    assert v["dropped"]["after_as_of"] > 1800
    assert result.manifest["data"]["time_max"].startswith("1997-09-30")


def test_next_purchase_export(trained, tmp_path):
    _, models, _ = trained
    bundle = load_bundle(models)
    out = tmp_path / "next.csv"
    stats = export_next_purchase(bundle, out, horizon_days=30)
    table = pd.read_csv(out, dtype={"customer_id": str})
    assert stats["customers"] == len(table) == 2357
    assert list(table.columns) == [
        "customer_id",
        "p_active",
        "expected_purchases",
        "p_purchase",
        "median_days_to_next",
        "next_purchase_date",
        "expected_order_value",
        "expected_spend",
        "clv",
    ]
    for col in ("expected_purchases", "p_purchase", "expected_order_value", "clv"):
        assert table[col].notna().all()
    # BG/NBD counts a one-time buyer as active by construction: no figure is shown for them
    assert bundle.timing.model_name_ == "bgnbd"
    one_time = bundle.timing.summary_.x[bundle.customers.rows(table["customer_id"])] == 0
    assert (table["p_active"].isna() == one_time).all() and one_time.any()
    assert table["p_active"].dropna().between(0, 1).all()
    assert table["p_purchase"].between(0, 1).all()
    # a date is given exactly where a median is, and lies after the as-of day
    has_date = table["next_purchase_date"].notna()
    assert (has_date == table["median_days_to_next"].notna()).all()
    assert has_date.any() and (~has_date).any()
    assert (pd.to_datetime(table.loc[has_date, "next_purchase_date"]) > "1997-09-30").all()
    # the bundle itself holds only finite numbers
    for arr in np.load(bundle.path / "timing.npz").values():
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all()


@pytest.mark.parametrize("seed", range(5))
def test_top_from_sparse_ranks_each_row_by_value_then_stored_order(seed):
    rng = np.random.default_rng(seed)
    dense = rng.integers(0, 4, size=(30, 12)).astype(float)  # many ties and empty rows
    dense[rng.random(30) < 0.2] = 0.0
    m = sp.csr_matrix(dense)
    k = 5
    got = _top_from_sparse(m, k)
    for r in range(m.shape[0]):
        cols = m.indices[m.indptr[r] : m.indptr[r + 1]]
        vals = m.data[m.indptr[r] : m.indptr[r + 1]]
        want = cols[np.argsort(-vals, kind="stable")][:k]
        assert got[r, : len(want)].tolist() == want.tolist()
        assert (got[r, len(want) :] == -1).all()


def test_buy_again_is_judged_on_a_sample_of_customers():
    """The judged copy of the buy-again model is refitted on at most
    ``max_buy_again_eval_fit_customers`` customers, and only they are judged."""
    from recommender.data.ids import IdIndex
    from recommender.data.synthetic import generate_shop
    from training.timing_step import fit_timing_models

    frame = generate_shop("demo", seed=0).transactions.copy()
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    customers = IdIndex.from_values(frame["customer_id"])
    items = IdIndex.from_values(frame["item_id"])
    end = frame["timestamp"].max().normalize() + pd.Timedelta(days=1)

    def judged(limit):
        cfg = TrainConfig(max_buy_again_eval_fit_customers=limit)
        return fit_timing_models(frame, customers, items, end, cfg, warn=lambda m: None)[2][
            "buy_again"
        ]

    full, sampled = judged(None), judged(300)
    buyers_before = frame.loc[frame["timestamp"] < end - pd.Timedelta(days=28), "customer_id"]
    assert full["fit_customers"] == buyers_before.nunique()
    assert sampled["fit_customers"] == 300
    # a tenth of the customers: about a tenth of those judged, never all of them
    assert 0 < sampled["customers"] < 300 and sampled["customers"] < full["customers"] / 3
    assert 0.0 <= sampled["buy_again"]["recall@10"] <= 1.0


def test_spend_model_reproduces_the_published_fit_through_encore_train(trained):
    """The pipeline's spend input is the library test's: orders are customer
    days (same-day lines summed), repeat orders before --as-of only, so the
    manifest holds Fader, Hardie & Lee's fit (946 repeat buyers, p 6.25,
    q 3.74, gamma 15.44)."""
    result, _, messages = trained
    spend = result.manifest["metrics"]["spend"]
    fit = spend["model"]
    assert fit["n_customers"] == spend["repeat_buyers"] == 946
    assert spend["nonpositive_orders"] == 0
    assert f"{fit['p']:.3g}" == "6.25"
    assert f"{fit['q']:.3g}" == "3.74"
    assert f"{fit['gamma']:.4g}" == "15.44"
    assert fit["log_likelihood"] == pytest.approx(-4055.9, abs=0.05)
    # independence roughly holds here: stored, and no warning about it
    assert spend["frequency_correlation"] == pytest.approx(0.114, abs=0.001)
    assert not any("depends on frequency" in w for w in result.warnings)
    assert result.manifest["components"]["spend"] and result.manifest["components"]["health"]


def test_spend_backtest_beats_the_naive_rates(trained):
    """Expected spend over the 39 weeks after --as-of against the customers'
    own past rate and the shop's average rate (the table encore train prints)."""
    result, _, _ = trained
    s = result.manifest["metrics"]["spend"]
    assert s["window"].startswith("after --as-of") and s["horizon_days"] == 273
    assert s["customers"] == 2357
    assert s["total_actual"] == pytest.approx(70976.39)
    assert 71.5 < s["rmse"] < 73.0 and 29.5 < s["mae"] < 31.0
    for name in ("past_rate", "average_rate"):
        base = s["baselines"][name]
        assert base["total_actual"] == pytest.approx(70976.39)
        assert s["rmse"] < base["rmse"] and s["mae"] < base["mae"], name
        assert abs(s["relative_bias"]) < abs(base["relative_bias"]), name


def test_spend_table_is_printed(trained):
    from io import StringIO

    from rich.console import Console

    from training.summary import print_summary

    result, _, _ = trained
    buf = StringIO()
    print_summary(result, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "Spend model (Gamma-Gamma) on 946 repeat buyers: p 6.25, q 3.74, gamma 15.44" in text
    assert "Spend per customer over 273 days" in text
    for name in ("encore", "past_rate", "average_rate"):
        assert any(line.strip("│ ").startswith(name) for line in text.splitlines()), name


def test_shop_health_is_stored_and_reported(trained):
    result, models, _ = trained
    bundle = load_bundle(models)
    h = bundle.health
    assert h is not None and h["has_values"]
    assert [m["month"] for m in h["months"]] == [f"1997-{m:02d}" for m in range(1, 10)]
    # CDNOW's customers all made their first purchase in the first quarter
    assert [c["cohort"] for c in h["cohorts"]] == ["1997-01", "1997-02", "1997-03"]
    assert sum(c["size"] for c in h["cohorts"]) == 2357
    assert h["months"][0]["repurchase_rate"] == 0.0 and h["months"][-1]["repurchase_rate"] == 1.0
    html = (result.path / "report.html").read_text()
    assert "<h2>Shop health</h2>" in html and "Cohort retention" in html
    assert "<h2>Spend per order</h2>" in html and "past_rate" in html
