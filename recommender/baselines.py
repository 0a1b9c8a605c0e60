"""Honest baselines: popularity, item-kNN and each customer's own favourites.

Every ALS figure Encore reports is set beside these, computed on the same split.
Personal frequency (recommend what the customer already buys most) is hard to
beat in shops where most orders are rebuys.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommender.base import Recommender


class PopularityRecommender(Recommender):
    """The same list for everyone: items bought by the most customers."""

    name = "popularity"

    def __init__(self) -> None:
        self.item_scores_: np.ndarray | None = None

    def fit(self, user_items: sp.csr_matrix) -> PopularityRecommender:
        binary = sp.csr_matrix(user_items, copy=True)
        binary.data = np.ones_like(binary.data)
        counts = np.asarray(binary.sum(axis=0)).ravel().astype(np.float32)
        self.item_scores_ = counts / max(float(counts.max(initial=0.0)), 1.0)
        return self

    @property
    def n_items(self) -> int:
        self._check_fitted("item_scores_")
        assert self.item_scores_ is not None
        return int(self.item_scores_.shape[0])

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix | None = None) -> np.ndarray:
        self._check_fitted("item_scores_")
        assert self.item_scores_ is not None
        return np.tile(self.item_scores_, (len(user_rows), 1))


class PersonalFrequencyRecommender(Recommender):
    """Each customer's most-bought items first, then popular items to fill the list."""

    name = "personal_frequency"

    def __init__(self) -> None:
        self.popularity_: PopularityRecommender | None = None

    def fit(self, user_items: sp.csr_matrix) -> PersonalFrequencyRecommender:
        self.popularity_ = PopularityRecommender().fit(user_items)
        return self

    @property
    def n_items(self) -> int:
        self._check_fitted("popularity_")
        assert self.popularity_ is not None
        return self.popularity_.n_items

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        self._check_fitted("popularity_")
        assert self.popularity_ is not None
        own = user_items[np.asarray(user_rows)].toarray().astype(np.float32)
        # popularity in [0, 1] only breaks ties and fills after the own items
        return own * 2.0 + self.popularity_.score(user_rows) * (own == 0)


class ItemKNNRecommender(Recommender):
    """Item-based nearest neighbours: cosine similarity of item purchase vectors.

    A customer's score for an item is the sum of its similarities to the items
    in their history, keeping each item's ``k`` nearest neighbours.
    """

    name = "item_knn"

    def __init__(self, k: int = 100, shrinkage: float = 10.0) -> None:
        self.k = k
        self.shrinkage = shrinkage
        self.similarity_: sp.csr_matrix | None = None

    def fit(self, user_items: sp.csr_matrix) -> ItemKNNRecommender:
        x = sp.csc_matrix(user_items, dtype=np.float32)
        x.data = np.log1p(x.data)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        sim = (x.T @ x).tocsr().astype(np.float32)
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        coo = sim.tocoo()
        denom = norms[coo.row] * norms[coo.col] + self.shrinkage
        data = coo.data / np.maximum(denom, 1e-12)
        sim = sp.csr_matrix((data.astype(np.float32), (coo.row, coo.col)), shape=sim.shape)
        self.similarity_ = _keep_top_k_per_row(sim, self.k)
        return self

    @property
    def n_items(self) -> int:
        self._check_fitted("similarity_")
        assert self.similarity_ is not None
        return int(self.similarity_.shape[0])

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        self._check_fitted("similarity_")
        assert self.similarity_ is not None
        hist = user_items[np.asarray(user_rows)].astype(np.float32)
        hist.data = np.log1p(hist.data)
        # similarity_ rows hold each item's neighbours; score = history @ S^T
        return np.asarray((hist @ self.similarity_.T).toarray(), dtype=np.float32)


def _keep_top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row."""
    m = m.tocsr()
    lengths = np.diff(m.indptr)
    if lengths.max(initial=0) <= k:
        return m
    rows, cols, vals = [], [], []
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        data, idx = m.data[lo:hi], m.indices[lo:hi]
        if hi - lo > k:
            top = np.argpartition(-data, k - 1)[:k]
            data, idx = data[top], idx[top]
        rows.append(np.full(len(idx), r, dtype=np.int32))
        cols.append(idx)
        vals.append(data)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape
    )
