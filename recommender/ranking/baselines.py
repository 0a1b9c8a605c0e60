"""Honest baselines: popularity, item-kNN and each customer's own favourites.

Every ALS figure Encore reports is set beside these, computed on the same split.
Personal frequency (recommend what the customer already buys most) is hard to
beat in shops where most orders are rebuys.
"""

from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp

from recommender.ranking.base import Recommender, top_k_sparse


class PopularityRecommender(Recommender):
    """The same list for everyone: items bought by the most customers."""

    name = "popularity"

    def __init__(self) -> None:
        self.item_scores_: np.ndarray | None = None
        self.item_order_: np.ndarray | None = None

    def fit(self, user_items: sp.csr_matrix) -> PopularityRecommender:
        binary = sp.csr_matrix(user_items, copy=True)
        binary.data = np.ones_like(binary.data)
        counts = np.asarray(binary.sum(axis=0)).ravel().astype(np.float32)
        self.item_scores_ = counts / max(float(counts.max(initial=0.0)), 1.0)
        self.item_order_ = np.argsort(-self.item_scores_, kind="stable")
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

    def _rank_block(
        self,
        rows: np.ndarray,
        user_items: sp.csr_matrix,
        k: int,
        exclude_seen: bool,
        scratch: threading.local,
    ) -> tuple[np.ndarray, np.ndarray]:
        # everyone gets the same row of scores: nothing stored, all fill
        self._check_fitted("item_scores_")
        assert self.item_scores_ is not None
        none = sp.csr_matrix((len(rows), self.n_items), dtype=np.float32)
        return top_k_sparse(
            none,
            self.item_scores_,
            k,
            exclude=user_items[rows] if exclude_seen else None,
            fill_order=self.item_order_,
        )


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

    def _rank_block(
        self,
        rows: np.ndarray,
        user_items: sp.csr_matrix,
        k: int,
        exclude_seen: bool,
        scratch: threading.local,
    ) -> tuple[np.ndarray, np.ndarray]:
        # the rows of score() without the dense matrix: twice the count where
        # the customer bought, popularity everywhere else
        self._check_fitted("popularity_")
        assert self.popularity_ is not None and self.popularity_.item_scores_ is not None
        history = user_items[rows]
        own = sp.csr_matrix(history, copy=True)
        own.sum_duplicates()
        own = own.astype(np.float32)
        own.eliminate_zeros()
        own.data *= 2.0
        return top_k_sparse(
            own,
            self.popularity_.item_scores_,
            k,
            exclude=history if exclude_seen else None,
            fill_order=self.popularity_.item_order_,
        )


class ItemKNNRecommender(Recommender):
    """Item-based nearest neighbours: cosine similarity of item purchase vectors.

    A customer's score for an item is the sum of its similarities to the items
    in their history, keeping each item's ``k`` nearest neighbours. The
    neighbour search is ``implicit``'s (C++, memory bounded by ``k`` per item),
    so it scales to large catalogs where a full item x item product would not.
    """

    name = "item_knn"

    def __init__(self, k: int = 100) -> None:
        self.k = k
        self.similarity_: sp.csr_matrix | None = None
        self._similarity_t: sp.csr_matrix | None = None

    def fit(self, user_items: sp.csr_matrix) -> ItemKNNRecommender:
        from implicit.nearest_neighbours import all_pairs_knn

        x = sp.csr_matrix(user_items, dtype=np.float32, copy=True)
        # an item whose only entries are stored zeros would get NaN similarities
        # (0 / 0 in the cosine normalisation)
        x.eliminate_zeros()
        x.data = np.log1p(x.data)
        # Cosine similarity is the dot product of unit-length item columns:
        # the normalisation of implicit's CosineRecommender (same arithmetic),
        # without its round trips through COO.
        norm = np.sqrt(np.bincount(x.indices, weights=x.data**2, minlength=x.shape[1]))
        unit = sp.csr_matrix((x.data / norm[x.indices], x.indices, x.indptr), shape=x.shape)
        knn = all_pairs_knn(unit, self.k, show_progress=False, num_threads=0)  # COO
        other = knn.row != knn.col  # an item is not its own neighbour
        sim = sp.csr_matrix(
            (knn.data[other].astype(np.float32), (knn.row[other], knn.col[other])),
            shape=knn.shape,
        )
        sim.eliminate_zeros()
        self.similarity_ = sim
        # scores are history @ S^T; a CSC right operand would be converted to
        # CSR on every product
        self._similarity_t = sim.T.tocsr()
        return self

    @property
    def n_items(self) -> int:
        self._check_fitted("similarity_")
        assert self.similarity_ is not None
        return int(self.similarity_.shape[0])

    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray(self._sparse_scores(user_rows, user_items).toarray(), dtype=np.float32)

    def _sparse_scores(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> sp.csr_matrix:
        self._check_fitted("similarity_")
        assert self._similarity_t is not None
        hist = user_items[np.asarray(user_rows)].astype(np.float32)
        hist.data = np.log1p(hist.data)
        # row i of similarity_ holds item i's neighbours; score = history @ S^T
        return hist @ self._similarity_t

    def _rank_block(
        self,
        rows: np.ndarray,
        user_items: sp.csr_matrix,
        k: int,
        exclude_seen: bool,
        scratch: threading.local,
    ) -> tuple[np.ndarray, np.ndarray]:
        # items no neighbour of the history reaches score 0
        return top_k_sparse(
            self._sparse_scores(rows, user_items),
            np.zeros(self.n_items, dtype=np.float32),
            k,
            exclude=user_items[rows] if exclude_seen else None,
            fill_order=np.arange(self.n_items),
        )
