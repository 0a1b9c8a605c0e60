"""The Gamma-Gamma spend model, expected spend and lifetime value.

Pinned on the CDNOW sample to the published fit (Fader, Hardie and Lee 2005;
Fader and Hardie 2013: 946 repeat buyers, p = 6.25, q = 3.74, gamma = 15.44,
log-likelihood -4055.9), recovered on generated customers with known spend,
and judged on CDNOW's 39-week holdout against the naive predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recommender.errors import NotFittedError
from recommender.timing.bgnbd import BGNBD
from recommender.timing.summary import summarize_purchases
from recommender.value.clv import expected_spend, lifetime_value
from recommender.value.evaluation import evaluate_spend, spend_baselines
from recommender.value.spend import (
    GammaGammaModel,
    SpendFitError,
    spend_frequency_correlation,
    summarize_spend,
)

CDNOW = Path(__file__).parent / "data" / "CDNOW_sample.txt"
CAL_END = pd.Timestamp("1997-09-30")


@pytest.fixture(scope="module")
def cdnow():
    df = pd.read_csv(
        CDNOW, sep=r"\s+", header=None, names=["mid", "sid", "date", "cds", "value"],
        dtype={"mid": str, "date": str},
    )  # fmt: skip
    codes, uniq = pd.factorize(df["mid"])
    days = (pd.to_datetime(df["date"]) - pd.Timestamp("1997-01-01")).dt.days.to_numpy(float)
    cut = float((CAL_END - pd.Timestamp("1997-01-01")).days)
    return codes, days, df["value"].to_numpy(float), len(uniq), cut


@pytest.fixture(scope="module")
def cdnow_fit(cdnow):
    codes, days, values, n, cut = cdnow
    cal = days <= cut
    summary = summarize_spend(codes[cal], days[cal], values[cal], n)
    return summary, GammaGammaModel().fit(summary.frequency, summary.monetary)


def test_cdnow_reproduces_the_published_fit(cdnow_fit):
    summary, model = cdnow_fit
    assert model.n_customers_ == 946 == int((summary.frequency > 0).sum())
    assert summary.nonpositive_orders == 0
    assert model.p_ == pytest.approx(6.25, abs=0.005)
    assert model.q_ == pytest.approx(3.74, abs=0.005)
    assert model.gamma_ == pytest.approx(15.44, abs=0.005)
    assert model.log_likelihood_ == pytest.approx(-4055.9, abs=0.05)
    # the independence the model assumes holds roughly on this shop
    assert spend_frequency_correlation(summary) == pytest.approx(0.114, abs=0.001)


def test_cdnow_expected_spend_beats_the_naive_predictions_on_the_holdout(cdnow, cdnow_fit):
    codes, days, values, n, cut = cdnow
    summary, model = cdnow_fit
    cal = days <= cut
    purchases = summarize_purchases(codes[cal], days[cal], cut, n)
    x, t_x, T = purchases.x, purchases.t_x / 7, purchases.T / 7
    timing = BGNBD().fit(x, t_x, T)
    horizon = 39 * 7
    predicted = expected_spend(
        timing.expected_purchases(horizon / 7, x, t_x, T),
        model.expected_order_value(summary.frequency, summary.monetary),
    )
    actual = np.bincount(codes[~cal], weights=values[~cal], minlength=n)
    ours = evaluate_spend(predicted, actual)
    naive = {
        k: evaluate_spend(v, actual)
        for k, v in spend_baselines(summary, purchases.T, purchases.has_history, horizon).items()
    }
    assert ours["total_actual"] == pytest.approx(70976.39)
    assert ours["rmse"] == pytest.approx(72.30, abs=0.01)
    assert ours["mae"] == pytest.approx(30.41, abs=0.01)
    assert ours["relative_bias"] == pytest.approx(-0.156, abs=0.001)
    for name, theirs in naive.items():
        assert ours["rmse"] < theirs["rmse"] and ours["mae"] < theirs["mae"], name
        assert abs(ours["relative_bias"]) < abs(theirs["relative_bias"]), name


def test_known_spend_parameters_are_recovered():
    rng = np.random.default_rng(0)
    p, q, gamma = 4.0, 5.0, 30.0
    n = 6000
    nu = rng.gamma(q, 1.0 / gamma, size=n)
    x = rng.integers(1, 12, size=n)
    lines_c = np.repeat(np.arange(n), x + 1)
    day = np.concatenate([np.arange(k + 1) * 7.0 for k in x])
    value = rng.gamma(p, 1.0 / nu[lines_c])
    summary = summarize_spend(lines_c, day, value, n)
    assert np.array_equal(summary.frequency, x.astype(float))  # the first order is left out
    model = GammaGammaModel().fit(summary.frequency, summary.monetary)
    assert model.p_ == pytest.approx(p, rel=0.1)
    assert model.q_ == pytest.approx(q, rel=0.1)
    assert model.gamma_ == pytest.approx(gamma, rel=0.15)
    assert model.mean_order_value == pytest.approx(gamma * p / (q - 1), rel=0.05)
    corr = spend_frequency_correlation(summary)
    assert corr is not None and abs(corr) < 0.05


def test_orders_are_days_the_first_is_left_out_and_nonpositive_ones_are_counted():
    # customer 0: day 0 (first), day 3 two lines (one order of 30), day 5 a refund (-4)
    # customer 1: one order only; customer 2: first order, then an order of value 0
    c = np.array([0, 0, 0, 0, 1, 2, 2])
    d = np.array([0.0, 3.2, 3.9, 5.0, 1.0, 0.0, 2.0])
    v = np.array([10.0, 20.0, 10.0, -4.0, 99.0, 5.0, 0.0])
    s = summarize_spend(c, d, v, 4)
    assert s.frequency.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert s.monetary.tolist() == [30.0, 0.0, 0.0, 0.0]
    assert s.nonpositive_orders == 2


def test_expected_order_value_shrinks_toward_the_population_mean():
    model = GammaGammaModel()
    model.p_, model.q_, model.gamma_ = 6.25, 3.74, 15.44
    mean = model.mean_order_value
    eov = model.expected_order_value(np.array([0.0, 1.0, 5.0, 500.0]), np.full(4, 100.0))
    assert eov[0] == pytest.approx(mean)
    assert mean < eov[1] < eov[2] < eov[3] < 100.0
    assert eov[3] == pytest.approx(100.0, rel=0.01)


def test_lifetime_value_discounts_future_purchases():
    rate = np.array([0.1, 0.0])  # purchases per day
    value = np.array([20.0, 20.0])

    def by(t):
        return rate * t

    flat = lifetime_value(by, value, horizon_days=365, annual_discount_rate=0.0)
    assert flat == pytest.approx([0.1 * 365 * 20.0, 0.0])
    discounted = lifetime_value(by, value, horizon_days=365, annual_discount_rate=0.1)
    assert 0.1 * 365 * 20.0 / 1.1 < discounted[0] < flat[0]
    # a horizon that is not a whole number of steps still counts up to the horizon
    odd = lifetime_value(by, value, horizon_days=100, annual_discount_rate=0.0, step_days=30)
    assert odd[0] == pytest.approx(0.1 * 100 * 20.0)
    with pytest.raises(ValueError, match="positive"):
        lifetime_value(by, value, horizon_days=0)


def test_state_round_trip_and_errors(cdnow_fit):
    _, model = cdnow_fit
    again = GammaGammaModel.from_state(model.to_state())
    x, m = np.array([0.0, 2.0, 7.0]), np.array([0.0, 12.5, 80.0])
    assert np.array_equal(again.expected_order_value(x, m), model.expected_order_value(x, m))
    with pytest.raises(ValueError, match="schema"):
        GammaGammaModel.from_state({**model.to_state(), "schema": "other/9"})
    with pytest.raises(ValueError, match="positive"):
        GammaGammaModel.from_state({**model.to_state(), "q": float("nan")})
    with pytest.raises(NotFittedError):
        GammaGammaModel().expected_order_value(x, m)
    with pytest.raises(SpendFitError, match="at least 20"):
        GammaGammaModel().fit(np.ones(5), np.full(5, 10.0))


def test_lifetime_value_of_a_horizon_far_shorter_than_a_step():
    """A horizon that vanishes next to the step still counts its one period
    (found by fuzzing the API with clv_horizon_days=1e-300)."""
    rate, value = np.array([0.1]), np.array([20.0])
    tiny = lifetime_value(lambda t: rate * t, value, horizon_days=1e-300, annual_discount_rate=0)
    assert tiny.shape == (1,) and 0 <= tiny[0] < 1e-290
    one_day = lifetime_value(lambda t: rate * t, value, horizon_days=1, annual_discount_rate=0)
    assert one_day[0] == pytest.approx(2.0)
