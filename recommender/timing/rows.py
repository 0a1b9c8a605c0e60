"""Customer rows ``(x, t_x, T)``: checking them, merging identical ones and
evaluating a function once per distinct row.

Customers share few distinct summaries, so both the fits (on merged rows with
weights) and the special functions of the predictions (once per distinct row)
cost far less than one evaluation per customer.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

__all__ = ["check_rows", "compress_rows", "distinct_pairs", "on_distinct_rows"]


def check_rows(x: Any, t_x: Any, T: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, t_x, T)`` broadcast to float64 arrays; ``ValueError`` unless they
    are a possible history (finite, non-negative, ``t_x <= T``, ``t_x = 0``
    without repeat purchases)."""
    x_arr, tx_arr, T_arr = np.broadcast_arrays(
        np.asarray(x, dtype=np.float64),
        np.asarray(t_x, dtype=np.float64),
        np.asarray(T, dtype=np.float64),
    )
    if not (
        np.all(np.isfinite(x_arr)) and np.all(np.isfinite(tx_arr)) and np.all(np.isfinite(T_arr))
    ):
        raise ValueError("x, t_x and T must be finite")
    if np.any(x_arr < 0) or np.any(tx_arr < 0):
        raise ValueError("x and t_x must be non-negative")
    if np.any(tx_arr > T_arr * (1 + 1e-9) + 1e-9):
        raise ValueError("t_x must not exceed T")
    if np.any((x_arr == 0) & (tx_arr != 0)):
        raise ValueError("t_x must be 0 for customers with x = 0")
    return x_arr, tx_arr, T_arr


def compress_rows(
    x: np.ndarray, t_x: np.ndarray, T: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge identical ``(x, t_x, T)`` rows, summing their weights.

    Parameters
    ----------
    x, t_x, T : np.ndarray
        Per-customer summary.
    weights : np.ndarray, optional
        Per-row weights (default 1).

    Returns
    -------
    tuple of np.ndarray
        Unique ``x, t_x, T`` and the summed weights.
    """
    w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    if x.size == 0:
        return x, t_x, T, w
    order = np.lexsort((T, t_x, x))
    xs, ts, Ts = x[order], t_x[order], T[order]
    new = np.r_[True, (xs[1:] != xs[:-1]) | (ts[1:] != ts[:-1]) | (Ts[1:] != Ts[:-1])]
    starts = np.flatnonzero(new)
    return xs[starts], ts[starts], Ts[starts], np.add.reduceat(w[order], starts)


def _row_groups(*flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)`` for equal-length 1-D columns: one index per distinct
    row, and for each row the position of its group in ``first``."""
    order = np.lexsort(flat[::-1])
    new = np.zeros(order.size, dtype=bool)
    new[0] = True
    for a in flat:
        s = a[order]
        new[1:] |= s[1:] != s[:-1]
    inverse = np.empty(order.size, dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return order[new], inverse


def on_distinct_rows(func: Any, *cols: np.ndarray) -> np.ndarray:
    """``func(*cols)`` evaluated once per distinct row of ``cols`` (broadcast first).

    The special functions here cost microseconds per call; customers share
    few distinct ``(x, T)`` values (and buy-again pairs few distinct gap
    parameters), so this is many times faster on big data.
    """
    arrs = np.broadcast_arrays(*(np.asarray(c, dtype=np.float64) for c in cols))
    shape = arrs[0].shape
    flat = [a.ravel() for a in arrs]
    if flat[0].size < 2048:
        return np.asarray(func(*flat), dtype=np.float64).reshape(shape)
    first, inverse = _row_groups(*flat)
    vals = np.asarray(func(*(a[first] for a in flat)), dtype=np.float64)
    return vals[inverse].reshape(shape)


_PAIR_CACHE: list[tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]] = []
_PAIR_LOCK = threading.Lock()


def distinct_pairs(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_row_groups` of ``(x, t)`` (broadcast), remembered per array pair.

    An optimiser evaluates the likelihood hundreds of times on the same two
    (never modified) arrays; their grouping is remembered for the last few
    array objects, held by the cache so that no other array can take their
    identity.
    """
    cacheable = isinstance(x, np.ndarray) and isinstance(t, np.ndarray) and x.shape == t.shape
    if cacheable:
        with _PAIR_LOCK:
            for cx, ct, groups in _PAIR_CACHE:
                if cx is x and ct is t:
                    return groups
    xf, tf = (a.ravel() for a in np.broadcast_arrays(np.asarray(x, float), np.asarray(t, float)))
    if xf.size < 2048:
        return np.arange(xf.size), np.arange(xf.size)
    groups = _row_groups(xf, tf)
    if cacheable:
        with _PAIR_LOCK:
            _PAIR_CACHE.append((x, t, groups))
            del _PAIR_CACHE[:-4]
    return groups
