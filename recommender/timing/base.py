"""What every purchase-timing model shares: maximum-likelihood fitting and the
prediction interface.

Each model describes a customer by a purchase rate ``lambda`` (Poisson while
active, Gamma(r, alpha) across customers) and a way of becoming inactive
(:mod:`recommender.timing.bgnbd`, :mod:`recommender.timing.pareto`). All are
fitted from the per-customer summary ``(x, t_x, T)`` made by
:func:`recommender.timing.summary.summarize_purchases`.

Time unit. The model classes are unit-agnostic: predictions use the unit the
model was fitted in. :class:`recommender.timing.selection.PurchaseTimingModel`,
the wrapper the pipeline uses, speaks days on its public API and fits in
``unit_days`` (weeks by default, where the parameters are of order one and the
optimiser is happiest).

Failure policy. ``fit`` raises :class:`TimingFitError` when the optimiser does
not converge, when the log-likelihood or a parameter is not finite, or when a
parameter runs into its bound (the data do not identify it, e.g. nobody ever
bought twice). A fitted model therefore always has ``converged_ == True``; the
attribute is kept so that it can be written into a manifest and checked again
when a model is restored.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from scipy import optimize

from recommender.errors import NotFittedError, TimingFitError, TimingStateError
from recommender.timing.rows import check_rows, compress_rows

__all__ = ["TimingModel", "check_horizon"]

#: Bound on |log(parameter)| during fitting. A parameter that ends on the bound
#: is not identified by the data and the fit is refused.
_LOG_BOUND = 12.0


def check_horizon(t: Any) -> np.ndarray:
    """A prediction horizon as float64; ``ValueError`` unless finite and >= 0."""
    t_arr = np.asarray(t, dtype=np.float64)
    if np.any(~np.isfinite(t_arr)) or np.any(t_arr < 0):
        raise ValueError("t must be finite and non-negative")
    return t_arr


class TimingModel:
    """Shared maximum-likelihood fitting and the prediction interface."""

    name: ClassVar[str] = ""
    param_names: ClassVar[tuple[str, ...]] = ()
    has_gradient: ClassVar[bool] = False

    #: Learned parameters by name (``None`` until fitted).
    params_: dict[str, float] | None = None
    #: Total log-likelihood of the fitted data (NaN for a restored model).
    log_likelihood_: float
    #: True for every model ``fit`` returned (failures raise); kept for manifests.
    converged_: bool
    #: Number of customers (sum of weights) the model was fitted on.
    n_customers_: int
    #: True when the fit needed the fallback penalty (no visible churn).
    penalized_: bool = False

    def __init__(
        self,
        penalizer: float = 0.0,
        max_iter: int = 2000,
        tol: float = 1e-10,
        initial_params: dict[str, float] | None = None,
    ) -> None:
        """Store hyperparameters.

        Parameters
        ----------
        penalizer : float
            L2 penalty on the log-parameters, ``penalizer * sum(log(params)**2)``,
            added to the mean negative log-likelihood per customer. Unlike a
            penalty on the raw parameters (the ``lifetimes`` package) it keeps
            a parameter from running off towards 0 as well as towards
            infinity. 0 gives the plain maximum-likelihood estimate.
        max_iter : int
            Iteration cap of the optimiser.
        tol : float
            Convergence tolerance on the objective (L-BFGS-B ``ftol``).
        initial_params : dict, optional
            Starting point; default a data-driven guess.
        """
        self.penalizer = penalizer
        self.max_iter = max_iter
        self.tol = tol
        self.initial_params = initial_params

    # -- to implement ------------------------------------------------------
    def _loglik(
        self, p: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, grad: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-row log-likelihood and (optionally) its gradient in log-params."""
        raise NotImplementedError

    def _initial(self, x: np.ndarray, T: np.ndarray, w: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    # -- fitting -----------------------------------------------------------
    def _check_fitted(self) -> np.ndarray:
        return np.array([self._fitted_params[k] for k in self.param_names])

    @property
    def _fitted_params(self) -> dict[str, float]:
        if self.params_ is None:
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")
        return self.params_

    @classmethod
    def from_params(cls, params: dict[str, float], **hyper: Any) -> TimingModel:
        """A model with given parameters, as if fitted (for restoring state).

        Raises
        ------
        TimingStateError
            When a parameter is missing, not finite or not positive.
        """
        model = cls(**hyper)
        try:
            vals = [float(params[k]) for k in cls.param_names]
        except (KeyError, TypeError, ValueError) as exc:
            raise TimingStateError(f"{cls.__name__} needs parameters {cls.param_names}") from exc
        if not all(math.isfinite(v) and v > 0 for v in vals):
            raise TimingStateError(f"{cls.__name__} parameters must be finite and positive: {vals}")
        model.params_ = dict(zip(cls.param_names, vals, strict=True))
        model.log_likelihood_ = float("nan")
        model.converged_ = True
        model.n_customers_ = 0
        return model

    def fit(
        self,
        x: np.ndarray,
        t_x: np.ndarray,
        T: np.ndarray,
        weights: np.ndarray | None = None,
    ) -> TimingModel:
        """Fit by maximum likelihood (L-BFGS-B on log-parameters).

        Parameters
        ----------
        x : np.ndarray
            Repeat purchases per customer.
        t_x : np.ndarray
            Time of the last purchase since the first (0 when ``x == 0``).
        T : np.ndarray
            Time from the first purchase to the end of observation.
        weights : np.ndarray, optional
            Number of customers each row stands for (default 1). Identical
            rows are merged internally either way.

        Returns
        -------
        self

        Raises
        ------
        TimingFitError
            When there are no customers or no repeat purchases, the optimiser
            does not converge, or a parameter is not finite or hits its bound.
        ValueError
            On malformed input.
        """
        x, t_x, T = check_rows(x, t_x, T)
        x, t_x, T = x.ravel(), t_x.ravel(), T.ravel()
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64).ravel()
            if weights.shape != x.shape or np.any(weights < 0) or not np.all(np.isfinite(weights)):
                raise ValueError("weights must be finite, non-negative and one per row")
        xu, tu, Tu, wu = compress_rows(x, t_x, T, weights)
        keep = wu > 0
        xu, tu, Tu, wu = xu[keep], tu[keep], Tu[keep], wu[keep]
        n_total = float(wu.sum())
        if n_total <= 0:
            raise TimingFitError(f"{self.name}: no customers to fit on")
        if not np.any(xu > 0):
            raise TimingFitError(
                f"{self.name}: no customer bought twice; the purchase rate and the "
                "dropout process are not identified"
            )
        pen = float(self.penalizer)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray] | float:
            p = np.exp(theta)
            ll, g = self._loglik(p, xu, tu, Tu, grad=self.has_gradient)
            f = -float(wu @ ll) / n_total + pen * float(theta @ theta)
            if not math.isfinite(f):
                f = 1e100
            if self.has_gradient:
                assert g is not None
                grad = -(wu @ g) / n_total + 2.0 * pen * theta
                if not np.all(np.isfinite(grad)):
                    grad = np.zeros_like(theta)
                return f, grad
            return f

        if self.initial_params is not None:
            theta0 = np.log([float(self.initial_params[k]) for k in self.param_names])
        else:
            theta0 = self._initial(xu, Tu, wu)
        bounds = [(-_LOG_BOUND, _LOG_BOUND)] * len(self.param_names)
        opts = {"maxiter": int(self.max_iter), "ftol": float(self.tol), "gtol": 1e-8}
        res = optimize.minimize(
            objective,
            theta0,
            jac=self.has_gradient,
            method="L-BFGS-B",
            bounds=bounds,
            options=opts,
        )
        if not res.success:
            # Line-search failures near the optimum are common with finite
            # differences; polish with Nelder-Mead and try once more.
            f_only = (lambda th: objective(th)[0]) if self.has_gradient else objective  # type: ignore[index]
            nm = optimize.minimize(
                f_only,
                res.x,
                method="Nelder-Mead",
                options={"maxiter": 4000, "xatol": 1e-8, "fatol": 1e-12},
            )
            res = optimize.minimize(
                objective,
                nm.x,
                jac=self.has_gradient,
                method="L-BFGS-B",
                bounds=bounds,
                options=opts,
            )
            converged = bool(res.success) or bool(nm.success and nm.fun <= res.fun + 1e-9)
            if nm.fun < res.fun:
                res.x, res.fun = nm.x, nm.fun
        else:
            converged = True
        theta = np.asarray(res.x, dtype=np.float64)
        params = np.exp(theta)
        ll_total = float(wu @ self._loglik(params, xu, tu, Tu, grad=False)[0])
        if not (np.all(np.isfinite(params)) and math.isfinite(ll_total)):
            raise TimingFitError(f"{self.name}: non-finite parameters or log-likelihood")
        at_bound = [
            k for k, th in zip(self.param_names, theta, strict=True) if abs(th) > _LOG_BOUND - 1e-3
        ]
        if at_bound:
            raise TimingFitError(
                f"{self.name}: parameter(s) {at_bound} diverged to "
                f"{[float(v) for v in params]}; the data do not identify the model"
            )
        if not converged:
            raise TimingFitError(f"{self.name}: optimiser did not converge ({res.message})")
        self.params_ = {k: float(v) for k, v in zip(self.param_names, params, strict=True)}
        # Refuse parameters whose predictions are not finite on the data fitted.
        horizon = float(np.median(Tu)) or 1.0
        try:
            with np.errstate(all="ignore"):  # a refusal below, not a warning
                checks = (
                    self.p_alive(xu, tu, Tu),
                    self.expected_purchases(horizon, xu, tu, Tu),
                    self.p_purchase_within(horizon, xu, tu, Tu),
                )
            finite = all(np.all(np.isfinite(c)) for c in checks)
        except ArithmeticError:  # the scalar quadrature fallback overflows instead
            finite = False
        if not finite:
            self.params_ = None
            raise TimingFitError(
                f"{self.name}: parameters {params.tolist()} give non-finite predictions"
            )
        self.log_likelihood_ = ll_total
        self.converged_ = True
        self.n_customers_ = int(round(n_total))
        return self

    def log_likelihood(self, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Per-customer log-likelihood under the fitted parameters."""
        p = self._check_fitted()
        xa, ta, Ta = check_rows(x, t_x, T)
        return self._loglik(p, xa, ta, Ta, grad=False)[0]

    # -- predictions -------------------------------------------------------
    def p_alive(self, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Probability that the customer is still active at ``T``."""
        raise NotImplementedError

    def expected_purchases(self, t: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Expected purchases in ``(T, T + t]`` given the history ``(x, t_x, T)``."""
        raise NotImplementedError

    def _p_purchase_given_alive(self, t: np.ndarray, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def p_purchase_within(self, t: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Probability of at least one purchase in ``(T, T + t]`` given the history.

        Parameters
        ----------
        t : float or np.ndarray
            Horizon (same unit as the fit), broadcast against the customers.
        x, t_x, T : array_like
            Customer histories.

        Returns
        -------
        np.ndarray
            Probabilities in ``[0, 1]``.
        """
        self._check_fitted()
        xa, ta, Ta = check_rows(x, t_x, T)
        t_arr = check_horizon(t)
        pa = self.p_alive(xa, ta, Ta)
        return np.clip(pa * self._p_purchase_given_alive(t_arr, xa, Ta), 0.0, 1.0)

    def p_purchase_curve(self, ts: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """P(at least one purchase within ``t``) for every ``t`` in ``ts``.

        Returns
        -------
        np.ndarray
            Shape ``(n_customers, len(ts))``, non-decreasing along axis 1.
        """
        self._check_fitted()
        xa, ta, Ta = (a.ravel() for a in check_rows(x, t_x, T))
        ts_arr = check_horizon(np.atleast_1d(ts)).ravel()
        pa = self.p_alive(xa, ta, Ta)[:, None]
        cond = self._p_purchase_given_alive(ts_arr[None, :], xa[:, None], Ta[:, None])
        return np.clip(pa * cond, 0.0, 1.0)

    def expected_purchases_unconditional(self, t: Any) -> np.ndarray:
        """E[X(t)]: expected repeat purchases in ``(0, t]`` for a new customer."""
        t_arr = check_horizon(t)
        z = np.zeros_like(t_arr)
        return self.expected_purchases(t_arr, z, z, z)

    def median_time_to_next(
        self, x: Any, t_x: Any, T: Any, p_alive_floor: float = 0.0
    ) -> np.ndarray:
        """Median time to the next purchase, given the customer is active at ``T``.

        It is the ``t`` with P(next purchase within ``t`` | active at ``T``) = 1/2.

        Returns
        -------
        np.ndarray
            ``np.inf`` where ``p_alive < p_alive_floor`` (most likely churned)
            or where, under Pareto/NBD and MBG/NBD ... an active customer is more
            likely to leave than to buy again (the median does not exist).
            Never NaN.
        """
        self._check_fitted()
        xa, ta, Ta = check_rows(x, t_x, T)
        med = self._median_given_alive(xa, Ta)
        if p_alive_floor > 0:
            med = np.where(self.p_alive(xa, ta, Ta) < p_alive_floor, np.inf, med)
        return med

    def _median_given_alive(self, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        raise NotImplementedError
