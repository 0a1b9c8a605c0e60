"""The per-customer purchase summary ``(x, t_x, T)`` the timing models are fitted on.

``x`` is the number of repeat purchases (distinct purchase days minus one),
``t_x`` the time of the last purchase and ``T`` the time of the end of
observation, both measured from the customer's first purchase.

Reproducing the published CDNOW figures. With dates as whole days, the
calibration end ``as_of_day`` set to the day 1997-09-30 *inclusive* (purchases
on that day count) and ``T = (as_of_day - first_day) / 7``, the CDNOW sample
gives 2,457 calibration repeat purchases, 1,882 holdout purchases (1997-10-01
to 1998-06-30) and the published parameters and log-likelihoods; see
``tests/test_timing.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from recommender.errors import TimingStateError

__all__ = ["PurchaseSummary", "summarize_purchases"]


@dataclass(frozen=True)
class PurchaseSummary:
    """Per-customer recency/frequency summary at ``as_of_day`` (all times in days).

    Arrays are indexed by customer code ``0 .. n_customers - 1``.

    Attributes
    ----------
    x : np.ndarray
        Repeat purchases: distinct purchase days up to ``as_of_day`` minus one
        (int64). 0 for customers without history.
    t_x : np.ndarray
        Days from the first to the last purchase day (float64).
    T : np.ndarray
        Days from the first purchase day to ``as_of_day`` (float64).
    first_day, last_day : np.ndarray
        First and last purchase day (``floor`` of the event time). For
        customers without history both are set to ``as_of_day`` so the arrays
        stay finite; use ``has_history`` to tell them apart.
    has_history : np.ndarray
        Boolean mask: the customer bought at least once up to ``as_of_day``.
        Customers without history have ``x = t_x = T = 0``, which the models
        read as "first purchase on the as-of day" (the prior).
    as_of_day : float
        End of observation.
    """

    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray
    first_day: np.ndarray
    last_day: np.ndarray
    has_history: np.ndarray
    as_of_day: float

    @property
    def n_customers(self) -> int:
        """Number of customer codes covered."""
        return int(self.x.shape[0])

    def in_units(self, unit_days: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, t_x, T)`` with times divided by ``unit_days``."""
        return self.x, self.t_x / unit_days, self.T / unit_days

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays, for saving with ``np.savez`` (no pickle needed)."""
        return {
            "x": self.x,
            "t_x": self.t_x,
            "T": self.T,
            "first_day": self.first_day,
            "last_day": self.last_day,
            "has_history": self.has_history,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], as_of_day: float) -> PurchaseSummary:
        """Inverse of :meth:`to_arrays`; checks shapes and finiteness."""
        names = ("x", "t_x", "T", "first_day", "last_day", "has_history")
        missing = [n for n in names if n not in arrays]
        if missing:
            raise TimingStateError(f"summary arrays missing: {missing}")
        n = int(np.asarray(arrays["x"]).shape[0])
        out = {}
        for name in names:
            arr = np.asarray(arrays[name])
            if arr.shape != (n,):
                raise TimingStateError(f"summary array {name!r} has shape {arr.shape}, want ({n},)")
            if name != "has_history" and not np.all(np.isfinite(arr)):
                raise TimingStateError(f"summary array {name!r} is not finite")
            out[name] = arr
        return cls(
            x=out["x"].astype(np.int64),
            t_x=out["t_x"].astype(np.float64),
            T=out["T"].astype(np.float64),
            first_day=out["first_day"].astype(np.float64),
            last_day=out["last_day"].astype(np.float64),
            has_history=out["has_history"].astype(bool),
            as_of_day=float(as_of_day),
        )


def summarize_purchases(
    customer_codes: np.ndarray,
    days: np.ndarray,
    as_of_day: float,
    n_customers: int | None = None,
) -> PurchaseSummary:
    """Summarise a transaction log into ``(x, t_x, T)`` per customer.

    Parameters
    ----------
    customer_codes : np.ndarray
        Integer customer code per event, ``0 <= code < n_customers``.
    days : np.ndarray
        Event time in days (float, e.g. days since the Unix epoch). Events
        with the same ``floor(day)`` for a customer are one transaction.
    as_of_day : float
        End of observation. Events with ``day > as_of_day`` are ignored;
        an event at exactly ``as_of_day`` counts (the end date is inclusive
        for whole-day data).
    n_customers : int, optional
        Number of customer codes; default ``max(code) + 1``.

    Returns
    -------
    PurchaseSummary
        Times in days: ``t_x = last_day - first_day`` and
        ``T = as_of_day - first_day`` with ``first_day``/``last_day`` the
        floored purchase days.

    Raises
    ------
    ValueError
        On mismatched lengths, negative or too-large codes, or non-finite days.
    """
    codes = np.asarray(customer_codes)
    days = np.asarray(days, dtype=np.float64)
    if codes.shape != days.shape or codes.ndim != 1:
        raise ValueError("customer_codes and days must be 1-D arrays of the same length")
    if codes.size and not np.issubdtype(codes.dtype, np.integer):
        raise ValueError("customer_codes must be integers")
    codes = codes.astype(np.int64, copy=False)
    as_of_day = float(as_of_day)
    if not math.isfinite(as_of_day):
        raise ValueError("as_of_day must be finite")
    if days.size and not np.all(np.isfinite(days)):
        raise ValueError("days contains non-finite values")
    if codes.size and codes.min() < 0:
        raise ValueError("customer_codes must be non-negative")
    if n_customers is None:
        n_customers = int(codes.max()) + 1 if codes.size else 0
    n_customers = int(n_customers)
    if codes.size and codes.max() >= n_customers:
        raise ValueError(f"customer code {int(codes.max())} >= n_customers={n_customers}")

    keep = days <= as_of_day
    codes = codes[keep]
    whole = np.floor(days[keep]).astype(np.int64)

    x = np.zeros(n_customers, dtype=np.int64)
    first = np.full(n_customers, as_of_day, dtype=np.float64)
    last = np.full(n_customers, as_of_day, dtype=np.float64)
    has = np.zeros(n_customers, dtype=bool)
    if codes.size:
        dmin = int(whole.min())
        span = int(whole.max()) - dmin + 1
        key = codes * span + (whole - dmin)
        if key.size > 1 and not np.all(key[1:] > key[:-1]):
            # distinct (customer, day), sorted by customer then day; a sort is
            # several times faster than np.unique's hashing on millions of rows
            key = np.sort(key)
            key = key[np.r_[True, key[1:] != key[:-1]]]
        cust = key // span
        day = (key % span + dmin).astype(np.float64)
        starts = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]])
        ends = np.r_[starts[1:], cust.size] - 1
        ids = cust[starts]
        x[ids] = ends - starts  # distinct days minus one
        first[ids] = day[starts]
        last[ids] = day[ends]
        has[ids] = True
    return PurchaseSummary(
        x=x,
        t_x=last - first,
        T=as_of_day - first,
        first_day=first,
        last_day=last,
        has_history=has,
        as_of_day=as_of_day,
    )
