"""Expected spend and discounted lifetime value, from a timing model and the spend model.

A customer's expected spend within a horizon is their expected number of
purchases in it (from the purchase-timing model) times their expected order
value (from :class:`~recommender.value.spend.GammaGammaModel`), the two
models being independent by assumption. Lifetime value discounts that spend
period by period: with ``N(t)`` the expected purchases by time ``t``,

``CLV = E[M] * sum_i (N(t_i) - N(t_{i-1})) / (1 + d) ** (t_i / 365)``,

over steps ``t_i`` of ``step_days`` up to the horizon, ``d`` the annual
discount rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["expected_spend", "lifetime_value"]

#: Expected purchases of each customer by a time (days from now).
PurchasesBy = Callable[[float], np.ndarray]


def expected_spend(expected_purchases: np.ndarray, order_value: np.ndarray) -> np.ndarray:
    """Expected spend in a window: expected purchases in it times expected order value."""
    return np.asarray(expected_purchases, dtype=np.float64) * np.asarray(
        order_value, dtype=np.float64
    )


def lifetime_value(
    purchases_by: PurchasesBy,
    order_value: np.ndarray,
    *,
    horizon_days: float = 365.0,
    annual_discount_rate: float = 0.1,
    step_days: float = 30.0,
) -> np.ndarray:
    """Discounted expected spend over ``horizon_days``, per customer.

    Parameters
    ----------
    purchases_by
        ``purchases_by(t)``: each customer's expected purchases within ``t``
        days (cumulative, so non-decreasing in ``t``).
    order_value
        Each customer's expected order value.
    horizon_days
        How far ahead value counts.
    annual_discount_rate
        The yearly rate money in the future is discounted at (0.1: a sale a
        year from now is worth 1/1.1 of one today).
    step_days
        Length of the periods spend is discounted over.

    Raises
    ------
    ValueError
        For a non-positive horizon or step, or a negative discount rate.
    """
    if not horizon_days > 0 or not step_days > 0:
        raise ValueError("horizon_days and step_days must be positive")
    if not annual_discount_rate >= 0:
        raise ValueError("annual_discount_rate must be non-negative")
    value = np.asarray(order_value, dtype=np.float64)
    # whole steps, the last one cut at the horizon (counted, not summed, so a
    # horizon far smaller than a step still gets its one period)
    n_steps = max(1, math.ceil(horizon_days / step_days))
    ends = np.unique(np.minimum(np.arange(1, n_steps + 1) * step_days, horizon_days))
    total = np.zeros_like(value)
    before = np.zeros_like(value)
    for t in ends:
        by_t = np.asarray(purchases_by(float(t)), dtype=np.float64)
        total += (by_t - before) / (1.0 + annual_discount_rate) ** (t / 365.0)
        before = by_t
    return total * value
