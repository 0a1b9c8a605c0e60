"""Implicit-feedback ALS (Hu, Koren and Volinsky 2008) on top of ``implicit``.

``implicit`` does the fitting; this class keeps the learned factors as plain
arrays so that a saved version needs no pickle and the serving app can score,
fold in new customers and find similar items with numpy alone.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg.lapack import dposv

from recommender.ranking.base import Recommender, scratch_block

#: Defaults of the estimator and of the product (``training.config.ALSConfig``
#: reads them from here, so the two cannot drift). They were chosen by a grid on
#: the generated shops (bench/sweep_defaults.py) with BM25-weighted matrices, the
#: pipeline's default weighting: those weights are already large, hence alpha 1.
DEFAULT_FACTORS = 32
DEFAULT_REGULARIZATION = 0.1
DEFAULT_ALPHA = 1.0
DEFAULT_ITERATIONS = 15


class FactorError(RuntimeError):
    """ALS produced factors that must not be published (NaN, infinite or empty)."""


class ALSRecommender(Recommender):
    """Matrix factorisation for implicit feedback.

    Parameters
    ----------
    factors
        Latent dimensions.
    regularization
        L2 penalty on the factors.
    alpha
        Confidence scale: a weighted interaction ``r`` gets confidence ``alpha * r``
        (``implicit``'s convention).
    iterations
        ALS sweeps.
    random_state
        Seed (a plain int, so it can be written into a manifest).
    num_threads
        Threads for ``implicit``; 0 means all cores.
    """

    name = "als"

    def __init__(
        self,
        factors: int = DEFAULT_FACTORS,
        regularization: float = DEFAULT_REGULARIZATION,
        alpha: float = DEFAULT_ALPHA,
        iterations: int = DEFAULT_ITERATIONS,
        random_state: int = 0,
        num_threads: int = 0,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads
        self.user_factors_: np.ndarray | None = None
        self.item_factors_: np.ndarray | None = None

    def fit(
        self,
        user_items: sp.csr_matrix,
        *,
        warm_start: ALSRecommender | None = None,
        iterations: int | None = None,
        show_progress: bool = False,
    ) -> ALSRecommender:
        """Fit on a weighted customer x item matrix.

        Parameters
        ----------
        warm_start
            A fitted model with the same shape whose factors start the sweeps
            (used to refit on the full log after evaluation at a fraction of
            the cost).
        iterations
            Override the number of sweeps for this call.

        Raises
        ------
        FactorError
            If the matrix is empty or the factors come out non-finite.
        """
        from threadpoolctl import threadpool_limits

        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        from implicit.cpu.als import AlternatingLeastSquares

        user_items = sp.csr_matrix(user_items, dtype=np.float32)
        if user_items.nnz == 0:
            raise FactorError("cannot fit ALS on an empty interaction matrix")
        model = AlternatingLeastSquares(
            factors=self.factors,
            regularization=self.regularization,
            alpha=self.alpha,
            iterations=iterations if iterations is not None else self.iterations,
            random_state=self.random_state,
            num_threads=self.num_threads,
            calculate_training_loss=False,
        )
        if warm_start is not None:
            warm_start._check_fitted("user_factors_", "item_factors_")
            assert warm_start.user_factors_ is not None and warm_start.item_factors_ is not None
            if warm_start.user_factors_.shape != (user_items.shape[0], self.factors) or (
                warm_start.item_factors_.shape != (user_items.shape[1], self.factors)
            ):
                raise ValueError("warm_start factors do not match the matrix shape")
            model.user_factors = warm_start.user_factors_.copy()
            model.item_factors = warm_start.item_factors_.copy()
        # implicit parallelises across users itself; BLAS threads on top of that
        # oversubscribe the cores and slow every sweep down.
        with threadpool_limits(1, "blas"):
            model.fit(user_items, show_progress=show_progress)
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        check_factors(self.user_factors_, "user")
        check_factors(self.item_factors_, "item")
        self._yty: np.ndarray | None = None
        self._yty_reg: tuple[float, np.ndarray] | None = None
        return self

    @classmethod
    def from_factors(
        cls,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        *,
        regularization: float,
        alpha: float,
        **params: Any,
    ) -> ALSRecommender:
        """Rebuild a fitted model from saved factors."""
        model = cls(
            factors=int(item_factors.shape[1]),
            regularization=regularization,
            alpha=alpha,
            **params,
        )
        model.user_factors_ = np.ascontiguousarray(user_factors, dtype=np.float32)
        model.item_factors_ = np.ascontiguousarray(item_factors, dtype=np.float32)
        check_factors(model.user_factors_, "user")
        check_factors(model.item_factors_, "item")
        return model

    @property
    def n_items(self) -> int:
        self._check_fitted("item_factors_")
        assert self.item_factors_ is not None
        return int(self.item_factors_.shape[0])

    def score(
        self,
        user_rows: np.ndarray,
        user_items: sp.csr_matrix | None = None,
        *,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Dense scores ``(len(user_rows), n_items)``, written into ``out`` when given."""
        self._check_fitted("user_factors_", "item_factors_")
        assert self.user_factors_ is not None and self.item_factors_ is not None
        return np.matmul(self.user_factors_[np.asarray(user_rows)], self.item_factors_.T, out=out)

    def _dense_scores(
        self, rows: np.ndarray, user_items: sp.csr_matrix, scratch: threading.local
    ) -> np.ndarray:
        return self.score(rows, out=scratch_block(scratch, len(rows), self.n_items))

    def fold_in(self, item_rows: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """Factors for a customer the model has not seen, from items they bought.

        Solves the same least-squares step ALS uses for a customer row with the
        item factors held fixed (``implicit``'s ``recalculate_user``), so a new
        customer's picks are what a refit would give them.
        """
        self._check_fitted("item_factors_")
        assert self.item_factors_ is not None
        item_rows = np.asarray(item_rows, dtype=np.int64)
        conf = (
            np.ones(len(item_rows), dtype=np.float64)
            if weights is None
            else np.asarray(weights, dtype=np.float64)
        ) * self.alpha
        # only the rows bought: converting the whole item matrix would cost
        # more than the solve (100,000 x 64 floats on every request)
        yu = self.item_factors_[item_rows].astype(np.float64)
        a = self._regularized_gram() + (yu * (conf - 1.0)[:, None]).T @ yu
        b = yu.T @ conf
        # a is symmetric positive definite (a Gram matrix, positive confidences,
        # plus the regularisation): LAPACK's Cholesky solve, called directly,
        # costs a request ~10 us less than np.linalg.solve's general one
        _, x, info = dposv(a, b)
        if info != 0:  # not positive definite after all (zero regularisation)
            x = np.linalg.solve(a, b)
        return np.asarray(x, dtype=np.float32)

    def _regularized_gram(self) -> np.ndarray:
        """``Y^T Y + regularization I`` (float64), cached: the part of every
        fold-in's system that does not depend on the customer."""
        cached: tuple[float, np.ndarray] | None = getattr(self, "_yty_reg", None)
        if cached is None or cached[0] != self.regularization:
            gram = self.gram()
            cached = (self.regularization, gram + self.regularization * np.eye(gram.shape[0]))
            self._yty_reg = cached
        return cached[1]

    def gram(self) -> np.ndarray:
        """``Y^T Y`` of the item factors (float64), cached."""
        self._check_fitted("item_factors_")
        cached: np.ndarray | None = getattr(self, "_yty", None)
        if cached is None:
            assert self.item_factors_ is not None
            y = self.item_factors_.astype(np.float64)
            cached = y.T @ y
            self._yty = cached
        return cached

    def similar_items(self, item_row: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Most similar items by cosine of item factors, excluding the item itself."""
        self._check_fitted("item_factors_")
        assert self.item_factors_ is not None
        norms = self.item_norms()
        sims = (self.item_factors_ @ self.item_factors_[item_row]) / (
            norms * max(norms[item_row], 1e-12)
        )
        sims[item_row] = -np.inf
        k = min(k, len(sims) - 1)
        if k <= 0:
            return np.empty(0, np.int32), np.empty(0, np.float32)
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return top.astype(np.int32), sims[top].astype(np.float32)

    def item_norms(self) -> np.ndarray:
        cached = getattr(self, "_item_norms", None)
        if cached is None:
            assert self.item_factors_ is not None
            cached = np.maximum(np.linalg.norm(self.item_factors_, axis=1), 1e-12)
            self._item_norms = cached
        return cached


def check_factors(factors: np.ndarray, what: str) -> None:
    """Raise :class:`FactorError` for empty or non-finite factors."""
    if factors.size == 0 or factors.ndim != 2:
        raise FactorError(f"{what} factors are empty (shape {factors.shape})")
    if not np.isfinite(factors).all():
        bad = int((~np.isfinite(factors)).any(axis=1).sum())
        raise FactorError(f"{what} factors contain NaN or infinity in {bad} row(s)")


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_FACTORS",
    "DEFAULT_ITERATIONS",
    "DEFAULT_REGULARIZATION",
    "ALSRecommender",
    "FactorError",
    "check_factors",
]
