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
:func:`~recommender.ranking.base.top_k_sparse`, no loop per customer); a block
of one customer is the serving call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recommender.ranking.als import ALSRecommender
from recommender.ranking.base import top_k, top_k_sparse
from recommender.ranking.baselines import ItemKNNRecommender
from recommender.ranking.features import ShopSnapshot

__all__ = [
    "ALS",
    "CATEGORY",
    "HISTORY",
    "KNN",
    "POPULAR",
    "CandidateConfig",
    "Candidates",
    "generate_candidates",
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
    als, item_knn
        Models fitted on the same lines (optional: without one, its source is
        empty and its score 0).
    config
        Counts per source.
    """
    cfg = config or CandidateConfig()
    rows = np.asarray(rows, dtype=np.int64)
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
        assert knn.similarity_ is not None
        knn_scores = sp.csr_matrix(dec_rows @ knn.similarity_.T, dtype=np.float32)
        knn_scores.sum_duplicates()
        if cfg.n_knn > 0 and knn_scores.nnz:
            picked, _ = top_k_sparse(knn_scores, none, cfg.n_knn, exclude=hist_rows)
            parts.append(_pairs_from_lists(picked, KNN))

    popularity = snapshot.item_popularity().astype(np.float32)
    if cfg.n_categories > 0 and cfg.n_per_category > 0 and snapshot.n_categories > 0:
        parts.append(_category_candidates(snapshot, safe, known, popularity, cfg))
    if cfg.n_popular > 0:
        top, _ = top_k(popularity[None, :], cfg.n_popular)
        items = np.tile(top, (n, 1))
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


def pair_values(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows, cols]`` for many pairs (0 where nothing is stored)."""
    m = sp.csr_matrix(matrix)
    m.sort_indices()
    n_cols = m.shape[1]
    stored = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    keys = stored * n_cols + m.indices
    want = rows * n_cols + cols
    pos = np.searchsorted(keys, want)
    pos_c = np.minimum(pos, max(keys.size - 1, 0))
    out = np.zeros(want.size, dtype=np.float32)
    if keys.size:
        hit = (pos < keys.size) & (keys[pos_c] == want)
        out[hit] = m.data[pos[hit]]
    return out


def _category_candidates(
    snapshot: ShopSnapshot,
    rows: np.ndarray,
    known: np.ndarray,
    popularity: np.ndarray,
    cfg: CandidateConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Popular items of each customer's top categories."""
    n_cat = snapshot.n_categories
    cats = snapshot.item_category.astype(np.int64)
    # every category's items, most popular first, in a padded table
    per = cfg.n_per_category
    order = np.lexsort((np.arange(cats.size), -popularity, cats))
    order = order[cats[order] >= 0]
    sorted_cat = cats[order]
    counts = np.bincount(sorted_cat, minlength=n_cat)
    rank = np.arange(order.size) - np.repeat(np.cumsum(counts) - counts, counts)
    table = np.full((n_cat, per), -1, dtype=np.int64)
    take = rank < per
    table[sorted_cat[take], rank[take]] = order[take]
    mix = sp.csr_matrix(snapshot.category_matrix()[rows])
    mix = sp.csr_matrix(sp.diags(known.astype(np.float32)) @ mix)
    mix.eliminate_zeros()
    top_cats, _ = top_k_sparse(
        mix, np.full(mix.shape[1], -np.inf, dtype=np.float32), cfg.n_categories
    )
    r, j = np.nonzero(top_cats >= 0)
    items = table[top_cats[r, j]]  # (entries, per)
    rr = np.repeat(r, per)
    ii = items.ravel()
    ok = ii >= 0
    return rr[ok], ii[ok], np.full(int(ok.sum()), CATEGORY, dtype=np.int16)
