"""Who buys an item, and who is likely to buy it next.

Two questions of an item page, answered from what a version holds:

* **its buyers**: the customers who bought it, most purchase lines first
  (the purchase history the models were trained on);
* **its likely next buyers**: the customers who bought it and are due to buy
  it again (the buy-again model's probability of a rebuy within the window,
  for repurchase items), and the customers who never bought it but whom the
  ALS model scores highest for it (how strongly it ties them to the item).

Every list is a page: the work is one column of the history, one pass over
the item's buy-again pairs, or one matrix-vector product over the customer
factors, never a customers x items matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recommender.store.bundle import Bundle

#: The most customers one page returns.
MAX_PAGE = 200


@dataclass(frozen=True)
class Ranked:
    """A page of customers with a figure each.

    Attributes
    ----------
    total
        Customers in the whole list.
    rows
        This page's customer rows, best first.
    figures
        Their figure (purchase lines, probability or score), aligned with rows.
    """

    total: int
    rows: np.ndarray
    figures: np.ndarray


def _page(rows: np.ndarray, figures: np.ndarray, offset: int, limit: int) -> Ranked:
    """The ``offset:offset + limit`` slice of ``rows`` by decreasing figure
    (ties to the lower row)."""
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"offset must be >= 0 and limit between 1 and {MAX_PAGE}")
    n = rows.size
    end = min(n, offset + limit)
    if offset >= n:
        return Ranked(n, rows[:0], figures[:0])
    # order by (-figure, row); a partial sort when the page is near the top of a long list
    if end < n // 4:
        cut = np.argpartition(-figures, end - 1)[:end]
        kth = figures[cut].min()
        cand = np.flatnonzero(figures >= kth)  # ties at the cut are all candidates
    else:
        cand = np.arange(n)
    order = cand[np.lexsort((rows[cand], -figures[cand]))][offset:end]
    return Ranked(n, rows[order], figures[order])


class ItemAudience:
    """Buyers and likely next buyers of a version's items.

    Parameters
    ----------
    bundle
        A loaded version; it is read, never changed.
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._by_item: sp.csc_matrix | None = None

    def _columns(self) -> sp.csc_matrix:
        if self._by_item is None:
            self._by_item = sp.csc_matrix(self.bundle.history)
        return self._by_item

    def buyers(self, item_row: int, *, offset: int = 0, limit: int = 20) -> Ranked:
        """Customers who bought the item, most purchase lines first."""
        h = self._columns()
        lo, hi = h.indptr[item_row], h.indptr[item_row + 1]
        return _page(h.indices[lo:hi].astype(np.int64), h.data[lo:hi], offset, limit)

    def due_rebuyers(
        self, item_row: int, within_days: float, *, offset: int = 0, limit: int = 20
    ) -> Ranked:
        """Past buyers by their probability of rebuying it within ``within_days``.

        Empty for a version without a buy-again model, and for items it does
        not treat as repurchase items.
        """
        rep = self.bundle.repurchase
        if rep is None or not bool(rep.is_repurchase_item_[item_row]):
            return _page(np.zeros(0, np.int64), np.zeros(0), offset, limit)
        rows = np.unique(rep.pair_customer_[rep.pair_item_ == item_row])
        p = rep.score_customers(rows, within_days)[:, item_row].toarray().ravel()
        return _page(rows, p, offset, limit)

    def new_buyers(self, item_row: int, *, offset: int = 0, limit: int = 20) -> Ranked:
        """Customers who never bought it, by the ALS score of customer and item.

        Empty for a version without a ranking model.
        """
        als = self.bundle.als
        if als is None or als.user_factors_ is None or als.item_factors_ is None:
            return _page(np.zeros(0, np.int64), np.zeros(0), offset, limit)
        scores = als.user_factors_ @ als.item_factors_[item_row]
        bought = self._columns().indices[
            self._columns().indptr[item_row] : self._columns().indptr[item_row + 1]
        ]
        keep = np.ones(scores.size, dtype=bool)
        keep[bought] = False
        rows = np.flatnonzero(keep)
        return _page(rows, scores[rows].astype(np.float64), offset, limit)


__all__ = ["MAX_PAGE", "ItemAudience", "Ranked"]
