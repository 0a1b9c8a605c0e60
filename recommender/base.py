"""The interface every ranking model shares, and blocked top-k selection."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp


class NotFittedError(RuntimeError):
    """A model method that needs learned state was called before ``fit``."""


class Recommender(ABC):
    """A model that scores every item for a customer from a customer x item matrix.

    Subclasses implement :meth:`fit` and :meth:`score`; :meth:`recommend`
    turns scores into top-k lists in blocks of customers, so that a million
    customers never need a million-row dense matrix at once.
    """

    #: Short name used in reports.
    name: str = "recommender"

    @abstractmethod
    def fit(self, user_items: sp.csr_matrix) -> Recommender:
        """Learn from a customer x item matrix (rows customers, columns items)."""

    @abstractmethod
    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        """Dense scores, shape ``(len(user_rows), n_items)``, float32.

        ``user_items`` is the full matrix of histories (rows indexed by
        ``user_rows``); models that need the history read it from there.
        """

    @property
    @abstractmethod
    def n_items(self) -> int:
        """Number of items the model scores."""

    def _check_fitted(self, *attrs: str) -> None:
        for attr in attrs:
            if getattr(self, attr, None) is None:
                raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")

    def recommend(
        self,
        user_rows: np.ndarray,
        user_items: sp.csr_matrix,
        k: int = 10,
        *,
        exclude_seen: bool = False,
        batch_size: int = 2048,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item rows and scores for each customer row.

        Returns two arrays of shape ``(len(user_rows), k)``: item rows (int32,
        ``-1`` where fewer than ``k`` items are eligible) and scores (float32).
        """
        user_rows = np.asarray(user_rows, dtype=np.int64)
        k = int(min(k, self.n_items))
        out_items = np.full((len(user_rows), k), -1, dtype=np.int32)
        out_scores = np.full((len(user_rows), k), -np.inf, dtype=np.float32)
        for start, block in iter_blocks(user_rows, batch_size):
            scores = self.score(block, user_items)
            if exclude_seen:
                mask_seen(scores, user_items, block)
            items, top = top_k(scores, k)
            out_items[start : start + len(block)] = items
            out_scores[start : start + len(block)] = top
        return out_items, out_scores


def iter_blocks(rows: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(offset, rows[offset:offset + batch_size])``."""
    for start in range(0, len(rows), batch_size):
        yield start, rows[start : start + batch_size]


def mask_seen(scores: np.ndarray, user_items: sp.csr_matrix, rows: np.ndarray) -> None:
    """Set the scores of items in each customer's history to ``-inf`` in place."""
    sub = user_items[rows]
    r, c = sub.nonzero()
    scores[r, c] = -np.inf


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``k`` (sorted, best first); ``-inf`` entries come back as ``-1``."""
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k <= 0:
        return np.empty((n_rows, 0), np.int32), np.empty((n_rows, 0), np.float32)
    if k < n_cols:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.tile(np.arange(n_cols), (n_rows, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    items = np.take_along_axis(part, order, axis=1).astype(np.int32)
    top = np.take_along_axis(part_scores, order, axis=1).astype(np.float32)
    items[~np.isfinite(top)] = -1
    return items, top
