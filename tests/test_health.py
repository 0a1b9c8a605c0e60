"""Shop health: the monthly repeat-purchase measures and cohort retention,
checked against a hand-made log of a dozen orders computed by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recommender.value.health import shop_health


def _days(dates: list[str]) -> np.ndarray:
    return (pd.to_datetime(dates) - pd.Timestamp("1970-01-01")).days.to_numpy(float)


# customer, date, line value
LOG = [
    (0, "2025-01-03", 10.0),
    (0, "2025-01-03", 5.0),  # same day: one order of 15
    (0, "2025-01-20", 20.0),  # a second order in the first month: still new in January
    (1, "2025-01-10", 30.0),
    (2, "2025-01-15", 8.0),
    (0, "2025-02-02", 12.0),  # returning
    (3, "2025-02-11", 40.0),  # new in February
    (1, "2025-03-05", 25.0),  # returning after a gap
    (3, "2025-03-09", 10.0),  # returning
    (4, "2025-03-30", 7.0),  # new in March
    (0, "2025-03-31", 3.0),  # returning
    (2, "2025-03-31", 0.0),  # an order of value 0 still counts as an order
]


def test_monthly_measures_and_cohorts_equal_the_hand_computed_ones():
    c = np.array([r[0] for r in LOG])
    d = _days([r[1] for r in LOG])
    v = np.array([r[2] for r in LOG])
    h = shop_health(c, d, v)
    jan, feb, mar = h.months
    assert [m["month"] for m in h.months] == ["2025-01", "2025-02", "2025-03"]
    assert (jan["active_customers"], jan["new_customers"], jan["returning_customers"]) == (3, 3, 0)
    assert jan["orders"] == 4 and jan["orders_per_customer"] == pytest.approx(4 / 3)
    assert jan["revenue"] == 73.0 and jan["average_order_value"] == pytest.approx(73 / 4)
    assert jan["repurchase_rate"] == 0.0 and jan["returning_revenue_share"] == 0.0
    assert (feb["active_customers"], feb["new_customers"], feb["returning_customers"]) == (2, 1, 1)
    assert feb["repurchase_rate"] == 0.5 and feb["revenue"] == 52.0
    assert feb["returning_revenue_share"] == pytest.approx(12 / 52)
    assert (mar["active_customers"], mar["new_customers"], mar["returning_customers"]) == (5, 1, 4)
    assert mar["orders"] == 5 and mar["revenue"] == 45.0
    assert mar["average_order_value"] == pytest.approx(9.0)
    assert mar["repurchase_rate"] == pytest.approx(4 / 5)
    assert mar["returning_revenue_share"] == pytest.approx(38 / 45)
    cohorts = {x["cohort"]: x for x in h.cohorts}
    # January: customers 0, 1, 2; February: 0 came back; March: 0, 1, 2 came back
    assert cohorts["2025-01"]["size"] == 3
    assert cohorts["2025-01"]["retention"] == pytest.approx([1.0, 1 / 3, 1.0])
    assert cohorts["2025-02"] == {"cohort": "2025-02", "size": 1, "retention": [1.0, 1.0]}
    assert cohorts["2025-03"] == {"cohort": "2025-03", "size": 1, "retention": [1.0]}
    assert h.has_values and h.notes == []


def test_a_log_without_prices_gets_every_count_and_says_why_values_are_missing():
    c = np.array([r[0] for r in LOG])
    d = _days([r[1] for r in LOG])
    h = shop_health(c, d, None)
    mar = h.months[2]
    assert mar["active_customers"] == 5 and mar["repurchase_rate"] == pytest.approx(0.8)
    assert mar["orders_per_customer"] == 1.0
    assert mar["revenue"] is None and mar["average_order_value"] is None
    assert mar["returning_revenue_share"] is None
    assert not h.has_values and any("price" in n for n in h.notes)
    assert [x["retention"] for x in h.cohorts][0] == pytest.approx([1.0, 1 / 3, 1.0])


def test_an_empty_log_says_so():
    h = shop_health(np.array([], dtype=int), np.array([]), np.array([]))
    assert h.months == [] and h.cohorts == [] and "no orders" in h.notes[-1]
