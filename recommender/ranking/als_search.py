"""Exact top-k of one ALS query over a large catalogue without scoring every item.

Scoring every item for one request reads the whole item-factor matrix (25 MB
for 100,000 items x 64 factors). :class:`NormOrderedSearch` keeps the items in
order of decreasing factor norm and stops as soon as no remaining item can
reach the k-th best score found, since ``y_j . u <= |y_j| |u|``
(Cauchy-Schwarz). ALS gives popular items the large norms, so a few percent of
the catalogue is usually scored.
"""

from __future__ import annotations

import numpy as np

from recommender.ranking.als import ALSRecommender

#: Catalogues with at least this many items are worth searching this way; below
#: it scoring every item is cheap, and small catalogues keep exactly the scores
#: one matrix product gives.
PRUNE_MIN_ITEMS = 20_000


def select_top(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of candidate ``rows`` by score, best first, ties to the lower row.

    Parameters
    ----------
    rows
        Candidate item rows, each at most once.
    scores
        Their scores, aligned with ``rows``.
    k
        How many to keep (fewer come back when there are fewer candidates).

    Returns
    -------
    tuple of np.ndarray
        The chosen item rows and their scores.
    """
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        rows, scores = rows[keep], scores[keep]
    best = np.lexsort((rows, -scores))[:k]
    return rows[best], scores[best]


class NormOrderedSearch:
    """The item factors of an :class:`ALSRecommender`, ordered for pruned exact search.

    Parameters
    ----------
    model
        A fitted ALS model; its item factors are read once, here.
    first_block
        Items scored before the bound is first tried (at least ``4 k``).
    """

    def __init__(self, model: ALSRecommender, *, first_block: int = 1024) -> None:
        model._check_fitted("item_factors_")
        assert model.item_factors_ is not None
        y = model.item_factors_
        self.item_factors_ = y
        self.first_block = first_block
        norms = np.sqrt(np.einsum("ij,ij->i", y, y, dtype=np.float64))
        self.order_ = np.argsort(-norms, kind="stable")
        self.factors_by_norm_ = np.ascontiguousarray(y[self.order_])
        self.neg_norms_by_norm_ = -norms[self.order_]  # ascending, for searchsorted

    @property
    def n_items(self) -> int:
        return int(self.item_factors_.shape[0])

    def top_k(self, u: np.ndarray, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` allowed items of highest score ``y_j . u``, best first (exact).

        When few items are allowed (a category filter) only those are scored;
        otherwise items are scored in order of decreasing norm until the bound
        rules out the rest. The answer is the one scoring everything gives: the
        same items, ties to the lower item row, scores equal up to float32
        rounding of the dot products.

        Parameters
        ----------
        u
            The query (a customer's factors, or folded-in ones).
        allowed
            Boolean mask over items; only these may be returned.
        k
            Length of the list (shorter when fewer items are allowed).

        Returns
        -------
        tuple of np.ndarray
            Item rows and scores, best first.
        """
        u = np.ascontiguousarray(u, dtype=np.float32)
        n = self.n_items
        n_allowed = int(np.count_nonzero(allowed))
        if n_allowed * 8 <= n:
            rows = np.flatnonzero(allowed)
            return select_top(rows, np.take(self.item_factors_, rows, axis=0) @ u, k)
        order = self.order_
        return scan_by_norm(
            u,
            self.factors_by_norm_,
            self.neg_norms_by_norm_,
            order,
            allowed,
            n_allowed,
            k,
            first_block=self.first_block,
        )


def scan_by_norm(
    u: np.ndarray,
    factors: np.ndarray,
    neg_norms: np.ndarray,
    rows: np.ndarray,
    allowed: np.ndarray,
    n_allowed: int,
    k: int,
    *,
    first_block: int,
    in_order: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` of ``factors @ u`` over allowed items, scoring in order of
    decreasing norm until no remaining item can reach the k-th best score.

    Parameters
    ----------
    u
        The query, float32, contiguous.
    factors
        Item factors in order of decreasing norm (contiguous).
    neg_norms
        Their norms, negated (so ascending).
    rows
        Their item rows (what comes back).
    allowed
        Which items may be returned: a mask over item rows, or (``in_order``)
        a mask aligned with ``rows``.
    n_allowed
        How many are allowed in all (the scan stops once it has seen them).
    k
        Length of the list.
    first_block
        Items scored before the bound is first tried (at least ``4 k``).
    in_order
        ``allowed`` is aligned with ``rows`` (a block's own mask).

    Returns
    -------
    tuple of np.ndarray
        Item rows and scores, best first, ties to the lower item row.
    """
    n = len(rows)
    # |u| (float64) with a margin far above the float32 rounding of a 64-term
    # dot product (about 4e-6 relative), so the bound never cuts a real candidate.
    u_norm = float(np.sqrt(np.dot(u.astype(np.float64), u.astype(np.float64)))) * (1 + 1e-4)
    rows_parts: list[np.ndarray] = []
    score_parts: list[np.ndarray] = []
    have = 0
    start, stop = 0, min(n, max(first_block, 4 * k))
    while True:
        r = rows[start:stop]
        s = factors[start:stop] @ u
        ok = allowed[start:stop] if in_order else allowed[r]
        rows_parts.append(r[ok])
        score_parts.append(s[ok])
        have += len(rows_parts[-1])
        start = stop
        if start >= n or have == n_allowed:
            break
        if have < k:
            stop = min(n, 4 * start)
            continue
        scores = np.concatenate(score_parts)
        kth = float(np.partition(scores, len(scores) - k)[len(scores) - k])
        if kth <= 0.0 or u_norm == 0.0:
            stop = n  # a bound |y||u| >= 0 cannot rule out any item
            continue
        # items that can still reach the k-th best: |y_j| * |u| >= kth
        stop = int(np.searchsorted(neg_norms, -kth / u_norm, side="right"))
        if stop <= start:
            break
    return select_top(np.concatenate(rows_parts), np.concatenate(score_parts), k)


__all__ = ["PRUNE_MIN_ITEMS", "NormOrderedSearch", "scan_by_norm", "select_top"]
