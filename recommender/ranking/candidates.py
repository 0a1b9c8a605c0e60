"""First stage: a few hundred candidate items per customer, from several sources.

The second stage (:mod:`recommender.ranking.ltr`) can only reorder what this
stage offers, so the sources cover both halves of a repeat-purchase shop:

* ``HISTORY``: the customer's own items, the most recent-and-frequent first
  (TIFU-KNN's decayed personal vector from the snapshot);
* ``ALS``: ALS top-N among items the customer has not bought (explore);
* ``KNN``: item-kNN neighbours of the customer's decayed history, not bought;
* ``CATEGORY``: the most popular recent items of the customer's top categories;
* ``POPULAR``: the most popular recent items overall.

Every source works on a block of customers at once (sparse products and
:func:`~recommender.ranking.base.top_k_sparse`, no loop per customer). A block
of one customer, the serving call, takes a numpy-only path with the same
lists (kNN scores may differ in the last bits: they are summed in another
order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recommender.ranking.als import ALSRecommender
from recommender.ranking.als_search import NormOrderedSearch
from recommender.ranking.base import top_k, top_k_sparse
from recommender.ranking.baselines import ItemKNNRecommender
from recommender.ranking.features import ShopSnapshot, pair_values

__all__ = [
    "ALS",
    "CATEGORY",
    "HISTORY",
    "KNN",
    "POPULAR",
    "CandidateConfig",
    "Candidates",
    "generate_candidates",
    "pair_values",
]

HISTORY, ALS, KNN, CATEGORY, POPULAR = 1, 2, 4, 8, 16
SOURCES = {"history": HISTORY, "als": ALS, "knn": KNN, "category": CATEGORY, "popular": POPULAR}


@dataclass(frozen=True)
class CandidateConfig:
    """How many candidates each source gives a customer."""

    n_history: int = 150
    """The customer's own items, by decayed frequency (the most a list draws from)."""
    n_als: int = 50
    """ALS top-N among items not bought."""
    n_knn: int = 50
    """Item-kNN top-N among items not bought."""
    n_categories: int = 3
    """The customer's top categories that give popular items."""
    n_per_category: int = 10
    """Popular items from each of those categories."""
    n_popular: int = 30
    """Popular items overall (the whole list for a customer with no history)."""


@dataclass
class Candidates:
    """Candidate pairs of a block of customers.

    Attributes
    ----------
    rows
        Customer rows, one per matrix row.
    matrix
        ``len(rows) x n_items`` CSR, sorted indices; data = bit flags of the
        sources that offered the item (:data:`HISTORY` | :data:`ALS` | ...).
    als_score, knn_score
        Aligned with ``matrix.data``: the ALS dot product and the item-kNN
        score of each pair (0 where no neighbour reaches the item).
    """

    rows: np.ndarray
    matrix: sp.csr_matrix
    als_score: np.ndarray
    knn_score: np.ndarray

    def __len__(self) -> int:
        return int(self.matrix.nnz)

    def pair_customers(self) -> np.ndarray:
        """Customer row of each pair (matrix order)."""
        return np.repeat(self.rows, np.diff(self.matrix.indptr))

    def group_sizes(self) -> np.ndarray:
        """Pairs per customer (LightGBM's query groups)."""
        return np.diff(self.matrix.indptr)

    def take(self, keep: np.ndarray) -> Candidates:
        """The candidates of the customers where the mask ``keep`` is true."""
        pairs = np.repeat(keep, self.group_sizes())
        return Candidates(
            rows=self.rows[keep],
            matrix=sp.csr_matrix(self.matrix[keep]),
            als_score=self.als_score[pairs],
            knn_score=self.knn_score[pairs],
        )


def _pairs_from_lists(items: np.ndarray, flag: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(local row, item, flag) of every valid entry of ``-1``-padded lists."""
    r, j = np.nonzero(items >= 0)
    return r, items[r, j].astype(np.int64), np.full(r.size, flag, dtype=np.int16)


def generate_candidates(
    rows: np.ndarray,
    snapshot: ShopSnapshot,
    *,
    als: ALSRecommender | None = None,
    knn: ItemKNNRecommender | None = None,
    config: CandidateConfig | None = None,
    search: NormOrderedSearch | None = None,
) -> Candidates:
    """Candidates for the customer ``rows`` as of the snapshot's cutoff.

    Parameters
    ----------
    rows
        Customer rows (of the snapshot's index); the caller picks the block
        size (a few thousand keeps the dense ALS block near 100 MB for 10,000
        items).
    snapshot
        Histories and popularity as of the cutoff.
    als, knn
        Models fitted on the same lines (optional: without one, its source is
        empty and its score 0).
    config
        Counts per source.
    search
        The pruned exact search over ``als``'s item factors: one customer's
        ALS candidates are then found without scoring the whole catalogue
        (the same items, but for ties that float32 rounding decides).
    """
    cfg = config or CandidateConfig()
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 1:
        return _one_customer(int(rows[0]), snapshot, als, knn, cfg, search)
    n = rows.size
    n_items = snapshot.n_items
    known = (rows >= 0) & (rows < snapshot.n_customers)
    safe = np.where(known, rows, 0)
    hist_rows = snapshot.history_rows(rows, "pair_days")
    dec_rows = snapshot.history_rows(rows, "pair_decayed")
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    none = np.full(n_items, -np.inf, dtype=np.float32)

    if cfg.n_history > 0 and dec_rows.nnz:
        own, _ = top_k_sparse(dec_rows, none, cfg.n_history)
        parts.append(_pairs_from_lists(own, HISTORY))

    if als is not None and cfg.n_als > 0:
        assert als.user_factors_ is not None
        fitted = known & (safe < als.user_factors_.shape[0])
        picked = _als_explore(als, np.where(fitted, safe, 0), hist_rows, cfg.n_als)
        picked[~fitted] = -1
        parts.append(_pairs_from_lists(picked, ALS))

    knn_scores: sp.csr_matrix | None = None
    if knn is not None:
        # the transposed similarity kept as CSR: a CSC operand would be
        # converted on every block
        knn_scores = sp.csr_matrix(dec_rows @ _similarity_t(knn), dtype=np.float32)
        knn_scores.sum_duplicates()
        if cfg.n_knn > 0 and knn_scores.nnz:
            picked, _ = top_k_sparse(knn_scores, none, cfg.n_knn, exclude=hist_rows)
            parts.append(_pairs_from_lists(picked, KNN))

    if cfg.n_categories > 0 and cfg.n_per_category > 0 and snapshot.n_categories > 0:
        parts.append(_category_candidates(snapshot, safe, known, cfg))
    if cfg.n_popular > 0:
        items = np.tile(_popular(snapshot, cfg.n_popular), (n, 1))
        parts.append(_pairs_from_lists(items, POPULAR))

    if parts:
        r = np.concatenate([p[0] for p in parts])
        i = np.concatenate([p[1] for p in parts])
        f = np.concatenate([p[2] for p in parts])
    else:
        r = i = np.zeros(0, dtype=np.int64)
        f = np.zeros(0, dtype=np.int16)
    # each source offers a pair at most once, so summing the flags is their OR
    matrix = sp.csr_matrix((f, (r, i)), shape=(n, n_items), dtype=np.int16)
    matrix.sum_duplicates()

    local = np.repeat(np.arange(n, dtype=np.int64), np.diff(matrix.indptr))
    item = matrix.indices.astype(np.int64)
    als_score = np.zeros(item.size, dtype=np.float32)
    if als is not None:
        assert als.user_factors_ is not None
        fitted = known & (safe < als.user_factors_.shape[0])
        als_score = _als_pair_scores(als, np.where(fitted, safe, 0)[local], item)
        als_score[~fitted[local]] = 0.0
    knn_score = np.zeros(item.size, dtype=np.float32)
    if knn_scores is not None and knn_scores.nnz:
        knn_score = pair_values(knn_scores, local, item)
    return Candidates(rows=rows, matrix=matrix, als_score=als_score, knn_score=knn_score)


def _als_explore(
    als: ALSRecommender, rows: np.ndarray, history: sp.csr_matrix, k: int
) -> np.ndarray:
    """ALS top-``k`` items of each row, leaving out its history (``-1`` padded)."""
    n_items = als.n_items
    k = min(k, n_items)
    out = np.full((rows.size, k), -1, dtype=np.int32)
    step = int(np.clip(16_000_000 // max(n_items, 1), 16, 4096))
    for start in range(0, rows.size, step):
        block = rows[start : start + step]
        scores = als.score(block)
        sub = history[start : start + step]
        r, c = sub.nonzero()
        scores[r, c] = -np.inf
        out[start : start + step], _ = top_k(scores, k)
    return out


def _als_pair_scores(als: ALSRecommender, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Row-wise dot products of user and item factors, in chunks (no pairs x
    factors temporary for millions of pairs)."""
    assert als.user_factors_ is not None and als.item_factors_ is not None
    out = np.empty(users.size, dtype=np.float32)
    step = 262_144
    for start in range(0, users.size, step):
        u = als.user_factors_[users[start : start + step]]
        v = als.item_factors_[items[start : start + step]]
        out[start : start + step] = np.einsum("ij,ij->i", u, v)
    return out


def _category_table(snapshot: ShopSnapshot, per: int) -> np.ndarray:
    """``(categories, per)``: each category's most popular recent items, ``-1``
    padded; kept with the snapshot (it depends on nothing else)."""
    cache = snapshot.__dict__.setdefault("_category_tables", {})
    if per in cache:
        return np.asarray(cache[per])
    n_cat = snapshot.n_categories
    cats = snapshot.item_category.astype(np.int64)
    popularity = snapshot.item_popularity()
    order = np.lexsort((np.arange(cats.size), -popularity, cats))
    order = order[cats[order] >= 0]
    sorted_cat = cats[order]
    counts = np.bincount(sorted_cat, minlength=n_cat)
    rank = np.arange(order.size) - np.repeat(np.cumsum(counts) - counts, counts)
    table = np.full((n_cat, per), -1, dtype=np.int64)
    take = rank < per
    table[sorted_cat[take], rank[take]] = order[take]
    cache[per] = table
    return table


def _popular(snapshot: ShopSnapshot, n: int) -> np.ndarray:
    """The ``n`` most popular recent items (ties to the lower row), cached."""
    cache = snapshot.__dict__.setdefault("_popular", {})
    if n not in cache:
        top, _ = top_k(snapshot.item_popularity().astype(np.float32)[None, :], n)
        cache[n] = top[0]
    return np.asarray(cache[n])


def _similarity_t(knn: ItemKNNRecommender) -> sp.csr_matrix:
    """The transposed similarity as CSR (row ``j``: the items ``j`` is a
    neighbour of), built once per fitted model."""
    assert knn.similarity_ is not None
    cached = knn.__dict__.get("_candidates_similarity_t")
    if cached is None or cached[0] is not knn.similarity_:
        cached = (knn.similarity_, sp.csr_matrix(knn.similarity_.T))
        knn.__dict__["_candidates_similarity_t"] = cached
    return cached[1]


def _category_candidates(
    snapshot: ShopSnapshot,
    rows: np.ndarray,
    known: np.ndarray,
    cfg: CandidateConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Popular items of each customer's top categories."""
    per = cfg.n_per_category
    table = _category_table(snapshot, per)
    mix = snapshot.category_rows(np.where(known, rows, -1))
    top_cats, _ = top_k_sparse(
        mix, np.full(mix.shape[1], -np.inf, dtype=np.float32), cfg.n_categories
    )
    r, j = np.nonzero(top_cats >= 0)
    items = table[top_cats[r, j]]  # (entries, per)
    rr = np.repeat(r, per)
    ii = items.ravel()
    ok = ii >= 0
    return rr[ok], ii[ok], np.full(int(ok.sum()), CATEGORY, dtype=np.int16)


def _best(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest finite ``values``, best first, ties to the
    lower position (the order of :func:`top_k`)."""
    if values.size > 4 * k and values.size > 1024:
        # a partition finds the k-th value; only entries reaching it are sorted
        # (two passes over a catalog-long row instead of a sort)
        kth = np.partition(values, values.size - k)[values.size - k]
        pos = np.flatnonzero(values >= kth)
        pos = pos[np.isfinite(values[pos])]
    else:
        pos = np.flatnonzero(np.isfinite(values))
    order = np.lexsort((pos, -values[pos]))
    return pos[order[:k]]


def _isin_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_keys)`` for sorted ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(values.size, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.size - 1)
    return np.asarray(sorted_keys[pos] == values)


def _one_customer(
    row: int,
    snapshot: ShopSnapshot,
    als: ALSRecommender | None,
    knn: ItemKNNRecommender | None,
    cfg: CandidateConfig,
    search: NormOrderedSearch | None = None,
) -> Candidates:
    """:func:`generate_candidates` of one customer with numpy alone: the serving
    call, where building a handful of sparse matrices would cost more than
    the whole answer may."""
    n_items = snapshot.n_items
    known = 0 <= row < snapshot.n_customers
    if known:
        lo, hi = int(snapshot.indptr[row]), int(snapshot.indptr[row + 1])
        own = snapshot.indices[lo:hi].astype(np.int64)
        decayed = snapshot.pair_decayed[lo:hi]
    else:
        own = np.zeros(0, dtype=np.int64)
        decayed = np.zeros(0, dtype=np.float32)
    items: list[np.ndarray] = []
    flags: list[np.ndarray] = []

    def offer(picked: np.ndarray, flag: int) -> None:
        items.append(np.asarray(picked, dtype=np.int64))
        flags.append(np.full(len(picked), flag, dtype=np.int16))

    if cfg.n_history > 0 and own.size:
        offer(own[_best(decayed, cfg.n_history)], HISTORY)
    als_user: np.ndarray | None = None
    if als is not None:
        assert als.user_factors_ is not None and als.item_factors_ is not None
        if known and row < als.user_factors_.shape[0]:
            als_user = als.user_factors_[row]
    if als_user is not None and cfg.n_als > 0:
        assert als is not None and als.item_factors_ is not None
        if search is not None:
            allowed = np.ones(n_items, dtype=bool)
            allowed[own] = False
            offer(search.top_k(als_user, allowed, min(cfg.n_als, n_items))[0], ALS)
        else:
            scores = als.item_factors_ @ als_user
            scores[own] = -np.inf
            offer(_best(scores, min(cfg.n_als, n_items)), ALS)
    knn_dense: np.ndarray | None = None
    if knn is not None and own.size:
        sim_t = _similarity_t(knn)
        starts, stops = sim_t.indptr[own], sim_t.indptr[own + 1]
        counts = stops - starts
        take = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(
            int(counts.sum())
        )
        weights = np.repeat(decayed.astype(np.float32), counts) * sim_t.data[take]
        knn_dense = np.bincount(sim_t.indices[take], weights=weights, minlength=n_items).astype(
            np.float32
        )
        if cfg.n_knn > 0:
            # only the items a neighbour reaches compete (not the whole catalog)
            reached = np.unique(sim_t.indices[take]).astype(np.int64)
            reached = reached[~_isin_sorted(reached, own)]
            offer(reached[_best(knn_dense[reached], cfg.n_knn)], KNN)
    if known and cfg.n_categories > 0 and cfg.n_per_category > 0 and snapshot.n_categories > 0:
        c_lo, c_hi = int(snapshot.cat_indptr[row]), int(snapshot.cat_indptr[row + 1])
        cats = snapshot.cat_indices[c_lo:c_hi].astype(np.int64)
        top = cats[_best(snapshot.cat_share[c_lo:c_hi], cfg.n_categories)]
        picked = _category_table(snapshot, cfg.n_per_category)[top].ravel()
        offer(picked[picked >= 0], CATEGORY)
    if cfg.n_popular > 0:
        offer(_popular(snapshot, cfg.n_popular), POPULAR)

    all_items = np.concatenate(items) if items else np.zeros(0, dtype=np.int64)
    all_flags = np.concatenate(flags) if flags else np.zeros(0, dtype=np.int16)
    order = np.argsort(all_items, kind="stable")
    all_items, all_flags = all_items[order], all_flags[order]
    first = np.r_[True, all_items[1:] != all_items[:-1]] if all_items.size else all_items > 0
    starts = np.flatnonzero(first)
    uniq = all_items[starts]
    merged = (
        np.bitwise_or.reduceat(all_flags, starts).astype(np.int16)
        if starts.size
        else np.zeros(0, dtype=np.int16)
    )
    matrix = sp.csr_matrix(
        (merged, uniq.astype(np.int32), np.array([0, uniq.size])), shape=(1, n_items)
    )
    als_score = np.zeros(uniq.size, dtype=np.float32)
    if als_user is not None:
        assert als is not None and als.item_factors_ is not None
        # the batch path's arithmetic (row-wise einsum), so both give equal scores
        users = np.broadcast_to(als_user, (uniq.size, als_user.size))
        als_score = np.einsum("ij,ij->i", users, als.item_factors_[uniq]).astype(np.float32)
    knn_score = knn_dense[uniq] if knn_dense is not None else np.zeros(uniq.size, dtype=np.float32)
    return Candidates(
        rows=np.array([row], dtype=np.int64),
        matrix=matrix,
        als_score=als_score,
        knn_score=knn_score,
    )
