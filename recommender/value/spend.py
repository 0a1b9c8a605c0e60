"""Spend per order: the Gamma-Gamma model of Fader, Hardie and Lee (2005).

"RFM and CLV: Using Iso-Value Curves for Customer Base Analysis", Journal of
Marketing Research 42(4); Fader and Hardie (2013), "The Gamma-Gamma Model of
Monetary Value". A customer's order values vary around their own mean ``zeta``;
each value is ``Gamma(p, nu)`` with ``zeta = p / nu``, and ``nu`` varies across
customers as ``Gamma(q, gamma)``. With ``x`` repeat orders of mean value
``m_x``, the posterior mean order value is

``E[M | x, m_x] = (q - 1) / (p x + q - 1) * gamma p / (q - 1) + p x / (p x + q - 1) * m_x``,

a weighted average of the population mean ``gamma p / (q - 1)`` and the
customer's own mean: a customer with one repeat order is pulled toward the
average, one with many follows their own.

The model assumes a customer's order values do not depend on how often they
order; :func:`spend_frequency_correlation` measures that on each shop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy.special import digamma, gammaln

from recommender.errors import NotFittedError

__all__ = [
    "STATE_SCHEMA",
    "GammaGammaModel",
    "SpendFitError",
    "SpendSummary",
    "spend_frequency_correlation",
    "summarize_spend",
]

STATE_SCHEMA = "encore.spend/1"


class SpendFitError(RuntimeError):
    """The spend model cannot be fitted on this data."""


@dataclass(frozen=True)
class SpendSummary:
    """Each customer's repeat orders, as the Gamma-Gamma model reads them.

    Orders are a customer's purchase days (same-day lines merged, their values
    summed); the first order is left out, as the model describes repeat spend.

    Attributes
    ----------
    frequency
        Repeat orders of positive value per customer row (float64).
    monetary
        Mean value of those orders (0 where there are none).
    nonpositive_orders
        Repeat orders of value zero or below (free items, refunds netted out):
        counted here and left out of ``frequency`` and ``monetary``.
    """

    frequency: np.ndarray
    monetary: np.ndarray
    nonpositive_orders: int


def orders_from_lines(
    customer_rows: np.ndarray, days: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orders of order lines: ``(customer, day, value)`` per order, sorted by
    customer, then day.

    An order is a customer's purchase day: lines of one customer on the same
    whole ``day`` are one order, their ``values`` summed. The arrays must be
    non-empty, with valid (non-negative) customer rows.
    """
    c = np.asarray(customer_rows, dtype=np.int64)
    d = np.floor(np.asarray(days, dtype=np.float64)).astype(np.int64)
    v = np.asarray(values, dtype=np.float64)
    # one key per (customer, day), so an order is a run of equal keys
    span = int(d.max() - d.min()) + 1
    key = c * span + (d - d.min())
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return c[order][starts], d[order][starts], np.add.reduceat(v[order], starts)


def summarize_spend(
    customer_rows: np.ndarray, days: np.ndarray, values: np.ndarray, n_customers: int
) -> SpendSummary:
    """Repeat-order counts and mean values per customer from order lines.

    Parameters
    ----------
    customer_rows
        Customer row of each order line (negative rows are ignored).
    days
        Day of each line (float days; lines on the same whole day form one order).
    values
        Value of each line (quantity times unit price); non-finite values are ignored.
    n_customers
        Number of customer rows.
    """
    c = np.asarray(customer_rows, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    ok = (c >= 0) & np.isfinite(v)
    freq = np.zeros(n_customers, dtype=np.float64)
    money = np.zeros(n_customers, dtype=np.float64)
    if not ok.any():
        return SpendSummary(freq, money, 0)
    order_customer, _, order_value = orders_from_lines(c[ok], np.asarray(days)[ok], v[ok])
    first = np.r_[True, order_customer[1:] != order_customer[:-1]]
    repeat = ~first
    positive = repeat & (order_value > 0)
    freq = np.bincount(order_customer[positive], minlength=n_customers).astype(np.float64)
    total = np.bincount(
        order_customer[positive], weights=order_value[positive], minlength=n_customers
    )
    np.divide(total, freq, out=money, where=freq > 0)
    return SpendSummary(freq, money, int((repeat & ~positive).sum()))


def spend_frequency_correlation(summary: SpendSummary) -> float | None:
    """Pearson correlation of repeat orders and mean order value across repeat buyers.

    The Gamma-Gamma model assumes it is near zero; ``None`` with fewer than
    three repeat buyers or no variation.
    """
    has = summary.frequency > 0
    if has.sum() < 3:
        return None
    x, m = summary.frequency[has], summary.monetary[has]
    if x.std() == 0 or m.std() == 0:
        return None
    return float(np.corrcoef(x, m)[0, 1])


class GammaGammaModel:
    """The Gamma-Gamma model of spend per order, fitted by maximum likelihood.

    Parameters
    ----------
    penalizer
        L2 penalty on the log parameters (0: plain maximum likelihood, which
        reproduces the published fits).
    min_customers
        Fewest repeat buyers to fit on.

    Attributes
    ----------
    p_, q_, gamma_
        The fitted parameters.
    log_likelihood_
        Log-likelihood of the fit (at the optimum, without the penalty).
    n_customers_
        Repeat buyers the model was fitted on.
    """

    def __init__(self, penalizer: float = 0.0, min_customers: int = 20) -> None:
        self.penalizer = penalizer
        self.min_customers = min_customers
        self.p_: float | None = None
        self.q_: float | None = None
        self.gamma_: float | None = None
        self.log_likelihood_: float | None = None
        self.n_customers_: int | None = None

    @staticmethod
    def _loglik_terms(theta: np.ndarray, x: np.ndarray, m: np.ndarray) -> tuple[float, np.ndarray]:
        """Sum of per-customer log-likelihoods and its gradient in log parameters."""
        p, q, g = np.exp(theta)
        px = p * x
        ll = (
            gammaln(px + q)
            - gammaln(px)
            - gammaln(q)
            + q * np.log(g)
            + (px - 1.0) * np.log(m)
            + px * np.log(x)
            - (px + q) * np.log(g + m * x)
        )
        log_gmx = np.log(g + m * x)
        d_p = x * (digamma(px + q) - digamma(px) + np.log(m) + np.log(x) - log_gmx)
        d_q = digamma(px + q) - digamma(q) + np.log(g) - log_gmx
        d_g = q / g - (px + q) / (g + m * x)
        grad = np.array([d_p.sum() * p, d_q.sum() * q, d_g.sum() * g])
        return float(ll.sum()), grad

    def fit(self, frequency: np.ndarray, monetary: np.ndarray) -> GammaGammaModel:
        """Fit on the customers with at least one repeat order of positive value.

        Parameters
        ----------
        frequency
            Repeat orders per customer (customers with none are skipped).
        monetary
            Mean value of those orders.

        Raises
        ------
        SpendFitError
            Too few repeat buyers, or the optimiser finds no finite optimum.
        """
        x = np.asarray(frequency, dtype=np.float64)
        m = np.asarray(monetary, dtype=np.float64)
        use = (x > 0) & (m > 0) & np.isfinite(m)
        x, m = x[use], m[use]
        if len(x) < self.min_customers:
            raise SpendFitError(
                f"{len(x)} customers with a repeat order of positive value; "
                f"the spend model needs at least {self.min_customers}"
            )
        # Scale values to a mean of one so the optimiser starts near the answer
        # whatever the currency; gamma scales back with it.
        scale = float(m.mean())
        ms = m / scale
        lam = self.penalizer

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            ll, grad = self._loglik_terms(theta, x, ms)
            return -ll + lam * float(theta @ theta), -grad + 2.0 * lam * theta

        best = None
        for start in ([1.0, 1.0, 1.0], [5.0, 3.0, 2.0], [0.5, 2.0, 0.5]):
            res = optimize.minimize(
                objective,
                np.log(start),
                jac=True,
                method="L-BFGS-B",
                bounds=[(-10.0, 10.0)] * 3,
                options={"maxiter": 2000, "ftol": 1e-14, "gtol": 1e-9},
            )
            if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
        if best is None:
            raise SpendFitError("the spend model's likelihood has no finite optimum here")
        p, q, g = np.exp(best.x)
        self.p_, self.q_, self.gamma_ = float(p), float(q), float(g * scale)
        # the likelihood of the values as given (the scaling shifts it by a constant)
        self.log_likelihood_ = self._loglik_terms(np.log([p, q, g * scale]), x, m)[0]
        self.n_customers_ = int(len(x))
        return self

    def _check_fitted(self) -> tuple[float, float, float]:
        if self.p_ is None or self.q_ is None or self.gamma_ is None:
            raise NotFittedError("GammaGammaModel is not fitted; call fit() first")
        return self.p_, self.q_, self.gamma_

    @property
    def mean_order_value(self) -> float:
        """The population's mean order value, ``gamma p / (q - 1)`` (infinite for q <= 1)."""
        p, q, g = self._check_fitted()
        return g * p / (q - 1.0) if q > 1.0 else float("inf")

    def expected_order_value(self, frequency: np.ndarray, monetary: np.ndarray) -> np.ndarray:
        """Each customer's expected value of a future order.

        Customers without a repeat order of positive value get the population
        mean; the rest a weighted average of it and their own mean.
        """
        p, q, g = self._check_fitted()
        x = np.asarray(frequency, dtype=np.float64)
        m = np.asarray(monetary, dtype=np.float64)
        has = (x > 0) & (m > 0)
        x = np.where(has, x, 0.0)
        m = np.where(has, m, 0.0)
        return (p * (g + x * m)) / (p * x + q - 1.0)

    def to_state(self) -> dict[str, Any]:
        """The fitted parameters as JSON-ready values."""
        p, q, g = self._check_fitted()
        return {
            "schema": STATE_SCHEMA,
            "p": p,
            "q": q,
            "gamma": g,
            "penalizer": self.penalizer,
            "log_likelihood": self.log_likelihood_,
            "n_customers": self.n_customers_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GammaGammaModel:
        """The model :meth:`to_state` saved; refuses another schema or bad numbers."""
        if state.get("schema") != STATE_SCHEMA:
            raise ValueError(f"unknown spend model schema {state.get('schema')!r}")
        values = [state.get(k) for k in ("p", "q", "gamma")]
        if not all(isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in values):
            raise ValueError(f"spend model parameters must be positive numbers: {values}")
        model = cls(penalizer=float(state.get("penalizer", 0.0)))
        model.p_, model.q_, model.gamma_ = (float(v) for v in values)  # type: ignore[arg-type]
        ll = state.get("log_likelihood")
        model.log_likelihood_ = float(ll) if ll is not None else None
        n = state.get("n_customers")
        model.n_customers_ = int(n) if n is not None else None
        return model
