"""What the shop knows about every customer and item as of a cutoff day, and
the feature rows of (customer, candidate item) pairs built from it.

A :class:`ShopSnapshot` is built from the purchase lines strictly before its
``cutoff`` day: nothing on or after the cutoff can leak into a feature, so a
ranker trained on features as of ``t0`` with labels from ``[t0, t1)`` sees the
same kind of rows when it scores as of ``t1``.

The snapshot is plain arrays (:meth:`ShopSnapshot.to_arrays` /
:meth:`ShopSnapshot.from_arrays`) so a serving process can load it from an
``.npz`` and compute one customer's features with numpy alone:

* per (customer, item) pair, aligned with the history CSR (``indptr`` /
  ``indices``): distinct purchase days, first and last day, mean gap between
  purchase days, and a time-decayed frequency (the personal vector of
  TIFU-KNN: baskets decay by position inside groups and groups decay by age);
* per customer: shopping days (baskets), first and last day, mean gap between
  baskets, the share of their purchases that rebuy an item, distinct items,
  mean price paid, and their category mix (a customers x categories CSR);
* per item: distinct buyers all time, in the last ``recent_days`` and in the
  ``recent_days`` before, the share of buyers who rebought it, the median of
  the customers' mean repurchase gaps, and mean price.

:func:`pair_features` turns candidate pairs into the fixed, named columns of
:data:`FEATURES` (float32; NaN where a value does not exist, which LightGBM
routes down its own branch).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.data.interactions import distinct_purchase_days
from recommender.errors import NotFittedError

if TYPE_CHECKING:
    from recommender.data.ids import IdIndex
    from recommender.ranking.candidates import Candidates
    from recommender.timing.repurchase import RepurchaseModel
    from recommender.timing.selection import PurchaseTimingModel

__all__ = [
    "FEATURES",
    "PurchaseLines",
    "ShopSnapshot",
    "build_snapshot",
    "pair_features",
    "pair_values",
]

SNAPSHOT_SCHEMA = "encore.snapshot/1"

#: The feature columns, in order; saved with every ranker so that a model is
#: never fed columns in another order.
FEATURES: tuple[str, ...] = (
    # the customer and this item
    "pair_days",  # distinct days the customer bought the item
    "pair_share",  # pair_days / the customer's shopping days
    "pair_decayed",  # TIFU-KNN personal vector: recent baskets count more
    "days_since_pair",  # days since the customer last bought it (NaN: never)
    "pair_mean_gap",  # the customer's mean gap between purchase days of it
    "cycle_own",  # days_since_pair / pair_mean_gap
    "cycle_item",  # days_since_pair / the item's median repurchase gap
    "buy_again_p",  # RepurchaseModel: P(rebuy within the horizon)
    "als_score",
    "als_rank",  # rank of als_score among the customer's candidates (0 = best)
    "knn_score",  # item-kNN similarity to the customer's decayed history
    "knn_rank",
    # the item
    "item_buyers_share",  # distinct buyers / customers with a purchase
    "item_recent_share",  # distinct buyers in the recent window, same scale
    "item_trend",  # recent buyers / buyers in the window before (smoothed)
    "item_repeat_rate",  # share of the item's buyers who bought it on 2+ days
    "item_median_gap",  # median over customers of their mean repurchase gap
    "item_price",
    # the customer
    "cust_baskets",  # shopping days (BG/NBD's frequency + 1)
    "cust_recency",  # days since the last basket
    "cust_tenure",  # days since the first basket (BG/NBD's T)
    "cust_mean_gap",  # mean days between baskets
    "cust_repeat_share",  # share of their purchases that rebuy an item
    "cust_items",  # distinct items bought
    "cust_p_active",  # timing model, when given
    "cust_expected_purchases",  # timing model, when given
    # the customer and the item's category and price
    "category_share",  # share of the customer's purchases in the item's category
    "price_ratio",  # item price / the customer's mean price paid
)

#: TIFU-KNN's published settings (group size, decay inside a group, decay
#: between groups), the same as TIFUKNNRecommender's defaults.
TIFU_GROUP_SIZE = 7
TIFU_WITHIN_DECAY = 0.9
TIFU_GROUP_DECAY = 0.7


@dataclass(frozen=True)
class PurchaseLines:
    """Order lines as row-indexed arrays (one entry per line).

    Attributes
    ----------
    customer_rows, item_rows
        int64 rows of each line's customer and item.
    days
        int64 day number of each line (any origin).
    quantity, price
        Per line; ``price`` may be None when the shop has no prices.
    n_customers, n_items
        Sizes of the row spaces.
    item_category
        Category code of each item row (int64, ``-1`` unknown), or None.
    """

    customer_rows: np.ndarray
    item_rows: np.ndarray
    days: np.ndarray
    n_customers: int
    n_items: int
    quantity: np.ndarray | None = None
    price: np.ndarray | None = None
    item_category: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = np.asarray(self.customer_rows).size
        for name in ("item_rows", "days", "quantity", "price"):
            value = getattr(self, name)
            if value is not None and np.asarray(value).size != n:
                raise ValueError(f"{name} must have one entry per line")
        if self.item_category is not None and np.asarray(self.item_category).size != self.n_items:
            raise ValueError("item_category must have one entry per item row")

    def __len__(self) -> int:
        return int(np.asarray(self.customer_rows).size)

    @cached_property
    def purchase_days(self) -> PurchaseDays:
        """The distinct purchase days of every line, sorted once for every cutoff
        a snapshot is built at (see :class:`PurchaseDays`).

        Raises
        ------
        ValueError
            When a line's customer or item row is out of range.
        """
        return PurchaseDays.of(self)

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        customers: IdIndex,
        items: IdIndex,
        *,
        catalog: pd.DataFrame | None = None,
    ) -> PurchaseLines:
        """Lines of a checked transaction frame (``customer_id``, ``item_id``,
        ``timestamp``, optional ``quantity`` and ``price``); a day is a calendar
        day of the (naive UTC) timestamps, counted from 1970-01-01.

        ``catalog`` (``item_id`` and ``category``) gives the item categories.
        Ids not in the indexes are dropped.
        """
        c = customers.rows(frame["customer_id"].to_numpy())
        i = items.rows(frame["item_id"].to_numpy())
        return cls._from_rows(frame, c, i, len(customers), items, catalog)

    @classmethod
    def from_indexed(
        cls,
        frame: pd.DataFrame,
        customers: IdIndex,
        items: IdIndex,
        *,
        catalog: pd.DataFrame | None = None,
    ) -> PurchaseLines:
        """:meth:`from_frame` of a frame whose rows are already on the indexes
        (``crow`` and ``irow`` columns, ``-1`` for an id left out): no id is
        looked up again."""
        c = frame["crow"].to_numpy(dtype=np.int64)
        i = frame["irow"].to_numpy(dtype=np.int64)
        return cls._from_rows(frame, c, i, len(customers), items, catalog)

    @classmethod
    def _from_rows(
        cls,
        frame: pd.DataFrame,
        c: np.ndarray,
        i: np.ndarray,
        n_customers: int,
        items: IdIndex,
        catalog: pd.DataFrame | None,
    ) -> PurchaseLines:
        keep = (c >= 0) & (i >= 0)
        days = frame["timestamp"].to_numpy(dtype="datetime64[D]").astype(np.int64)
        qty = frame["quantity"].to_numpy()[keep] if "quantity" in frame else None
        price = frame["price"].to_numpy(dtype=np.float64)[keep] if "price" in frame else None
        category = None
        if catalog is not None and "category" in catalog:
            codes, _ = pd.factorize(catalog["category"])
            rows = items.rows(catalog["item_id"].to_numpy())
            category = np.full(len(items), -1, dtype=np.int64)
            ok = rows >= 0
            category[rows[ok]] = codes[ok]
        return cls(
            c[keep].astype(np.int64),
            i[keep].astype(np.int64),
            days[keep],
            n_customers,
            len(items),
            qty,
            price,
            category,
        )

    def before(self, day: int) -> PurchaseLines:
        """The lines strictly before ``day``."""
        return self._select(np.asarray(self.days) < day)

    def between(self, start: int, end: int) -> PurchaseLines:
        """The lines in ``[start, end)``."""
        d = np.asarray(self.days)
        return self._select((d >= start) & (d < end))

    def _select(self, mask: np.ndarray) -> PurchaseLines:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.asarray(a)[mask]

        return PurchaseLines(
            np.asarray(self.customer_rows)[mask],
            np.asarray(self.item_rows)[mask],
            np.asarray(self.days)[mask],
            self.n_customers,
            self.n_items,
            pick(self.quantity),
            pick(self.price),
            self.item_category,
        )

    def day_matrix(self) -> sp.csr_matrix:
        """Customers x items: distinct days each customer bought each item (float32)."""
        c = np.asarray(self.customer_rows, dtype=np.int64)
        i = np.asarray(self.item_rows, dtype=np.int64)
        d = np.asarray(self.days, dtype=np.int64)
        c, i, d = distinct_purchase_days(c, i, d, self.n_items)
        m = sp.csr_matrix(
            (np.ones(c.size, dtype=np.float32), (c, i)), shape=(self.n_customers, self.n_items)
        )
        m.sum_duplicates()
        return m

    def line_matrix(self) -> sp.csr_matrix:
        """Customers x items: number of order lines (float32)."""
        m = sp.csr_matrix(
            (
                np.ones(len(self), dtype=np.float32),
                (np.asarray(self.customer_rows), np.asarray(self.item_rows)),
            ),
            shape=(self.n_customers, self.n_items),
        )
        m.sum_duplicates()
        return m


@dataclass(frozen=True)
class PurchaseDays:
    """The distinct ``(customer, item, day)`` purchases of a set of lines, sorted
    in that order, and the shopping days (baskets) they fall on.

    A snapshot as of any cutoff keeps the purchases before it: a prefix of each
    pair's days and of each customer's baskets, so a basket's position counted
    from the customer's oldest one does not depend on the cutoff.
    """

    customer: np.ndarray
    item: np.ndarray
    day: np.ndarray
    position: np.ndarray
    """Each purchase's basket: 0 for the customer's oldest shopping day."""
    basket_customer: np.ndarray
    """Every basket's customer, baskets sorted by customer then day."""
    basket_day: np.ndarray

    @classmethod
    def of(cls, lines: PurchaseLines) -> PurchaseDays:
        n_c, n_i = int(lines.n_customers), int(lines.n_items)
        c_line = np.asarray(lines.customer_rows, dtype=np.int64)
        i_line = np.asarray(lines.item_rows, dtype=np.int64)
        d_line = np.asarray(lines.days, dtype=np.int64)
        valid = (c_line >= 0) & (c_line < n_c) & (i_line >= 0) & (i_line < n_i)
        if not valid.all():
            raise ValueError("a customer or item row is out of range")
        c, i, d = distinct_purchase_days(c_line, i_line, d_line, n_i)
        if c.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(empty, empty, empty, empty, empty, empty)
        d_low = int(d.min())
        span = int(d.max()) - d_low + 1
        basket_key = c * span + (d - d_low)
        basket_keys = _sorted_unique(basket_key)
        b_cust = basket_keys // span
        n_baskets = np.bincount(b_cust, minlength=n_c)
        first_basket = np.cumsum(n_baskets) - n_baskets
        position = np.searchsorted(basket_keys, basket_key) - first_basket[c]
        return cls(c, i, d, position, b_cust, basket_keys % span + d_low)


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """``np.unique`` of integer keys by one sort: numpy's hash-based unique is
    several times slower on millions of keys, and the keys are wanted sorted."""
    out = np.sort(keys)
    if out.size:
        out = out[np.r_[True, out[1:] != out[:-1]]]
    return out


def _group_median(groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` per group (NaN for an empty group)."""
    out = np.full(n_groups, np.nan)
    if values.size == 0:
        return out
    order = np.lexsort((values, groups))
    g, v = groups[order], values[order]
    counts = np.bincount(g, minlength=n_groups)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    lo = starts[has] + (counts[has] - 1) // 2
    hi = starts[has] + counts[has] // 2
    out[has] = 0.5 * (v[lo] + v[hi])
    return out


@dataclass
class ShopSnapshot:
    """Per pair, customer and item statistics of the lines before ``cutoff``.

    Build with :func:`build_snapshot`. Every attribute is a numpy array (or a
    scalar), so :meth:`to_arrays` is all a serving process needs.
    """

    cutoff: int
    recent_days: int
    n_customers: int
    n_items: int
    n_categories: int
    # (customer, item) pairs, CSR over customers, items sorted in each row
    indptr: np.ndarray
    indices: np.ndarray
    pair_days: np.ndarray
    pair_first: np.ndarray
    pair_last: np.ndarray
    pair_mean_gap: np.ndarray
    pair_decayed: np.ndarray
    # customers
    cust_baskets: np.ndarray
    cust_first: np.ndarray
    cust_last: np.ndarray
    cust_repeat_share: np.ndarray
    cust_mean_price: np.ndarray
    cat_indptr: np.ndarray
    cat_indices: np.ndarray
    cat_share: np.ndarray
    # items
    item_buyers: np.ndarray
    item_recent: np.ndarray
    item_previous: np.ndarray
    item_repeat_rate: np.ndarray
    item_median_gap: np.ndarray
    item_price: np.ndarray
    item_category: np.ndarray

    # -- views -----------------------------------------------------------------
    @property
    def n_active(self) -> int:
        """Customers with at least one purchase before the cutoff."""
        # cached: one customer's features must not count every customer
        n = self.__dict__.get("_n_active")
        if n is None:
            n = self.__dict__["_n_active"] = int((self.cust_baskets > 0).sum())
        return int(n)

    def history(self, values: str = "pair_days") -> sp.csr_matrix:
        """Customers x items CSR holding one pair statistic (default distinct days)."""
        return sp.csr_matrix(
            (np.asarray(getattr(self, values), dtype=np.float32), self.indices, self.indptr),
            shape=(self.n_customers, self.n_items),
        )

    def history_rows(self, rows: np.ndarray, values: str = "pair_days") -> sp.csr_matrix:
        """``history(values)[rows]`` from the customers' own slices (cheap for one
        customer); rows outside the snapshot come back empty."""
        rows = np.asarray(rows, dtype=np.int64)
        known = (rows >= 0) & (rows < self.n_customers)
        safe = np.where(known, rows, 0)
        starts = self.indptr[safe]
        counts = np.where(known, self.indptr[safe + 1] - starts, 0)
        indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
        take = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
        data = np.asarray(getattr(self, values), dtype=np.float32)[take]
        return sp.csr_matrix((data, self.indices[take], indptr), shape=(rows.size, self.n_items))

    def category_rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """``category_matrix()[rows]`` from the customers' own slices; rows
        outside the snapshot come back empty."""
        rows = np.asarray(rows, dtype=np.int64)
        known = (rows >= 0) & (rows < self.n_customers)
        safe = np.where(known, rows, 0)
        starts = self.cat_indptr[safe]
        counts = np.where(known, self.cat_indptr[safe + 1] - starts, 0)
        indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
        take = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
        return sp.csr_matrix(
            (self.cat_share[take], self.cat_indices[take], indptr),
            shape=(rows.size, max(self.n_categories, 1)),
        )

    def category_matrix(self) -> sp.csr_matrix:
        """Customers x categories: share of each customer's purchases per category."""
        return sp.csr_matrix(
            (self.cat_share, self.cat_indices, self.cat_indptr),
            shape=(self.n_customers, max(self.n_categories, 1)),
        )

    def item_popularity(self) -> np.ndarray:
        """Recent buyers, ties broken by all-time buyers (for popular candidates)."""
        total = self.item_buyers.astype(np.float64)
        return self.item_recent + total / (total.max(initial=0.0) + 1.0)

    def pair_index(self, customer_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Position of each (customer, item) in the pair arrays, ``-1`` if never bought.

        A single customer's lookup reads only their own slice of the history.
        """
        c = np.asarray(customer_rows, dtype=np.int64)
        i = np.asarray(item_rows, dtype=np.int64)
        out = np.full(c.size, -1, dtype=np.int64)
        if c.size == 0:
            return out
        known = (c >= 0) & (c < self.n_customers)
        if known.all() and c.min() == c.max():
            lo, hi = int(self.indptr[c[0]]), int(self.indptr[c[0] + 1])
            row = self.indices[lo:hi]
            pos = np.searchsorted(row, i)
            hit = pos < row.size
            hit[hit] = row[pos[hit]] == i[hit]
            out[hit] = lo + pos[hit]
            return out
        keys = self._pair_keys()
        want = c[known] * self.n_items + i[known]
        pos = np.searchsorted(keys, want)
        pos_c = np.minimum(pos, max(keys.size - 1, 0))
        hit = (pos < keys.size) & (keys[pos_c] == want) if keys.size else np.zeros(0, bool)
        sub = np.full(want.size, -1, dtype=np.int64)
        sub[hit] = pos[hit]
        out[known] = sub
        return out

    def _pair_keys(self) -> np.ndarray:
        # cached outside the dataclass fields, so to_arrays never stores it
        keys: np.ndarray | None = self.__dict__.get("_keys")
        if keys is None:
            rows = np.repeat(np.arange(self.n_customers, dtype=np.int64), np.diff(self.indptr))
            keys = rows * self.n_items + self.indices
            self.__dict__["_keys"] = keys
        return keys

    # -- storage ---------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every field as a numpy array (scalars 0-d), for ``np.savez``."""
        out = {f.name: np.asarray(getattr(self, f.name)) for f in fields(self)}
        out["schema"] = np.asarray(SNAPSHOT_SCHEMA)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> ShopSnapshot:
        """The snapshot :meth:`to_arrays` gave (e.g. ``np.load(path, allow_pickle=False)``).

        Raises
        ------
        ValueError
            On an unknown schema, a missing field or arrays of the wrong length.
        """
        schema = str(np.asarray(arrays.get("schema", "")))
        if schema != SNAPSHOT_SCHEMA:
            raise ValueError(f"unknown snapshot schema {schema!r}; expected {SNAPSHOT_SCHEMA}")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in arrays:
                raise ValueError(f"snapshot arrays lack {f.name!r}")
            value = np.asarray(arrays[f.name])
            kw[f.name] = int(value) if value.ndim == 0 else value
        snap = cls(**kw)
        snap._check()
        return snap

    def _check(self) -> None:
        n_pairs = int(self.indptr[-1]) if self.indptr.size else 0
        checks = {
            "indptr": (self.indptr.size, self.n_customers + 1),
            "indices": (self.indices.size, n_pairs),
            "cat_indptr": (self.cat_indptr.size, self.n_customers + 1),
            "item_category": (self.item_category.size, self.n_items),
        }
        for name in ("pair_days", "pair_first", "pair_last", "pair_mean_gap", "pair_decayed"):
            checks[name] = (getattr(self, name).size, n_pairs)
        for name in ("cust_baskets", "cust_first", "cust_last", "cust_repeat_share"):
            checks[name] = (getattr(self, name).size, self.n_customers)
        for name in ("item_buyers", "item_recent", "item_previous", "item_median_gap"):
            checks[name] = (getattr(self, name).size, self.n_items)
        for name, (got, want) in checks.items():
            if got != want:
                raise ValueError(f"snapshot array {name} has {got} entries, expected {want}")


def build_snapshot(lines: PurchaseLines, cutoff: int, *, recent_days: int = 28) -> ShopSnapshot:
    """The statistics of ``lines`` strictly before day ``cutoff``.

    Parameters
    ----------
    lines
        The shop's order lines; lines on or after ``cutoff`` are ignored.
    cutoff
        First day the snapshot does not know.
    recent_days
        Length of the window behind "recent buyers" and of the one before it
        that the trend compares with.
    """
    n_c, n_i = int(lines.n_customers), int(lines.n_items)
    days = lines.purchase_days
    keep = days.day < cutoff
    c, i, d = days.customer[keep], days.item[keep], days.day[keep]
    # pairs: runs of equal (customer, item) in the sorted triples
    new_pair = np.r_[True, (c[1:] != c[:-1]) | (i[1:] != i[:-1])] if c.size else np.zeros(0, bool)
    pair_id = np.cumsum(new_pair) - 1
    starts = np.flatnonzero(new_pair)
    ends = np.r_[starts[1:], c.size].astype(np.int64)
    p_c, p_i = c[starts], i[starts]
    n_pairs = starts.size
    p_days = (ends - starts).astype(np.float32)
    p_first = d[starts].astype(np.int32) if c.size else np.zeros(0, np.int32)
    p_last = d[ends - 1].astype(np.int32) if c.size else np.zeros(0, np.int32)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_gap = np.where(p_days > 1, (p_last - p_first) / np.maximum(p_days - 1, 1), np.nan).astype(
            np.float32
        )

    # baskets (shopping days) before the cutoff: a prefix of each customer's
    b_keep = days.basket_day < cutoff
    n_baskets = np.bincount(days.basket_customer[b_keep], minlength=n_c)
    n_b = n_baskets[c]
    back = n_b - 1 - days.position[keep]
    group, within = np.divmod(back, TIFU_GROUP_SIZE)
    in_group = np.minimum(TIFU_GROUP_SIZE, n_b - group * TIFU_GROUP_SIZE)
    n_groups = -(-n_b // TIFU_GROUP_SIZE)
    # the decays by table lookup: the same powers as elementwise, a few times faster
    within_decay = np.power(TIFU_WITHIN_DECAY, np.arange(TIFU_GROUP_SIZE))
    group_decay = np.power(TIFU_GROUP_DECAY, np.arange(int(group.max(initial=0)) + 1))
    weight = within_decay[within] / in_group * group_decay[group] / np.maximum(n_groups, 1)
    p_decayed = np.bincount(pair_id, weights=weight, minlength=n_pairs).astype(np.float32)

    indptr = np.r_[0, np.cumsum(np.bincount(p_c, minlength=n_c))].astype(np.int64)

    # customers
    all_baskets = np.bincount(days.basket_customer, minlength=n_c)
    first_basket = np.cumsum(all_baskets) - all_baskets
    cust_first = np.full(n_c, -1, dtype=np.int32)
    cust_last = np.full(n_c, -1, dtype=np.int32)
    has = n_baskets > 0
    cust_first[has] = days.basket_day[first_basket[has]]
    cust_last[has] = days.basket_day[first_basket[has] + n_baskets[has] - 1]
    purchases = np.bincount(c, minlength=n_c).astype(np.float64)
    repeats = purchases - np.bincount(p_c, minlength=n_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        cust_repeat = np.where(purchases > 0, repeats / purchases, np.nan).astype(np.float32)

    price = lines.price
    cust_price = np.full(n_c, np.nan, dtype=np.float32)
    item_price = np.full(n_i, np.nan, dtype=np.float32)
    if price is not None:
        # the data contract's price is the unit price of the line
        line_kept = np.asarray(lines.days) < cutoff
        c_line = np.asarray(lines.customer_rows, dtype=np.int64)[line_kept]
        i_line = np.asarray(lines.item_rows, dtype=np.int64)[line_kept]
        unit = np.asarray(price, dtype=np.float64)[line_kept]
        n_line_c = np.bincount(c_line, minlength=n_c)
        n_line_i = np.bincount(i_line, minlength=n_i)
        with np.errstate(invalid="ignore", divide="ignore"):
            cust_price = (np.bincount(c_line, weights=unit, minlength=n_c) / n_line_c).astype(
                np.float32
            )
            item_price = (np.bincount(i_line, weights=unit, minlength=n_i) / n_line_i).astype(
                np.float32
            )
        cust_price[n_line_c == 0] = np.nan
        item_price[n_line_i == 0] = np.nan

    # category mix of each customer's purchases (distinct days)
    if lines.item_category is not None:
        item_cat = np.asarray(lines.item_category, dtype=np.int64)
    else:
        item_cat = np.full(n_i, -1, dtype=np.int64)
    n_cat = int(item_cat.max(initial=-1)) + 1
    if n_cat > 0:
        cats = item_cat[p_i]
        known = cats >= 0
        mix = sp.csr_matrix(
            (p_days[known].astype(np.float64), (p_c[known], cats[known])), shape=(n_c, n_cat)
        )
        mix.sum_duplicates()
        totals = np.asarray(mix.sum(axis=1)).ravel()
        row = np.repeat(np.arange(n_c), np.diff(mix.indptr))
        mix.data = mix.data / totals[row]
        cat_indptr, cat_indices = mix.indptr.astype(np.int64), mix.indices.astype(np.int32)
        cat_share = mix.data.astype(np.float32)
    else:
        cat_indptr = np.zeros(n_c + 1, dtype=np.int64)
        cat_indices = np.zeros(0, dtype=np.int32)
        cat_share = np.zeros(0, dtype=np.float32)

    # items
    buyers = np.bincount(p_i, minlength=n_i).astype(np.float32)
    recent_pair = np.zeros(n_pairs, dtype=bool)
    previous_pair = np.zeros(n_pairs, dtype=bool)
    recent_pair[pair_id[d >= cutoff - recent_days]] = True
    previous_pair[pair_id[(d >= cutoff - 2 * recent_days) & (d < cutoff - recent_days)]] = True
    item_recent = np.bincount(p_i[recent_pair], minlength=n_i).astype(np.float32)
    item_previous = np.bincount(p_i[previous_pair], minlength=n_i).astype(np.float32)
    repeat_buyers = np.bincount(p_i[p_days > 1], minlength=n_i)
    with np.errstate(invalid="ignore", divide="ignore"):
        item_repeat = np.where(buyers > 0, repeat_buyers / buyers, np.nan).astype(np.float32)
    rebought = p_days > 1
    item_gap = _group_median(p_i[rebought], p_gap[rebought].astype(np.float64), n_i).astype(
        np.float32
    )

    return ShopSnapshot(
        cutoff=int(cutoff),
        recent_days=int(recent_days),
        n_customers=n_c,
        n_items=n_i,
        n_categories=max(n_cat, 0),
        indptr=indptr,
        indices=p_i.astype(np.int32),
        pair_days=p_days,
        pair_first=p_first,
        pair_last=p_last,
        pair_mean_gap=p_gap,
        pair_decayed=p_decayed,
        cust_baskets=n_baskets.astype(np.int32),
        cust_first=cust_first,
        cust_last=cust_last,
        cust_repeat_share=cust_repeat,
        cust_mean_price=cust_price,
        cat_indptr=cat_indptr,
        cat_indices=cat_indices,
        cat_share=cat_share,
        item_buyers=buyers,
        item_recent=item_recent,
        item_previous=item_previous,
        item_repeat_rate=item_repeat,
        item_median_gap=item_gap,
        item_price=item_price,
        item_category=item_cat.astype(np.int32),
    )


def group_rank(groups: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """0-based rank of each score inside its group (0 = highest; NaN last).

    ``groups`` need not be sorted; ties go to the earlier entry.
    """
    n = scores.size
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    s = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.lexsort((np.arange(n), -s, groups))
    g = groups[order]
    start = np.r_[True, g[1:] != g[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    rank = np.empty(n, dtype=np.float32)
    rank[order] = np.arange(n) - first
    return rank


def pair_features(
    snapshot: ShopSnapshot,
    candidates: Candidates,
    *,
    repurchase: RepurchaseModel | None = None,
    timing: PurchaseTimingModel | None = None,
    horizon_days: float = 28.0,
) -> np.ndarray:
    """The :data:`FEATURES` of every candidate pair, shape ``(pairs, len(FEATURES))``.

    Rows follow the candidates' CSR order (customer by customer, items
    ascending).

    Parameters
    ----------
    snapshot
        Statistics as of the cutoff the candidates were generated at.
    candidates
        Pairs with their ALS and item-kNN scores.
    repurchase
        A :class:`RepurchaseModel` fitted on the same lines (as of the
        snapshot's cutoff); without it ``buy_again_p`` is NaN.
    timing
        A fitted :class:`PurchaseTimingModel` (same cutoff); without it the
        ``cust_p_active`` and ``cust_expected_purchases`` columns are NaN.
    horizon_days
        The window the probabilities look ahead (the label window).
    """
    if snapshot.n_items != candidates.matrix.shape[1]:
        raise ValueError("snapshot and candidates have different item counts")
    cut = float(snapshot.cutoff)
    m = candidates.matrix
    local = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    cust = candidates.rows[local]
    item = m.indices.astype(np.int64)
    n = item.size
    out = np.full((n, len(FEATURES)), np.nan, dtype=np.float32)
    col = {name: j for j, name in enumerate(FEATURES)}

    pos = snapshot.pair_index(cust, item)
    bought = pos >= 0
    p = pos[bought]
    known_c = (cust >= 0) & (cust < snapshot.n_customers)
    c_safe = np.where(known_c, cust, 0)
    baskets = np.where(known_c, snapshot.cust_baskets[c_safe], 0).astype(np.float32)

    pair_days = np.zeros(n, dtype=np.float32)
    pair_days[bought] = snapshot.pair_days[p]
    out[:, col["pair_days"]] = pair_days
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, col["pair_share"]] = np.where(baskets > 0, pair_days / baskets, 0.0)
    decayed = np.zeros(n, dtype=np.float32)
    decayed[bought] = snapshot.pair_decayed[p]
    out[:, col["pair_decayed"]] = decayed
    since = np.full(n, np.nan, dtype=np.float32)
    since[bought] = cut - snapshot.pair_last[p]
    out[:, col["days_since_pair"]] = since
    gap = np.full(n, np.nan, dtype=np.float32)
    gap[bought] = snapshot.pair_mean_gap[p]
    out[:, col["pair_mean_gap"]] = gap
    item_gap = snapshot.item_median_gap[item]
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, col["cycle_own"]] = since / gap
        out[:, col["cycle_item"]] = since / item_gap

    if repurchase is not None:
        out[:, col["buy_again_p"]] = _buy_again(repurchase, cust, item, horizon_days, cut)

    out[:, col["als_score"]] = candidates.als_score
    out[:, col["knn_score"]] = candidates.knn_score
    out[:, col["als_rank"]] = group_rank(local, candidates.als_score)
    out[:, col["knn_rank"]] = group_rank(local, candidates.knn_score)

    active = max(snapshot.n_active, 1)
    out[:, col["item_buyers_share"]] = snapshot.item_buyers[item] / active
    out[:, col["item_recent_share"]] = snapshot.item_recent[item] / active
    out[:, col["item_trend"]] = (snapshot.item_recent[item] + 1.0) / (
        snapshot.item_previous[item] + 1.0
    )
    out[:, col["item_repeat_rate"]] = snapshot.item_repeat_rate[item]
    out[:, col["item_median_gap"]] = item_gap
    out[:, col["item_price"]] = snapshot.item_price[item]

    has = known_c & (baskets > 0)
    first = snapshot.cust_first[c_safe].astype(np.float32)
    last = snapshot.cust_last[c_safe].astype(np.float32)
    out[:, col["cust_baskets"]] = baskets
    out[:, col["cust_recency"]] = np.where(has, cut - last, np.nan)
    out[:, col["cust_tenure"]] = np.where(has, cut - first, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, col["cust_mean_gap"]] = np.where(baskets > 1, (last - first) / (baskets - 1), np.nan)
    out[:, col["cust_repeat_share"]] = np.where(has, snapshot.cust_repeat_share[c_safe], np.nan)
    n_own = snapshot.indptr[c_safe + 1] - snapshot.indptr[c_safe]
    out[:, col["cust_items"]] = np.where(known_c, n_own, 0).astype(np.float32)
    if timing is not None:
        pred = timing.predict(horizon_days, c_safe, as_of_day=max(cut, float(timing.as_of_day_)))
        out[:, col["cust_p_active"]] = np.where(has, pred["p_active"], np.nan)
        out[:, col["cust_expected_purchases"]] = np.where(has, pred["expected_purchases"], np.nan)

    out[:, col["category_share"]] = _category_share(snapshot, cust, item, known_c)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[:, col["price_ratio"]] = snapshot.item_price[item] / np.where(
            known_c, snapshot.cust_mean_price[c_safe], np.nan
        )
    return out


def _buy_again(
    model: RepurchaseModel, cust: np.ndarray, item: np.ndarray, horizon: float, cutoff: float
) -> np.ndarray:
    """The repurchase model's probability for each pair (0 for pairs it does not
    score: items that are not repurchase items or bought once)."""
    if getattr(model, "indptr_", None) is None:
        raise NotFittedError("RepurchaseModel is not fitted; call fit() first")
    out = np.zeros(cust.size, dtype=np.float32)
    known = (cust >= 0) & (cust < model.n_customers_)
    if not known.any():
        return out
    # one row of probabilities per distinct customer, then a keyed lookup
    uniq, inverse = np.unique(cust[known], return_inverse=True)
    probs = model.score_customers(uniq, horizon, as_of_day=max(cutoff, model.as_of_day_))
    vals = pair_values(probs, inverse, item[known])
    out[known] = vals
    return out


def _category_share(
    snapshot: ShopSnapshot, cust: np.ndarray, item: np.ndarray, known_c: np.ndarray
) -> np.ndarray:
    """Share of each customer's purchases in the pair item's category (NaN: no
    categories; 0: a category they never bought)."""
    out = np.full(cust.size, np.nan, dtype=np.float32)
    if snapshot.n_categories == 0:
        return out
    cat = snapshot.item_category[item].astype(np.int64)
    ok = known_c & (cat >= 0)
    out[known_c] = 0.0
    c_ok = cust[ok]
    if c_ok.size == 0:
        return out
    # only the block's own customers: keys over every customer would cost a
    # pass over the whole table per block of a batch export
    uniq, inverse = np.unique(c_ok, return_inverse=True)
    vals = pair_values(snapshot.category_rows(uniq), inverse, cat[ok])
    out[ok] = vals
    return out


def pair_values(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows, cols]`` for many pairs as float32 (0 where nothing is stored)."""
    m = sp.csr_matrix(matrix)
    m.sort_indices()
    n_cols = m.shape[1]
    stored = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    keys = stored * n_cols + m.indices
    want = np.asarray(rows, dtype=np.int64) * n_cols + np.asarray(cols, dtype=np.int64)
    out = np.zeros(want.size, dtype=np.float32)
    if keys.size:
        pos = np.searchsorted(keys, want)
        pos_c = np.minimum(pos, keys.size - 1)
        hit = (pos < keys.size) & (keys[pos_c] == want)
        out[hit] = m.data[pos[hit]]
    return out
