"""The shop's repeat-purchase health: the four measures shops judge it by.

Per calendar month: active customers, the repurchase rate (the share of the
month's customers who had bought before), orders per customer (purchase
frequency), average order value, revenue and the share of revenue from
returning customers; and a cohort retention table (of the customers whose
first order fell in a month, the share buying in each later month).

An order is a customer's purchase day (same-day lines merged, as the timing
and spend models count them). A log without prices still gets every
count-based measure; the value measures are ``None`` and the result says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recommender.value.spend import orders_from_lines

__all__ = ["ShopHealth", "shop_health"]


@dataclass(frozen=True)
class ShopHealth:
    """Monthly measures and cohort retention of one log.

    Attributes
    ----------
    months
        One dict per calendar month (``month`` as ``YYYY-MM``): ``active_customers``,
        ``new_customers``, ``returning_customers``, ``repurchase_rate``,
        ``orders``, ``orders_per_customer``, ``revenue``, ``average_order_value``,
        ``returning_revenue_share`` (the last three ``None`` without prices).
    cohorts
        One dict per first-order month: ``cohort`` (``YYYY-MM``), ``size``, and
        ``retention``: the share of the cohort buying in each month from the
        first one on (index 0 is the first month, always 1).
    has_values
        Whether the log had prices.
    notes
        What could not be computed and why.
    """

    months: list[dict[str, Any]]
    cohorts: list[dict[str, Any]]
    has_values: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "months": self.months,
            "cohorts": self.cohorts,
            "has_values": self.has_values,
            "notes": list(self.notes),
        }


def _month_index(days: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Month number of each day (days since the Unix epoch) and the month labels."""
    months = np.floor(days).astype("datetime64[D]").astype("datetime64[M]")
    first, last = months.min(), months.max()
    index = (months - first).astype(np.int64)
    labels = [str(m) for m in np.arange(first, last + 1, dtype="datetime64[M]")]
    return index, labels


def shop_health(
    customer_rows: np.ndarray, days: np.ndarray, values: np.ndarray | None = None
) -> ShopHealth:
    """Monthly repeat-purchase measures and cohort retention from order lines.

    Parameters
    ----------
    customer_rows
        Customer row of each order line (negative rows are ignored).
    days
        Day of each line, in days since the Unix epoch.
    values
        Value of each line (quantity times unit price), or None for a log
        without prices; lines whose value is not finite count as orders but
        add no revenue.
    """
    c = np.asarray(customer_rows, dtype=np.int64)
    d = np.floor(np.asarray(days, dtype=np.float64)).astype(np.int64)
    has_values = values is not None
    v = np.asarray(values, dtype=np.float64) if values is not None else np.zeros(len(c))
    keep = c >= 0
    c, d, v = c[keep], d[keep], v[keep]
    notes = [] if has_values else ["value measures need a price column in the log"]
    if c.size == 0:
        return ShopHealth([], [], has_values, [*notes, "the log has no orders"])
    o_cust, o_day, o_value = orders_from_lines(c, d, np.where(np.isfinite(v), v, 0.0))
    o_month, labels = _month_index(o_day.astype(np.float64))
    n_months = len(labels)
    # orders are sorted by customer, then day: a customer's first order leads their run
    lead = np.r_[True, o_cust[1:] != o_cust[:-1]]
    run = np.cumsum(lead) - 1
    cohort = o_month[lead][run]
    # a customer ordering twice in their first month is new in that month, and
    # returning from the next month on
    returning = o_month > cohort
    # one entry per customer and month they ordered in
    first_in_month = lead | np.r_[True, o_month[1:] != o_month[:-1]]
    active = np.bincount(o_month[first_in_month], minlength=n_months)
    back = np.bincount(o_month[first_in_month & returning], minlength=n_months)
    n_orders = np.bincount(o_month, minlength=n_months)
    revenue = np.bincount(o_month, weights=o_value, minlength=n_months)
    back_revenue = np.bincount(o_month[returning], weights=o_value[returning], minlength=n_months)
    months: list[dict[str, Any]] = []
    for m, label in enumerate(labels):
        n_active, n_back, n = int(active[m]), int(back[m]), int(n_orders[m])
        rev = float(revenue[m]) if has_values else None
        months.append(
            {
                "month": label,
                "active_customers": n_active,
                "new_customers": n_active - n_back,
                "returning_customers": n_back,
                "repurchase_rate": n_back / n_active if n_active else None,
                "orders": n,
                "orders_per_customer": n / n_active if n_active else None,
                "revenue": rev,
                "average_order_value": rev / n if rev is not None and n else None,
                "returning_revenue_share": float(back_revenue[m]) / rev if rev else None,
            }
        )
    # retention: of each cohort, the share ordering in each month from its first on
    cells = np.bincount(
        cohort[first_in_month] * n_months + (o_month - cohort)[first_in_month],
        minlength=n_months * n_months,
    ).reshape(n_months, n_months)
    cohorts = [
        {
            "cohort": labels[k],
            "size": int(cells[k, 0]),
            "retention": (cells[k, : n_months - k] / cells[k, 0]).tolist(),
        }
        for k in range(n_months)
        if cells[k, 0]
    ]
    return ShopHealth(months, cohorts, has_values, notes)
