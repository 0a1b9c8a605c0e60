"""Pareto/NBD (Schmittlein, Morrison & Colombo 1987): an exponential lifetime
with rate ``mu`` ~ Gamma(s, beta), and the hypergeometric function it needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit, gamma, gammaln, hyp2f1

from recommender.timing.base import TimingModel, check_horizon
from recommender.timing.rows import check_rows, distinct_pairs, on_distinct_rows

__all__ = ["ParetoNBD"]

# Gauss-Legendre nodes on [0, 1] for the Pareto/NBD "buy within t" integral.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(48)
_GL_X = (_GL_X + 1.0) / 2.0
_GL_W = _GL_W / 2.0
# Exponent of the substitution u = 1 - (1 - v)**q that smooths the endpoint.
_Q = 3.0


def _hyp2f1_one(b: np.ndarray, c: np.ndarray, z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``2F1(1, b; c; z)`` for ``0 <= z < 1``, with ``w = 1 - z`` given exactly.

    scipy sums the Gauss series, whose cost grows as ``1 / w`` when
    ``d = c - b - 1`` is small, and ``z`` close to 1 is where a shop with
    hardly any churn puts most Pareto/NBD customers. There the connection to ``w`` (DLMF 15.8.4) is
    used instead; with ``a = 1`` its second series sums to a closed form::

        2F1(1, b; c; z) = (c-1)/d 2F1(1, b; 1-d; w) + G(c) G(-d) / G(b) w**d z**(1-c)

    The remaining series converges like ``w**n``. Its two terms cancel as
    ``1 / |d - round(d)|`` and as ``exp(b w)``, so it is only used for
    ``w < 0.1``, ``b w < 0.5``, ``d < 4`` and ``d`` at least 1e-3 from an
    integer (relative error below 1e-12 against mpmath); scipy does the rest.
    """
    b, c, z, w = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (b, c, z, w)))
    d = c - b - 1.0
    near = (w < 0.1) & (b * w < 0.5) & (d < 4.0) & (np.abs(d - np.round(d)) > 1e-3)
    out = np.empty(b.shape)
    far = ~near
    out[far] = hyp2f1(1.0, b[far], c[far], z[far])
    if near.any():
        bn, cn, dn, wn = b[near], c[near], d[near], w[near]
        term = np.ones(bn.shape)
        total = term.copy()
        for n in range(200):  # |ratio| -> w < 0.1: about 20 terms
            term = term * ((bn + n) / (1.0 - dn + n)) * wn
            total += term
            if np.all(np.abs(term) <= 1e-17 * np.abs(total)):
                break
        closed = np.sign(gamma(-dn)) * np.exp(
            gammaln(cn) - gammaln(bn) + gammaln(-dn) + dn * np.log(wn) - (cn - 1.0) * np.log1p(-wn)
        )
        out[near] = (cn - 1.0) / dn * total + closed
    return out


def _neg_expm1_ratio(k: float, L: np.ndarray) -> np.ndarray:
    """``(1 - exp(k L)) / k`` with the ``k -> 0`` limit ``-L``."""
    if abs(k) < 1e-10:
        return -L
    return -np.expm1(k * L) / k


class ParetoNBD(TimingModel):
    """Pareto/NBD model (Schmittlein et al. 1987) with parameters r, alpha, s, beta.

    The likelihood uses the Fader & Hardie (2005) closed form with the Euler
    transformation ``2F1(m, b'; m+1; z) = (1-z)**(1-b') 2F1(1, m+1-b'; m+1; z)``,
    whose series terms are bounded by ``z**n`` for any ``x``; near ``z = 1`` (a
    shop with hardly any churn) it is evaluated through the connection to
    ``1 - z`` (:func:`_hyp2f1_one`), where the series is slow. The probability of
    a purchase within ``t`` has no simple closed form and is integrated with
    48-point Gauss-Legendre quadrature after a substitution that makes the
    integrand bounded and smooth (vectorised over customers).
    """

    name = "pareto_nbd"
    param_names = ("r", "alpha", "s", "beta")
    has_gradient = False

    def _initial(self, x: np.ndarray, T: np.ndarray, w: np.ndarray) -> np.ndarray:
        mean_x = max(float(w @ x) / w.sum(), 1e-3)
        mean_T = max(float(w @ T) / w.sum(), 1e-3)
        return np.log([1.0, mean_T / mean_x, 1.0, mean_T])

    @staticmethod
    def _log_terms(
        p: Sequence[float] | np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(log prefactor, log 'alive' term, log 'died in (t_x, T)' term)``."""
        r, alpha, s, beta = (float(v) for v in p)
        rx = r + x
        mm = rx + s
        pre = gammaln(rx) - gammaln(r) + r * math.log(alpha) + s * math.log(beta)
        log_alive = -rx * np.log(alpha + T) - s * np.log(beta + T)
        bp: float | np.ndarray
        if alpha >= beta:
            base, other, bp = alpha, beta, s + 1.0
            second = rx  # m + 1 - b'
        else:
            base, other, bp = beta, alpha, rx
            second = np.full_like(rx, s + 1.0)

        def log_f(tt: np.ndarray) -> np.ndarray:
            w = (other + tt) / (base + tt)  # 1 - z, without the cancellation
            z = (base - other) / (base + tt)
            shape = np.broadcast_shapes(np.shape(x), np.shape(tt), np.shape(second))
            first, inverse = distinct_pairs(x, tt)

            def flat(v: Any) -> np.ndarray:
                return np.broadcast_to(v, shape).ravel()[first]

            f2 = _hyp2f1_one(flat(second), flat(mm) + 1.0, flat(z), flat(w))
            f2 = f2[inverse].reshape(shape)
            return (1.0 - bp) * np.log(w) + np.log(f2) - mm * np.log(base + tt)

        lf1 = log_f(t_x)
        lf2 = log_f(T)
        diff = lf2 - lf1
        with np.errstate(divide="ignore"):
            log_a0 = np.where(diff < 0, lf1 + np.log(-np.expm1(np.minimum(diff, 0.0))), -np.inf)
        log_died = np.log(s) - np.log(mm) + log_a0
        return pre, log_alive, log_died

    def _loglik(
        self, p: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, grad: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        pre, la, ld = self._log_terms(p, x, t_x, T)
        return pre + np.logaddexp(la, ld), None

    def p_alive(self, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Probability that the customer is still active at ``T``."""
        p = self._check_fitted()
        xa, ta, Ta = check_rows(x, t_x, T)
        _, la, ld = self._log_terms(p, xa, ta, Ta)
        return expit(la - ld)

    def expected_purchases(self, t: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Expected purchases in ``(T, T + t]`` given the history ``(x, t_x, T)``."""
        self._check_fitted()
        xa, ta, Ta = check_rows(x, t_x, T)
        t_arr = check_horizon(t)
        r, alpha, s, beta = (self._fitted_params[k] for k in self.param_names)
        L = -np.log1p(t_arr / (beta + Ta))  # log((beta+T)/(beta+T+t))
        out = (r + xa) * (beta + Ta) / (alpha + Ta) * _neg_expm1_ratio(s - 1.0, L)
        return np.maximum(out * self.p_alive(xa, ta, Ta), 0.0)

    def _given_alive_parts(
        self, x: np.ndarray, T: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r, alpha, s, beta = (self._fitted_params[k] for k in self.param_names)
        return r + x, alpha + T, beta + T

    def _integral_v(
        self, v_hi: np.ndarray, k: np.ndarray, A: np.ndarray, B: np.ndarray
    ) -> np.ndarray:
        """∫_0^{v_hi} h(v) dv with h the transformed "next purchase before death" density.

        With ``u = 1 - (1 - v)**q`` the Lomax CDF of the waiting time under
        lambda ~ Gamma(k, A), the integrand is
        ``q (1-v)**(q-1) (1 + y/B)**(-s)``, ``y = A((1-v)**(-q/k) - 1)``.
        """
        s = self._fitted_params["s"]
        v = v_hi[..., None] * _GL_X  # (..., nodes)
        kk, AA, BB = k[..., None], A[..., None], B[..., None]
        l1v = np.log1p(-v)
        y = AA * np.expm1(-_Q * l1v / kk)
        h = _Q * np.exp((_Q - 1.0) * l1v - s * np.log1p(y / BB))
        return v_hi * (h @ _GL_W)

    def _p_purchase_given_alive(self, t: np.ndarray, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        return on_distinct_rows(self._p_purchase_given_alive_rows, t, x, T)

    def _median_given_alive(self, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        return on_distinct_rows(self._median_given_alive_rows, x, T)

    def _p_purchase_given_alive_rows(
        self, t: np.ndarray, x: np.ndarray, T: np.ndarray
    ) -> np.ndarray:
        k, A, B = self._given_alive_parts(x, T)
        k, A, B, t = np.broadcast_arrays(k, A, B, t)
        # v_t = 1 - (A / (A + t))**(k / q)
        v_hi = -np.expm1(-(k / _Q) * np.log1p(t / A))
        return np.clip(self._integral_v(v_hi, k, A, B), 0.0, 1.0)

    def _median_given_alive_rows(self, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        k, A, B = self._given_alive_parts(x, T)
        k, A, B = (np.asarray(a, dtype=np.float64) for a in np.broadcast_arrays(k, A, B))
        shape = k.shape
        k, A, B = k.ravel(), A.ravel(), B.ravel()
        out = np.full(k.shape, np.inf)
        total = self._integral_v(np.full(k.shape, 1.0 - 1e-12), k, A, B)
        ok = total > 0.5
        if np.any(ok):
            kk, AA, BB = k[ok], A[ok], B[ok]
            lo = np.zeros(kk.shape)
            hi = np.full(kk.shape, 1.0 - 1e-12)
            for _ in range(40):  # bisection in v; the integral is increasing
                mid = 0.5 * (lo + hi)
                below = self._integral_v(mid, kk, AA, BB) < 0.5
                lo = np.where(below, mid, lo)
                hi = np.where(below, hi, mid)
            v = 0.5 * (lo + hi)
            out[ok] = AA * np.expm1(-(_Q / kk) * np.log1p(-v))
        return out.reshape(shape)
