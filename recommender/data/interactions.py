"""From transactions to a customer x item matrix, and the weighting schemes ALS sees.

The raw matrix counts order lines (times the event weight, optionally decayed by
age), not quantities: one wholesale order of 500 units says less about taste
than five separate orders of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.data.ids import IdIndex

WEIGHTINGS = ("raw", "log", "bm25", "tfidf")


@dataclass
class InteractionData:
    """A customer x item matrix with the indexes that name its rows and columns."""

    matrix: sp.csr_matrix
    customers: IdIndex
    items: IdIndex


def build_matrix(
    frame: pd.DataFrame,
    customers: IdIndex,
    items: IdIndex,
    *,
    half_life_days: float | None = None,
    now: pd.Timestamp | None = None,
) -> sp.csr_matrix:
    """Sum the weight of each customer's rows per item into a CSR matrix.

    Parameters
    ----------
    frame
        Checked transactions (``customer_id``, ``item_id``, ``timestamp``, ``weight``).
    customers, items
        Indexes that fix the rows and columns; ids not in them are ignored.
    half_life_days
        If set, each row counts ``0.5 ** (age / half_life_days)`` where age is
        measured back from ``now`` (default: the last timestamp).
    """
    if "crow" in frame.columns and "irow" in frame.columns:
        # rows already encoded against these indexes (see annotate_rows)
        rows = frame["crow"].to_numpy()
        cols = frame["irow"].to_numpy()
    else:
        rows = customers.rows(frame["customer_id"].to_numpy())
        cols = items.rows(frame["item_id"].to_numpy())
    values = (
        frame["weight"].to_numpy(dtype=np.float64) if "weight" in frame else np.ones(len(frame))
    )
    if half_life_days is not None and len(frame):
        ts = frame["timestamp"].to_numpy(dtype="datetime64[s]").astype(np.int64)
        ref = (
            pd.Timestamp(now).to_datetime64().astype("datetime64[s]").astype(np.int64)
            if now is not None
            else ts.max()
        )
        age_days = np.maximum(ref - ts, 0) / 86400.0
        values = values * np.power(0.5, age_days / float(half_life_days))
    ok = (rows >= 0) & (cols >= 0)
    matrix = sp.csr_matrix(
        (values[ok].astype(np.float32), (rows[ok], cols[ok])),
        shape=(len(customers), len(items)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


def annotate_rows(frame: pd.DataFrame, customers: IdIndex, items: IdIndex) -> pd.DataFrame:
    """Add ``crow``/``irow`` columns (rows in ``customers``/``items``, -1 if absent).

    :func:`build_matrix` uses them instead of looking every id up again, which
    matters when one run builds several matrices from millions of rows. Only
    pass the annotated frame with the same two indexes.
    """
    return frame.assign(
        crow=customers.rows(frame["customer_id"].to_numpy()),
        irow=items.rows(frame["item_id"].to_numpy()),
    )


def apply_weighting(
    matrix: sp.csr_matrix, scheme: str, *, k1: float = 100.0, b: float = 0.8
) -> sp.csr_matrix:
    """Re-weight a count matrix.

    ``raw`` keeps counts; ``log`` uses ``log1p``; ``bm25`` and ``tfidf`` damp
    popular items and long histories (the same formulas as ``implicit``'s
    nearest-neighbour module, applied per customer row). BM25's defaults
    (``k1=100, b=0.8``) are the ones ``implicit`` suggests for ALS: a large
    ``k1`` keeps repeat counts informative instead of saturating at once.
    """
    if scheme not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {scheme!r}; choose one of {', '.join(WEIGHTINGS)}")
    m = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    if scheme == "raw":
        return m
    if scheme == "log":
        m.data = np.log1p(m.data)
        return m
    n_users = m.shape[0]
    # document frequency of each item = number of customers who bought it
    df = np.bincount(m.indices, minlength=m.shape[1]).astype(np.float64)
    idf = np.log(n_users) - np.log1p(df)
    idf = np.maximum(idf, 0.0) + 1e-3  # keep items everyone buys weakly positive
    # re-weighted in place on the (copied) CSR arrays: no round trip through COO
    m.sum_duplicates()
    if scheme == "tfidf":
        m.data = (np.sqrt(m.data) * idf[m.indices]).astype(np.float32)
        return m
    row_sums = np.asarray(m.sum(axis=1)).ravel()
    avg = row_sums.mean() if n_users else 1.0
    length_norm = (1.0 - b) + b * row_sums / max(avg, 1e-12)
    row = np.repeat(np.arange(n_users), np.diff(m.indptr))
    data = m.data * (k1 + 1.0) / (k1 * length_norm[row] + m.data) * idf[m.indices]
    m.data = data.astype(np.float32)
    return m


def rows_in_time_range(
    frame: pd.DataFrame, start: pd.Timestamp | None, stop: pd.Timestamp
) -> pd.DataFrame:
    """Rows with ``start <= timestamp < stop`` (no lower bound for None): a
    slice of a frame in time order (as loaded), which costs nothing, else a
    filtered copy."""
    ts = frame["timestamp"]
    if ts.is_monotonic_increasing:
        lo = 0 if start is None else int(ts.searchsorted(start, side="left"))
        return frame.iloc[lo : int(ts.searchsorted(stop, side="left"))]
    keep = ts < stop if start is None else (ts >= start) & (ts < stop)
    return frame[keep]


def distinct_purchase_days(
    customer_rows: np.ndarray, item_rows: np.ndarray, days: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``(customer, item, day)`` rows, sorted in that order.

    ``days`` are whole day numbers; several lines of one item on one day are
    one purchase day. Returns the three columns of the distinct rows.
    """
    c, i, day = customer_rows, item_rows, days
    if c.size == 0:
        return c, i, day
    d0 = int(day.min())
    span = int(day.max()) - d0 + 1
    if (int(c.max()) + 1) * max(n_items, 1) * span < 2**62:
        # one int64 key: a single sort instead of a three-key lexsort
        key = np.sort((c * max(n_items, 1) + i) * span + (day - d0))
        key = key[np.r_[True, key[1:] != key[:-1]]]
        pair, d = np.divmod(key, span)
        ci, ii = np.divmod(pair, max(n_items, 1))
        return ci, ii, d + d0
    order = np.lexsort((day, i, c))
    c, i, day = c[order], i[order], day[order]
    new = np.r_[True, (c[1:] != c[:-1]) | (i[1:] != i[:-1]) | (day[1:] != day[:-1])]
    return c[new], i[new], day[new]
