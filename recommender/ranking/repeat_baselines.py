"""Repeat-purchase baselines that need purchase days: P-TopFreq and TIFU-KNN.

In grocery-like shops most of a household's next basket is items it has bought
before, and two simple models that know *when* items were bought are hard to
beat there:

* **P-TopFreq** (Li et al., "A Next Basket Recommendation Reality Check",
  ACM TOIS 2023): each customer's items by the number of baskets they appear in.
* **TIFU-KNN** (Hu, He, Gao and Zhang, "Modeling Personalized Item Frequency
  Information for Next-basket Recommendation", SIGIR 2020): a time-decayed
  personal item-frequency vector, blended with the mean vector of the most
  similar customers.

A plain customer x item count matrix has no time in it, so both models are
fitted on :class:`Baskets`: the distinct ``(customer, day, item)`` purchases of
an order log, where a customer's basket is everything they bought on one day.
Build them with :meth:`Baskets.from_lines` (row and day arrays) or
:meth:`Baskets.from_frame` (a checked transaction frame), then
``model.fit(user_items, baskets=baskets)`` or, in one step,
``model.fit_events(customer_rows, item_rows, days, n_customers, n_items)``.

Unlike :class:`~recommender.ranking.baselines.PersonalFrequencyRecommender`,
which reads the history passed to ``recommend``, these models keep what they
learned per customer row (as ALS keeps its customer factors): ``user_items``
passed to ``recommend`` must use the same customer rows and is only read for
``exclude_seen``. Customer rows without baskets (or outside the fitted range)
get the popularity list.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import numpy as np
import scipy.sparse as sp

from recommender.ranking.base import Recommender, top_k_sparse

if TYPE_CHECKING:
    import pandas as pd

    from recommender.data.ids import IdIndex


@dataclass(frozen=True)
class Baskets:
    """Distinct ``(customer, day, item)`` purchases, sorted by customer, day, item.

    A customer's basket is one shopping day: several order lines of the same
    item on one day count once.

    Attributes
    ----------
    customer_rows, days, item_rows
        int64 arrays of equal length; ``days`` are whole day numbers (any
        origin; only differences and order matter).
    n_customers, n_items
        Shape of the customer x item space the rows index.
    """

    customer_rows: np.ndarray
    days: np.ndarray
    item_rows: np.ndarray
    n_customers: int
    n_items: int

    @classmethod
    def from_lines(
        cls,
        customer_rows: np.ndarray,
        item_rows: np.ndarray,
        days: np.ndarray,
        n_customers: int,
        n_items: int,
    ) -> Baskets:
        """Baskets of order lines given as customer rows, item rows and days.

        Parameters
        ----------
        customer_rows, item_rows
            Row of each line's customer and item; lines with a negative row
            (an id not in the index, as :meth:`IdIndex.rows` gives) are ignored.
        days
            Day of each line: day numbers, or float days whose whole part is
            the day (``2.75`` is day 2).
        n_customers, n_items
            Numbers of customer and item rows.

        Raises
        ------
        ValueError
            If the arrays differ in length, a row is out of range or a day is
            not finite.
        """
        c = np.asarray(customer_rows, dtype=np.int64).ravel()
        i = np.asarray(item_rows, dtype=np.int64).ravel()
        d_raw = np.asarray(days).ravel()
        if not (c.size == i.size == d_raw.size):
            raise ValueError("customer_rows, item_rows and days must have the same length")
        if np.issubdtype(d_raw.dtype, np.floating):
            if not np.isfinite(d_raw).all():
                raise ValueError("days must be finite")
            d = np.floor(d_raw).astype(np.int64)
        else:
            d = d_raw.astype(np.int64)
        keep = (c >= 0) & (i >= 0)
        c, i, d = c[keep], i[keep], d[keep]
        if c.size and (c.max() >= n_customers or i.max() >= n_items):
            raise ValueError("a customer or item row is out of range")
        c, d, i = _sort_rows(c, d, i)
        new = np.ones(c.size, dtype=bool)
        new[1:] = (c[1:] != c[:-1]) | (d[1:] != d[:-1]) | (i[1:] != i[:-1])
        return cls(c[new], d[new], i[new], int(n_customers), int(n_items))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, customers: IdIndex, items: IdIndex) -> Baskets:
        """Baskets of a checked transaction frame (``customer_id``, ``item_id``,
        ``timestamp``); a day is a calendar day of the (naive UTC) timestamps.

        Uses the ``crow``/``irow`` columns when present (see
        :func:`~recommender.data.interactions.annotate_rows`); ids not in the
        indexes are ignored.
        """
        if "crow" in frame.columns and "irow" in frame.columns:
            c = frame["crow"].to_numpy()
            i = frame["irow"].to_numpy()
        else:
            c = customers.rows(frame["customer_id"].to_numpy())
            i = items.rows(frame["item_id"].to_numpy())
        days = frame["timestamp"].to_numpy(dtype="datetime64[D]").astype(np.int64)
        return cls.from_lines(c, i, days, len(customers), len(items))

    def __len__(self) -> int:
        return int(self.customer_rows.size)

    def basket_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Each purchase's basket position and each customer's basket count.

        Returns ``(position, n_baskets)``: ``position[j]`` is the 0-based place
        of purchase ``j``'s day among its customer's shopping days, oldest
        first; ``n_baskets[c]`` is customer ``c``'s number of shopping days.
        """
        c, d = self.customer_rows, self.days
        new_basket = np.ones(c.size, dtype=bool)
        new_basket[1:] = (c[1:] != c[:-1]) | (d[1:] != d[:-1])
        basket = np.cumsum(new_basket) - 1
        n_baskets = np.bincount(c[new_basket], minlength=self.n_customers)
        first = np.cumsum(n_baskets) - n_baskets
        return basket - first[c], n_baskets

    def buyers(self) -> np.ndarray:
        """Distinct customers who bought each item (float64, length ``n_items``)."""
        # a CSR matrix sums the duplicate pairs in C (np.unique hashes or sorts
        # millions of keys several times slower)
        pairs = sp.csr_matrix(
            (np.ones(len(self), dtype=np.float32), (self.customer_rows, self.item_rows)),
            shape=(self.n_customers, self.n_items),
        )
        pairs.sum_duplicates()
        return np.bincount(pairs.indices, minlength=self.n_items).astype(np.float64)


def _sort_rows(*cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """Columns of non-negative integers, rows sorted by the first, then the second, ...

    The rows are packed into one int64 key when they fit (one ``np.sort`` of
    5 million keys takes about a third of the time of a three-key ``lexsort``).
    """
    lows = [int(col.min(initial=0)) for col in cols]
    spans = [int(col.max(initial=0)) - low + 1 for col, low in zip(cols, lows, strict=True)]
    if int(np.prod([float(x) for x in spans])) >= 2**62:
        order = np.lexsort(cols[::-1])
        return tuple(col[order] for col in cols)
    key = np.zeros(cols[0].size, dtype=np.int64)
    for col, low, span in zip(cols, lows, spans, strict=True):
        key = key * span + (col - low)
    key.sort()
    out: list[np.ndarray] = []
    for low, span in zip(lows[::-1], spans[::-1], strict=True):
        key, digit = np.divmod(key, span)
        out.append(digit + low)
    return tuple(out[::-1])


class _BasketRecommender(Recommender):
    """Shared plumbing: fitting on baskets, per-customer sparse scores, and a
    popularity fill below every personal score."""

    popularity_: np.ndarray
    """Distinct buyers per item over the most (float32, in [0, 1])."""
    _fill: np.ndarray
    _fill_order: np.ndarray

    def fit(
        self, user_items: sp.csr_matrix | None = None, *, baskets: Baskets | None = None
    ) -> Self:
        """Learn from ``baskets``; ``user_items`` (optional) only checks the shape.

        Parameters
        ----------
        user_items
            The customer x item history used for ranking, if at hand; it must
            have ``(baskets.n_customers, baskets.n_items)`` as shape.
        baskets
            The purchases with their days (:class:`Baskets`). Required: a
            count matrix alone says nothing about days.

        Raises
        ------
        ValueError
            Without ``baskets``, or when the shapes disagree.
        """
        if baskets is None:
            raise ValueError(
                f"{type(self).__name__} needs purchase days: call "
                "fit(user_items, baskets=Baskets.from_lines(...)) or fit_events(...)"
            )
        shape = (baskets.n_customers, baskets.n_items)
        if user_items is not None and tuple(user_items.shape) != shape:
            raise ValueError(f"user_items has shape {user_items.shape}, baskets index {shape}")
        buyers = baskets.buyers()
        popularity = (buyers / max(float(buyers.max(initial=0.0)), 1.0)).astype(np.float32)
        self._fit_baskets(baskets)
        self._fill = self._fill_from_popularity(popularity)
        self._fill_order = np.argsort(-self._fill, kind="stable")
        self.popularity_ = popularity
        return self

    def fit_events(
        self,
        customer_rows: np.ndarray,
        item_rows: np.ndarray,
        days: np.ndarray,
        n_customers: int,
        n_items: int,
    ) -> Self:
        """:meth:`fit` on order lines: see :meth:`Baskets.from_lines` for the arguments."""
        return self.fit(
            baskets=Baskets.from_lines(customer_rows, item_rows, days, n_customers, n_items)
        )

    def _fit_baskets(self, baskets: Baskets) -> None:
        raise NotImplementedError

    def _fill_from_popularity(self, popularity: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _entries(self, rows: np.ndarray) -> sp.csr_matrix:
        """Personal scores of ``rows`` (rows x items, float32, no stored zeros)."""
        raise NotImplementedError

    @property
    def n_items(self) -> int:
        self._check_fitted("popularity_")
        return int(self.popularity_.shape[0])

    @staticmethod
    def _rows_of(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
        """``matrix[rows]``, with an empty row for each row outside ``matrix``
        (a customer the model was not fitted on)."""
        rows = np.asarray(rows, dtype=np.int64)
        known = (rows >= 0) & (rows < matrix.shape[0])
        if known.all():
            return sp.csr_matrix(matrix[rows])
        picked = sp.csr_matrix(matrix[rows[known]])
        counts = np.zeros(rows.size, dtype=np.int64)
        counts[known] = np.diff(picked.indptr)
        indptr = np.concatenate([[0], np.cumsum(counts)])
        return sp.csr_matrix(
            (picked.data, picked.indices, indptr), shape=(rows.size, matrix.shape[1])
        )

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        """Dense scores: personal scores where the customer has one, the
        popularity fill (below every personal score) elsewhere."""
        self._check_fitted("popularity_")
        entries = self._entries(np.asarray(user_rows, dtype=np.int64))
        dense = np.tile(self._fill, (entries.shape[0], 1))
        r, c = entries.nonzero()
        dense[r, c] = np.asarray(entries[r, c]).ravel()
        return dense

    def _rank_block(
        self,
        rows: np.ndarray,
        user_items: sp.csr_matrix,
        k: int,
        exclude_seen: bool,
        scratch: threading.local,
    ) -> tuple[np.ndarray, np.ndarray]:
        # the rows of score() without the dense matrix
        self._check_fitted("popularity_")
        return top_k_sparse(
            self._entries(rows),
            self._fill,
            k,
            exclude=user_items[rows] if exclude_seen else None,
            fill_order=self._fill_order,
        )


class PTopFreqRecommender(_BasketRecommender):
    """Each customer's items by the number of distinct days they bought them.

    P-TopFreq of Li, Jullien, Ariannezhad and de Rijke, "A Next Basket
    Recommendation Reality Check" (ACM TOIS 2023): an item's score is the
    number of the customer's baskets (shopping days) that hold it, so several
    lines of one item on one day count once. Ties go to the item bought more
    recently; items the customer never bought follow, by popularity (distinct
    buyers), then by lower item row.

    Scores are ``days + (p + 1) / (n + 1)`` for an item last bought in the
    customer's ``p``-th basket (0 = oldest) of ``n``: above 1, and, in float32,
    exact ties only for customers with more than about 2,900 shopping days.
    The popularity fill lies in ``[0, 1]``.

    Notes
    -----
    Fitting is a few sorts of the purchases (no loop over customers); the
    fitted state is one sparse row per customer.
    """

    name = "p_topfreq"

    scores_: sp.csr_matrix
    """Customers x items: the score of each item a customer bought."""

    def _fit_baskets(self, baskets: Baskets) -> None:
        position, n_baskets = baskets.basket_positions()
        c, i = baskets.customer_rows, baskets.item_rows
        # group the purchases by (customer, item), oldest day first
        c, i, position = _sort_rows(c, i, position)
        last = np.ones(c.size, dtype=bool)
        last[:-1] = (c[1:] != c[:-1]) | (i[1:] != i[:-1])
        ends = np.flatnonzero(last)
        n_days = np.diff(ends, prepend=-1)
        c, i = c[ends], i[ends]
        recency = (position[ends] + 1.0) / (n_baskets[c] + 1.0)
        values = (n_days + recency).astype(np.float32)
        # (customer, item) pairs come sorted: build CSR directly
        indptr = np.concatenate([[0], np.cumsum(np.bincount(c, minlength=baskets.n_customers))])
        self.scores_ = sp.csr_matrix(
            (values, i.astype(np.int32), indptr), shape=(baskets.n_customers, baskets.n_items)
        )

    def _fill_from_popularity(self, popularity: np.ndarray) -> np.ndarray:
        return popularity

    def _entries(self, rows: np.ndarray) -> sp.csr_matrix:
        self._check_fitted("scores_")
        return self._rows_of(self.scores_, rows)


class TIFUKNNRecommender(_BasketRecommender):
    """Temporal item frequency with user-kNN (TIFU-KNN, Hu et al., SIGIR 2020).

    Each basket (a customer's shopping day) is a multi-hot item vector. A
    customer's baskets, newest first, are cut into groups of ``group_size``
    (the oldest group may be partial). Inside a group a basket is weighted
    ``within_decay ** j`` (``j`` baskets before the group's newest) and the
    group's vector is the mean of its weighted baskets; group ``g`` (0 = the
    newest) is weighted ``group_decay ** g`` and the personal vector ``u`` is
    the mean of the weighted group vectors (equations 1-3 of the paper).

    The ``n_neighbors`` customers whose ``u`` is most similar by **cosine**
    (the authors' code uses euclidean distance; cosine needs only the sparse
    products of co-buyers, never a dense customers x customers matrix, and a
    euclidean neighbourhood is dominated by customers with short vectors) give
    the neighbour vector, the mean of their ``u``; a customer is not their own
    neighbour, and only customers with a common item count. The prediction is
    ``alpha * u + (1 - alpha) * neighbours``; items scored 0 follow by
    popularity (the fill is ``popularity - 2``, below every positive score).

    Parameters
    ----------
    group_size
        Baskets per group (the paper's ``m``).
    within_decay
        Decay between consecutive baskets of a group (``r_b``).
    group_decay
        Decay between consecutive groups (``r_g``).
    n_neighbors
        Nearest customers averaged (``k``).
    alpha
        Weight of the personal vector; 1 ranks by ``u`` alone.
    num_threads
        Threads of the neighbour search (``implicit``'s); 0 means all cores.
    neighbours_for
        Customer rows whose neighbours are searched (default: every
        customer). Judging a model on a sample of customers needs theirs
        only: an all-pairs search over half a million customers takes many
        minutes. Other customers are ranked by their own vector alone.

    Notes
    -----
    The defaults are the published settings used for grocery data
    (Dunnhumby/Instacart) by the authors' code and by Cornac's TIFUKNN:
    7, 0.9, 0.7, 300 neighbours, alpha 0.7. The neighbour search is
    ``implicit.nearest_neighbours.all_pairs_knn`` (C++, memory bounded by
    ``n_neighbors + 1`` per customer); its cost grows with the co-buyers of
    each customer's items, so on a large grocery log it dominates the fit.
    Neighbours tied exactly at the last place are kept in ``implicit``'s
    (deterministic) order.
    """

    name = "tifu_knn"

    user_vectors_: sp.csr_matrix
    """Customers x items: the personal vectors ``u``."""
    neighbours_: sp.csr_matrix
    """Customers x customers: ``1 / (number of neighbours)`` at each neighbour."""

    def __init__(
        self,
        group_size: int = 7,
        within_decay: float = 0.9,
        group_decay: float = 0.7,
        n_neighbors: int = 300,
        alpha: float = 0.7,
        num_threads: int = 0,
        neighbours_for: np.ndarray | None = None,
    ) -> None:
        self.neighbours_for = neighbours_for
        self.group_size = group_size
        self.within_decay = within_decay
        self.group_decay = group_decay
        self.n_neighbors = n_neighbors
        self.alpha = alpha
        self.num_threads = num_threads

    def _check_params(self) -> None:
        if self.group_size < 1 or self.n_neighbors < 0:
            raise ValueError("group_size must be at least 1 and n_neighbors not negative")
        for name in ("within_decay", "group_decay", "alpha"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")

    def _fit_baskets(self, baskets: Baskets) -> None:
        self._check_params()
        self.user_vectors_ = self._personal_vectors(baskets)
        self.neighbours_ = self._neighbours(self.user_vectors_)

    def _personal_vectors(self, baskets: Baskets) -> sp.csr_matrix:
        m = int(self.group_size)
        position, n_baskets = baskets.basket_positions()
        c = baskets.customer_rows
        n = n_baskets[c]
        back = n - 1 - position  # 0 = the customer's newest basket
        group, within = np.divmod(back, m)
        in_group = np.minimum(m, n - group * m)  # the oldest group may be partial
        n_groups = -(-n // m)
        weight = (
            np.power(float(self.within_decay), within)
            / in_group
            * np.power(float(self.group_decay), group)
            / n_groups
        )
        u = sp.csr_matrix(
            (weight, (c, baskets.item_rows)),
            shape=(baskets.n_customers, baskets.n_items),
            dtype=np.float64,
        )
        u.sum_duplicates()
        u.eliminate_zeros()  # a decay of 0 leaves baskets out
        return sp.csr_matrix(u, dtype=np.float32)

    def _neighbours(self, u: sp.csr_matrix) -> sp.csr_matrix:
        n_customers = u.shape[0]
        empty = sp.csr_matrix((n_customers, n_customers), dtype=np.float32)
        if self.n_neighbors == 0 or self.alpha >= 1.0 or u.nnz == 0:
            return empty
        from implicit.nearest_neighbours import all_pairs_knn

        x = sp.csr_matrix(u, dtype=np.float64)
        norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
        unit = sp.csr_matrix(sp.diags(inv) @ x)
        if self.neighbours_for is not None:
            # only these customers' rows, a small block at a time (a popular
            # item makes a block's products wide), each cut to its best
            who = np.unique(np.asarray(self.neighbours_for, dtype=np.int64))
            rows_, cols_, vals_ = [], [], []
            keep_n = int(self.n_neighbors) + 1
            for start in range(0, who.size, 128):
                block = who[start : start + 128]
                sims = sp.csr_matrix(unit[block] @ unit.T).tocoo()
                order = np.lexsort((sims.col, -sims.data, sims.row))
                r, c, v = sims.row[order], sims.col[order], sims.data[order]
                counts = np.bincount(r, minlength=block.size)
                rank = np.arange(r.size) - np.repeat(np.cumsum(counts) - counts, counts)
                top = rank < keep_n
                rows_.append(block[r[top]])
                cols_.append(c[top])
                vals_.append(v[top])
            knn = sp.coo_matrix(
                (
                    np.concatenate(vals_) if vals_ else np.zeros(0),
                    (
                        np.concatenate(rows_) if rows_ else np.zeros(0, np.int64),
                        np.concatenate(cols_) if cols_ else np.zeros(0, np.int64),
                    ),
                ),
                shape=(n_customers, n_customers),
            )
        else:
            # all_pairs_knn ranks the columns of its argument by their dot
            # products: columns are customers here; one more for the customer itself
            knn = all_pairs_knn(
                unit.T.tocsr(),
                int(self.n_neighbors) + 1,
                show_progress=False,
                num_threads=self.num_threads,
            ).tocoo()
        keep = (knn.row != knn.col) & (knn.data > 0)
        rows, cols, sims = knn.row[keep], knn.col[keep], knn.data[keep]
        # at most n_neighbors per customer, best first, ties to the lower row
        order = np.lexsort((cols, -sims, rows))
        rows, cols = rows[order], cols[order]
        counts = np.bincount(rows, minlength=n_customers)
        rank = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
        take = rank < self.n_neighbors
        rows, cols = rows[take], cols[take]
        found = np.bincount(rows, minlength=n_customers)
        weights = (1.0 / found[rows]).astype(np.float32)
        return sp.csr_matrix((weights, (rows, cols)), shape=(n_customers, n_customers))

    def _fill_from_popularity(self, popularity: np.ndarray) -> np.ndarray:
        return (popularity - np.float32(2.0)).astype(np.float32)

    def _entries(self, rows: np.ndarray) -> sp.csr_matrix:
        self._check_fitted("user_vectors_", "neighbours_")
        own = self._rows_of(self.user_vectors_, rows)
        if self.alpha < 1.0 and self.neighbours_.nnz:
            near = self._rows_of(self.neighbours_, rows) @ self.user_vectors_
            scores = sp.csr_matrix(
                own * np.float32(self.alpha) + near * np.float32(1.0 - self.alpha),
                dtype=np.float32,
            )
        else:
            scores = sp.csr_matrix(own, dtype=np.float32)
        scores.sum_duplicates()
        scores.eliminate_zeros()
        return scores
