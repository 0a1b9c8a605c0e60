"""Judging expected spend on a held-out window, against two naive predictions."""

from __future__ import annotations

from typing import Any

import numpy as np

from recommender.timing.metrics import count_metrics
from recommender.value.spend import SpendSummary

__all__ = ["evaluate_spend", "spend_baselines"]


def spend_baselines(
    spend: SpendSummary, T_days: np.ndarray, has_history: np.ndarray, horizon_days: float
) -> dict[str, np.ndarray]:
    """Two naive predictions of each customer's spend in the next ``horizon_days``.

    As :func:`recommender.timing.metrics.naive_baselines` does for purchases:

    * ``past_rate``: the customer's own repeat spend per day since their first
      order, extrapolated over the horizon;
    * ``average_rate``: everyone's repeat spend per customer-day.

    Parameters
    ----------
    spend
        Repeat orders and their mean value per customer row.
    T_days
        Days from each customer's first order to the end of the observation.
    has_history
        Customers with at least one order (the rest get 0).
    horizon_days
        Length of the window predicted.
    """
    repeat_spend = spend.frequency * spend.monetary
    T = np.asarray(T_days, dtype=np.float64)
    has = np.asarray(has_history, dtype=bool)
    own = np.zeros_like(T)
    pos = has & (T > 0)
    own[pos] = repeat_spend[pos] / T[pos]
    t_sum = float(T[has].sum())
    pooled = float(repeat_spend[has].sum()) / t_sum if t_sum > 0 else 0.0
    return {
        "past_rate": own * horizon_days,
        "average_rate": np.where(has, pooled, 0.0) * horizon_days,
    }


def evaluate_spend(predicted: Any, actual: Any) -> dict[str, float | None]:
    """Per-customer error of predicted spend: ``rmse``, ``mae``, the totals and
    ``relative_bias`` of the total (as for purchase counts)."""
    out = count_metrics(predicted, actual)
    out.pop("msle")  # a log error of money mixes currencies' scales; left out
    return out
