"""Each customer's dated purchases, for the console's timeline.

The models keep what they need of the log (counts per customer and item, the
timing summary, the buy-again cycles) but not the days each order was placed;
a person looking at one customer wants those. Training writes them beside the
models as ``purchases.npz`` (one version file, hashed in the manifest like
every other file), and serving reads it on first use.

Format (all arrays one-dimensional, loaded with ``allow_pickle=False``):

============  ===============================================================
``indptr``    int64, ``n_customers + 1``: customer ``c``'s lines are
              ``indptr[c]:indptr[c + 1]``, oldest first
``day``       int32, the line's calendar day, in days since 1970-01-01
``item``      int32, the item's row in the version's item index (-1: an item
              the version left out, bought by too few customers)
``quantity``  float32, units bought of the item that day
``value``     float32, what they cost (quantity x unit price; NaN unknown)
============  ===============================================================

Lines of the same customer, day and item are summed into one.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recommender.store.artifacts import CorruptArtifactError
from recommender.store.bundle import Bundle

#: The file name in a version directory.
PURCHASES_FILE = "purchases.npz"
_EPOCH = np.datetime64("1970-01-01", "D")


def purchase_log_bytes(frame: pd.DataFrame, n_customers: int) -> bytes:
    """The ``purchases.npz`` file of a checked log on the model's id indexes.

    Parameters
    ----------
    frame
        Purchase lines with ``crow`` (customer row), ``irow`` (item row, -1
        for an item left out), ``timestamp``, ``quantity`` and ``price``
        (NaN where unknown).
    n_customers
        Rows of the customer index.
    """
    crow = frame["crow"].to_numpy(dtype=np.int64)
    irow = frame["irow"].to_numpy(dtype=np.int64)
    day = (
        np.asarray(frame["timestamp"].to_numpy(dtype="datetime64[ns]"), dtype="datetime64[D]")
        - _EPOCH
    ).astype(np.int64)
    qty = frame["quantity"].to_numpy(dtype=np.float64)
    price = (
        frame["price"].to_numpy(dtype=np.float64)
        if "price" in frame
        else np.full(len(frame), np.nan)
    )
    ok = crow >= 0
    crow, irow, day, qty, price = crow[ok], irow[ok], day[ok], qty[ok], price[ok]
    if crow.size:
        d0 = int(day.min())
        span = int(day.max()) - d0 + 1
        n_i = int(irow.max()) + 2
        key = (crow * span + (day - d0)) * n_i + (irow + 1)
        order = np.argsort(key)  # equal keys are summed, so their order does not matter
        key = key[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        quantity = np.add.reduceat(qty[order], starts)
        line_value = (qty * price)[order]
        value = np.add.reduceat(line_value, starts)  # NaN when any line's price is unknown
        first = order[starts]
        item, out_day, cust = irow[first], day[first], crow[first]
    else:
        quantity = value = np.zeros(0)
        item = out_day = cust = np.zeros(0, dtype=np.int64)
    indptr = np.r_[0, np.cumsum(np.bincount(cust, minlength=n_customers))].astype(np.int64)
    buf = io.BytesIO()
    np.savez(
        buf,
        indptr=indptr,
        day=out_day.astype(np.int32),
        item=item.astype(np.int32),
        quantity=quantity.astype(np.float32),
        value=value.astype(np.float32),
    )
    return buf.getvalue()


@dataclass(frozen=True)
class Order:
    """What a customer bought on one day.

    Attributes
    ----------
    date
        ``YYYY-MM-DD``.
    items
        ``(item row, quantity, value)`` per item, the item row -1 for an item
        the version left out; value NaN where the price is unknown.
    """

    date: str
    items: list[tuple[int, float, float]]

    @property
    def value(self) -> float:
        """The day's spend (NaN when any line's price is unknown)."""
        return float(sum(v for _, _, v in self.items)) if self.items else 0.0


class PurchaseLog:
    """The dated purchases of a version (see the module docstring)."""

    def __init__(self, arrays: dict[str, np.ndarray], n_customers: int, n_items: int) -> None:
        names = ("indptr", "day", "item", "quantity", "value")
        missing = [n for n in names if n not in arrays]
        if missing:
            raise CorruptArtifactError(f"{PURCHASES_FILE}: arrays missing: {missing}")
        indptr = np.asarray(arrays["indptr"])
        n = int(indptr[-1]) if indptr.size else -1
        if indptr.shape != (n_customers + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
            raise CorruptArtifactError(f"{PURCHASES_FILE}: indptr does not fit the customers")
        for name in names[1:]:
            if np.asarray(arrays[name]).shape != (n,):
                raise CorruptArtifactError(f"{PURCHASES_FILE}: {name} has the wrong length")
        item = np.asarray(arrays["item"])
        if item.size and (item.min() < -1 or item.max() >= n_items):
            raise CorruptArtifactError(f"{PURCHASES_FILE}: names items the version does not have")
        if not np.isfinite(arrays["quantity"]).all():
            raise CorruptArtifactError(f"{PURCHASES_FILE}: quantities are not finite")
        self.indptr = indptr.astype(np.int64)
        self.day = np.asarray(arrays["day"], dtype=np.int64)
        self.item = item.astype(np.int64)
        self.quantity = np.asarray(arrays["quantity"], dtype=np.float64)
        self.value = np.asarray(arrays["value"], dtype=np.float64)

    @classmethod
    def of(cls, bundle: Bundle) -> PurchaseLog | None:
        """The bundle's purchase log, checked against its manifest; None when the
        version has none (trained before it was written).

        Raises
        ------
        CorruptArtifactError
            When the file is missing, changed since training, or malformed.
        """
        info = bundle.manifest.get("files", {}).get(PURCHASES_FILE)
        if info is None:
            return None
        path = Path(bundle.path) / PURCHASES_FILE
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CorruptArtifactError(f"{path}: unreadable ({exc})") from None
        if hashlib.sha256(data).hexdigest() != info.get("sha256"):
            raise CorruptArtifactError(f"{path}: fails its sha256 check")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (ValueError, OSError, EOFError) as exc:
            raise CorruptArtifactError(f"{path}: cannot read ({exc})") from None
        return cls(arrays, bundle.n_customers, bundle.n_items)

    def lines(self, row: int) -> slice:
        """Customer ``row``'s lines, oldest first."""
        return slice(int(self.indptr[row]), int(self.indptr[row + 1]))

    def days(self, row: int, *, limit: int = 2000) -> list[str]:
        """Customer ``row``'s purchase days (``YYYY-MM-DD``), oldest first; the last ``limit``."""
        day = self.day[self.lines(row)]
        distinct = day[np.r_[True, day[1:] != day[:-1]]] if day.size else day
        return [day_text(int(d)) for d in distinct[-limit:]]

    def orders(self, row: int, *, limit: int, before: str | None = None) -> tuple[list[Order], int]:
        """Customer ``row``'s orders (one per purchase day), newest first.

        Parameters
        ----------
        limit
            At most this many days.
        before
            Only days before this ``YYYY-MM-DD`` (the page's "older" link).

        Returns
        -------
        tuple
            The orders and how many purchase days the customer has in all.
        """
        s = self.lines(row)
        day = self.day[s]
        starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]]) if day.size else day[:0]
        total = int(starts.size)
        ends = np.r_[starts[1:], day.size]
        keep = np.arange(total)
        if before is not None:
            cut = int((np.datetime64(before, "D") - _EPOCH).astype(np.int64))
            keep = keep[day[starts] < cut]
        out = []
        for j in keep[::-1][:limit]:
            a, b = s.start + int(starts[j]), s.start + int(ends[j])
            out.append(
                Order(
                    date=day_text(int(self.day[a])),
                    items=[
                        (int(i), float(q), float(v))
                        for i, q, v in zip(
                            self.item[a:b], self.quantity[a:b], self.value[a:b], strict=True
                        )
                    ],
                )
            )
        return out, total

    def last_bought(self, rows: np.ndarray, item: int) -> list[dict[str, Any]]:
        """For each of ``rows``: the days they bought ``item`` and the last of them."""
        out = []
        for r in np.asarray(rows, dtype=np.int64):
            s = self.lines(int(r))
            days = self.day[s][self.item[s] == item]
            out.append(
                {
                    "days": int(days.size),
                    "last": day_text(int(days.max())) if days.size else None,
                }
            )
        return out


def day_text(day: int) -> str:
    """A day (days since 1970-01-01) as ``YYYY-MM-DD``."""
    return str(_EPOCH + np.timedelta64(int(day), "D"))


__all__ = ["PURCHASES_FILE", "Order", "PurchaseLog", "day_text", "purchase_log_bytes"]
