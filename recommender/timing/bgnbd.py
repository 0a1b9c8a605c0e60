"""The beta-geometric family: BG/NBD and MBG/NBD.

* :class:`BGNBD` (Fader, Hardie & Lee 2005): after each *repeat* purchase the
  customer drops out with probability ``p`` ~ Beta(a, b).
* :class:`MBGNBD` (Batislam, Denizel & Filiztekin 2007): as BG/NBD, but the
  customer may also drop out right after the first purchase, so one-time buyers
  are not all "alive".
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1

from recommender.timing.base import TimingModel, check_horizon
from recommender.timing.rows import check_rows, on_distinct_rows

__all__ = ["BGNBD", "MBGNBD"]


class _BetaGeometricModel(TimingModel):
    """BG/NBD and MBG/NBD share everything but one offset (``modified``)."""

    param_names = ("r", "alpha", "a", "b")
    has_gradient = True
    modified: ClassVar[bool] = False

    def _initial(self, x: np.ndarray, T: np.ndarray, w: np.ndarray) -> np.ndarray:
        mean_x = max(float(w @ x) / w.sum(), 1e-3)
        mean_T = max(float(w @ T) / w.sum(), 1e-3)
        r0 = 1.0
        return np.log([r0, r0 * mean_T / mean_x, 1.0, 1.0])

    def _loglik(
        self, p: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, grad: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        r, alpha, a, b = (float(v) for v in p)
        m = 1.0 if self.modified else 0.0
        pos = x > 0
        # Second branch ("dropped out right after the last purchase"):
        # BG/NBD: only after a repeat purchase; MBG/NBD: also after the first.
        second = np.ones_like(pos) if self.modified else pos
        rx = r + x
        common = gammaln(rx) - gammaln(r) + r * math.log(alpha) - betaln(a, b)
        lT = np.log(alpha + T)
        lt = np.log(alpha + t_x)
        A1 = betaln(a, b + x + m) - rx * lT
        bb = np.where(second, b + x + m - 1.0, 1.0)  # safe argument where unused
        A2 = np.where(second, betaln(a + 1.0, bb) - rx * lt, -np.inf)
        ll = common + np.logaddexp(A1, A2)
        if not grad:
            return ll, None
        w2 = np.where(second, expit(A2 - A1), 0.0)
        w1 = 1.0 - w2
        d_r = digamma(rx) - digamma(r) + math.log(alpha) - (w1 * lT + w2 * lt)
        d_alpha = r / alpha - rx * (w1 / (alpha + T) + w2 / (alpha + t_x))
        psi_abx = digamma(a + b + x + m)
        d_a = (
            -(digamma(a) - digamma(a + b))
            + w1 * (digamma(a) - psi_abx)
            + w2 * (digamma(a + 1.0) - psi_abx)
        )
        d_b = (
            -(digamma(b) - digamma(a + b))
            + w1 * (digamma(b + x + m) - psi_abx)
            + w2 * (np.where(second, digamma(bb), 0.0) - psi_abx)
        )
        g = np.stack([d_r * r, d_alpha * alpha, d_a * a, d_b * b], axis=1)
        return ll, g

    def _log_odds_dead(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """log P(dead)/P(alive) for the history; ``-inf`` where death is impossible."""
        r, alpha, a, b = (self._fitted_params[k] for k in self.param_names)
        m = 1.0 if self.modified else 0.0
        second = np.ones(np.shape(x), dtype=bool) if self.modified else x > 0
        bb = np.where(second, b + x + m - 1.0, 1.0)
        lo = np.log(a) - np.log(bb) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        return np.where(second, lo, -np.inf)

    def p_alive(self, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Probability that the customer is still active at ``T``.

        Under BG/NBD a customer without repeat purchases is alive with
        probability 1 (dropout happens only after a repeat purchase); MBG/NBD
        removes that artefact.
        """
        self._check_fitted()
        xa, ta, Ta = check_rows(x, t_x, T)
        return expit(-self._log_odds_dead(xa, ta, Ta))

    def expected_purchases(self, t: Any, x: Any, t_x: Any, T: Any) -> np.ndarray:
        """Expected purchases in ``(T, T + t]`` given the history ``(x, t_x, T)``.

        Uses the Euler transformation of the Gauss hypergeometric function,
        ``(1-z)**(r+x) 2F1(r+x, b+x+m; c; z) = (1-z)**(a-1) 2F1(c-r-x, a-1; c; z)``
        with ``c = a + b + x + m - 1``, whose series stays well conditioned for
        large ``x`` and ``z`` close to 1.
        """
        self._check_fitted()
        xa, ta, Ta = check_rows(x, t_x, T)
        t_arr = check_horizon(t)
        r, alpha, a, b = (self._fitted_params[k] for k in self.param_names)
        m = 1.0 if self.modified else 0.0
        if abs(a - 1.0) < 1e-7:  # removable singularity at a = 1
            a = 1.0 + 1e-7
        c = a + b + xa + m - 1.0
        z = t_arr / (alpha + Ta + t_arr)
        log1mz = -np.log1p(t_arr / (alpha + Ta))
        F = on_distinct_rows(lambda cc, zz: hyp2f1(a + b + m - 1.0 - r, a - 1.0, cc, zz), c, z)
        bracket = -np.expm1((a - 1.0) * log1mz) - np.exp((a - 1.0) * log1mz) * (F - 1.0)
        pa = expit(-self._log_odds_dead(xa, ta, Ta))
        out = c / (a - 1.0) * bracket * pa
        bad = ~np.isfinite(out)
        if 0 < bad.sum() <= 2000:  # hyp2f1 gave up (extreme parameters): integrate instead
            out = np.array(out, dtype=np.float64)
            t_b, x_b, T_b = np.broadcast_arrays(t_arr, xa, Ta)
            out[bad] = pa[bad] * self._expected_given_alive_quad(t_b[bad], x_b[bad], T_b[bad])
        return np.where(t_arr > 0, np.maximum(out, 0.0), 0.0)

    def _expected_given_alive_quad(self, t: np.ndarray, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """E[purchases in t | alive] by quadrature over p ~ Beta(a, b + x + m).

        Given alive, rate lambda and dropout p, the expected number of purchases
        in ``t`` is ``h(p) = (1 - exp(-lambda p t)) / p``; lambda is integrated
        out in closed form, ``h(p) = (1 - (1 + p u)**-k) / p`` with ``u = t / A``.
        The fallback runs where the parameters are extreme, typically ``a``
        far below 1: then most of the Beta mass lies at p far below any float
        near 0, which no quadrature of ``h(p) p**(a-1)`` resolves. So the
        integral is ``h(0) + E[h(p) - h(0)]``, whose integrand vanishes at 0,
        split where ``h`` changes scale (``p ~ 1 / (k u)``); a single
        quadrature over ``[0, 1]`` misses the mass near 0 and disagrees with
        Monte Carlo. Slow (two ``quad`` per row): only a fallback.
        """
        from scipy import integrate

        r, alpha, a, b = (self._fitted_params[k] for k in self.param_names)
        m = 1.0 if self.modified else 0.0
        out = np.empty(t.shape)
        for i, (ti, xi, Ti) in enumerate(zip(t.ravel(), x.ravel(), T.ravel(), strict=True)):
            k, u, bp = r + xi, ti / (alpha + Ti), b + xi + m
            h0 = k * u

            def d(p: float, k: float = k, u: float = u, h0: float = h0) -> float:
                return -math.expm1(-k * math.log1p(p * u)) / p - h0 if p > 0 else 0.0

            s = min(0.5, 20.0 / max(h0, 1e-300))
            lo = integrate.quad(
                lambda p, d=d, bp=bp: d(p) * math.exp((bp - 1.0) * math.log1p(-p)),
                0.0,
                s,
                weight="alg",
                wvar=(a - 1.0, 0.0),
                limit=200,
                full_output=1,  # no IntegrationWarning: nothing a user can act on
            )[0]
            hi = integrate.quad(
                lambda p, d=d: d(p) * math.exp((a - 1.0) * math.log(p)),
                s,
                1.0,
                weight="alg",
                wvar=(0.0, bp - 1.0),
                limit=200,
                full_output=1,  # no IntegrationWarning: nothing a user can act on
            )[0]
            out.flat[i] = h0 + (lo + hi) * math.exp(-betaln(a, bp))
        return out

    def _p_purchase_given_alive(self, t: np.ndarray, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        # Alive now => no dropout before the next purchase; lambda | history ~
        # Gamma(r + x, alpha + T), so the waiting time is Lomax.
        r, alpha = self._fitted_params["r"], self._fitted_params["alpha"]
        return -np.expm1(-(r + x) * np.log1p(t / (alpha + T)))

    def _median_given_alive(self, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha = self._fitted_params["r"], self._fitted_params["alpha"]
        return (alpha + T) * np.expm1(math.log(2.0) / (r + x))


class BGNBD(_BetaGeometricModel):
    """BG/NBD model (Fader, Hardie & Lee 2005) with parameters r, alpha, a, b.

    See :class:`TimingModel` for the constructor and the shared methods.
    """

    name = "bgnbd"
    modified = False


class MBGNBD(_BetaGeometricModel):
    """MBG/NBD model (Batislam et al. 2007) with parameters r, alpha, a, b.

    Like BG/NBD, but a customer can also drop out right after the first
    purchase, so one-time buyers are not all alive.
    """

    name = "mbgnbd"
    modified = True
