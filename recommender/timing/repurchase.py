"""Item-level "buy it again": personal repurchase cycles and when an item is due.

Model (after Bhagat et al. 2018, "Buy It Again", RecSys). For a customer ``c``
and a repurchase item ``i``, the gaps between purchase days are
``Gamma(k_i, rate lambda_ci)``: ``k_i`` is the item's regularity (shared by its
customers) and ``lambda_ci`` the customer's own repurchase rate, with a
``Gamma(alpha_i, beta_i)`` prior across the item's customers fitted by
empirical Bayes (or set from ``prior_strength``). With ``m`` observed gaps of
total length ``S`` the posterior is conjugate, ``Gamma(alpha_i + m k_i,
beta_i + S)``, so a customer with few repeats is shrunk toward the item's
typical cycle and one with many follows their own.

Why a Gamma gap and not a Poisson rate: under a Poisson (exponential gap)
model the chance of a purchase in the next N days does not depend on the time
since the last purchase, so an item bought yesterday would rank level with
one that is due. With ``k_i > 1`` the hazard rises as the gap grows, and with
the rate integrated out (a beta-prime predictive gap) it falls again for
customers long overdue, who have probably stopped buying the item:

``P(rebuy within N | e days since last) = (F(e + N) - F(e)) / (1 - F(e))``,
``F(g) = I_{g / (g + b')}(k, a')`` (regularised incomplete beta),
with ``a' = alpha_i + m k_i`` and ``b' = beta_i + S``.

The regularity ``k_i`` is estimated from customers with at least two gaps by
maximum likelihood with every customer's rate profiled out (the statistic
``log mean(g) - mean(log g)`` does not depend on the rate), falling back to
the value pooled over all items when an item has too few such customers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import optimize
from scipy.special import betainc, digamma, gammaln, polygamma

from recommender.data.interactions import distinct_purchase_days
from recommender.data.sampling import seeded_mask
from recommender.errors import NotFittedError
from recommender.timing.rows import on_distinct_rows

__all__ = ["RepurchaseModel", "RepurchaseStateError"]

STATE_SCHEMA = "encore.repurchase/1"
_K_BOUNDS = (0.5, 30.0)


class RepurchaseStateError(ValueError):
    """A saved repurchase model state is malformed or from an unknown schema."""


def _group_starts(keys: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def _gap_survival(k: np.ndarray, a: np.ndarray, b: np.ndarray, e: np.ndarray) -> np.ndarray:
    """P(the next gap is longer than ``e`` days) under the beta-prime
    predictive: ``1 - F(e) = I_{b / (e + b)}(a, k)``.

    This is ``betaincc(k, a, e / (e + b))`` written as the lower incomplete
    beta of the other tail, which scipy evaluates much faster and, far into
    the tail, with smaller relative error against mpmath than the complement.
    """
    return on_distinct_rows(betainc, a, k, b / (e + b))


def _bracketed_newton(
    value_and_slope: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    tol: float,
    *,
    relative: bool = False,
) -> np.ndarray:
    """Roots of many decreasing functions at once (one per entry of ``x``).

    Newton steps, kept inside the bracket ``[lo, hi]`` that each value's sign
    narrows (bisection where a step would leave it), until no entry moves by
    ``tol`` or more (relative to it when ``relative``); at most 100 steps. An
    entry with ``lo == hi == x`` stays where it is.
    """
    for _ in range(100):
        val, slope = value_and_slope(x)
        # decreasing: a positive value puts the root above x
        lo, hi = np.where(val > 0, x, lo), np.where(val > 0, hi, x)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = x - val / slope
        step = np.where((step > lo) & (step < hi), step, 0.5 * (lo + hi))
        move = np.abs(step - x)
        done = np.max(move / x if relative else move) < tol
        x = step
        if done:
            break
    return x


def _fit_shapes(stat_sum: np.ndarray, group: np.ndarray, m: np.ndarray) -> np.ndarray:
    """MLE of the Gamma shape per group, each member's rate profiled out.

    For every group ``j`` solves ``sum m (psi(m k) - log m - psi(k)) = stat_sum[j]``
    over its members' gap counts ``m >= 2``, where ``stat_sum[j]`` is the sum
    of ``m (log mean - mean log)`` of their gaps (the left side is its
    expectation, decreasing in ``k``); clipped to ``_K_BOUNDS``.

    All groups take :func:`_bracketed_newton` steps at once, on the distinct
    ``(group, m)`` rows (gap counts are small integers): a few vectorised
    passes instead of a root finder per item.
    """
    n = stat_sum.size
    lo, hi = np.full(n, _K_BOUNDS[0]), np.full(n, _K_BOUNDS[1])
    if group.size == 0:
        return np.where(stat_sum >= 0, lo, hi)
    span = int(m.max()) + 1
    key, count = np.unique(group.astype(np.int64) * span + m, return_counts=True)
    g, mm = np.divmod(key, span)
    mm = mm.astype(np.float64)
    w = count * mm
    log_m = np.log(mm)

    def f(k: np.ndarray) -> np.ndarray:
        kk = k[g]
        return np.bincount(g, weights=w * (digamma(mm * kk) - log_m - digamma(kk)), minlength=n)

    def value_and_slope(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kk = k[g]
        slope = w * (mm * polygamma(1, mm * kk) - polygamma(1, kk))
        return f(k) - stat_sum, np.bincount(g, weights=slope, minlength=n)

    out = np.where(f(lo) <= stat_sum, lo, np.where(f(hi) >= stat_sum, hi, np.nan))
    todo = np.isnan(out)
    # a group whose root lies beyond a bound stays at that bound
    k = np.where(todo, np.sqrt(lo * hi), out)
    lo, hi = np.where(todo, lo, out), np.where(todo, hi, out)
    return _bracketed_newton(value_and_slope, k, lo, hi, 1e-12, relative=True)


def _distinct_weighted(
    item: np.ndarray, m: np.ndarray, S: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``(item, m, S)`` rows and how many times each occurs."""
    if item.size == 0:
        return item, m, S, np.zeros(0)
    order = np.lexsort((S, m, item))
    it, mm, ss = item[order], m[order], S[order]
    new = np.r_[True, (it[1:] != it[:-1]) | (mm[1:] != mm[:-1]) | (ss[1:] != ss[:-1])]
    starts = np.flatnonzero(new)
    count = np.diff(np.r_[starts, it.size]).astype(np.float64)
    return it[starts], mm[starts], ss[starts], count


_LOG_BOUNDS = (-10.0, 15.0)


def _newton_per_item(
    item: np.ndarray,
    mk: np.ndarray,
    S: np.ndarray,
    count: np.ndarray,
    n_items: int,
    ref_a: float,
    ref_ratio: float,
    w: float,
    max_iter: int = 200,
) -> tuple[np.ndarray, np.ndarray]:
    """Maximise each item's penalised marginal likelihood in ``(log a, log b)``.

    The objective is a sum of independent two-parameter problems, one per
    item, so every item takes its own damped Newton (Levenberg-Marquardt)
    step at once: a few dozen vectorised passes instead of hundreds of
    L-BFGS iterations over all items jointly. The penalty
    ``w/2 (da^2 + dr^2)`` on ``da = log a - ref_a`` and
    ``dr = log(b/a) - ref_ratio`` keeps items with few pairs near the pooled prior.
    """
    lo, hi = _LOG_BOUNDS

    def evaluate(
        la: np.ndarray, lb: np.ndarray, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, ...]:
        # Given ``rows`` (all the rows of some items), only those items' values are right.
        it, m_k, gaps, n = (
            (item, mk, S, count) if rows is None else (item[rows], mk[rows], S[rows], count[rows])
        )
        a, b = np.exp(la)[it], np.exp(lb)[it]
        bs = b + gaps
        ll = gammaln(a + m_k) - gammaln(a) + a * (lb[it] - np.log(bs)) - m_k * np.log(bs)
        d_a = digamma(a + m_k) - digamma(a) + lb[it] - np.log(bs)
        frac = b / bs
        g_a = a * d_a
        g_b = a - (a + m_k) * frac
        h_aa = g_a + a * a * (polygamma(1, a + m_k) - polygamma(1, a))
        h_ab = a * (1.0 - frac)
        h_bb = -(a + m_k) * frac * (1.0 - frac)

        def per_item(v: np.ndarray) -> np.ndarray:
            return np.bincount(it, weights=n * v, minlength=n_items)

        da, dr = la - ref_a, (lb - la) - ref_ratio
        f = per_item(ll) - 0.5 * w * (da**2 + dr**2)
        ga = per_item(g_a) - w * (da - dr)
        gb = per_item(g_b) - w * dr
        haa = per_item(h_aa) - 2.0 * w
        hab = per_item(h_ab) + w
        hbb = per_item(h_bb) - w
        return f, ga, gb, haa, hab, hbb

    la = np.full(n_items, ref_a)
    lb = np.full(n_items, ref_a + ref_ratio)
    f, ga, gb, haa, hab, hbb = evaluate(la, lb)
    lam = np.full(n_items, 1e-3)
    scale = 1.0 + np.bincount(item, weights=count, minlength=n_items)
    for _ in range(max_iter):
        active = (np.abs(ga) + np.abs(gb)) > 1e-7 * scale
        if not active.any():
            break
        # M = -H + lam I, made positive definite
        p0, q, r0 = -haa, -hab, -hbb
        e_min = 0.5 * ((p0 + r0) - np.sqrt((p0 - r0) ** 2 + 4.0 * q * q))
        damp = lam + np.where(e_min < 0, -e_min + 1e-9 * (1.0 + np.abs(p0) + np.abs(r0)), 0.0)
        p, r = p0 + damp, r0 + damp
        det = p * r - q * q
        step_a = (r * ga - q * gb) / det
        step_b = (p * gb - q * ga) / det
        big = np.maximum(np.abs(step_a), np.abs(step_b))
        shrink = np.where(big > 1.0, 1.0 / np.maximum(big, 1e-300), 1.0)
        step_a, step_b = step_a * shrink * active, step_b * shrink * active
        la_new = np.clip(la + step_a, lo, hi)
        lb_new = np.clip(lb + step_b, lo, hi)
        # most items settle in a few steps: the rest are evaluated on their rows only
        rows = None if active.all() else np.flatnonzero(active[item])
        trial = evaluate(la_new, lb_new, rows)
        better = active & np.isfinite(trial[0]) & (trial[0] >= f - 1e-12 * np.abs(f))
        la, lb = np.where(better, la_new, la), np.where(better, lb_new, lb)
        f, ga, gb, haa, hab, hbb = (
            np.where(better, new, old)
            for new, old in zip(trial, (f, ga, gb, haa, hab, hbb), strict=True)
        )
        # only items still moving raise their damping (a finished one would overflow)
        lam = np.where(better, np.maximum(lam * 0.3, 1e-9), np.where(active, lam * 10.0, lam))
        # an item pinned at a bound with the gradient pointing outward is done
        stuck = (lam > 1e12) | (
            ((la <= lo) & (ga < 0) | (la >= hi) & (ga > 0))
            & ((lb <= lo) & (gb < 0) | (lb >= hi) & (gb > 0))
        )
        ga, gb = np.where(stuck, 0.0, ga), np.where(stuck, 0.0, gb)
    return la, lb


class RepurchaseModel:
    """Personal repurchase cycles per (customer, item) with an item-level prior.

    Parameters
    ----------
    min_item_repeat_customers : int
        An item is a repurchase item when at least this many customers bought
        it on two or more distinct days.
    prior_strength : float, optional
        ``None``: fit each item's prior by empirical Bayes. A number ``w``: the
        prior is worth ``w`` pseudo-gaps of the item's pooled mean gap
        (``alpha_i = w k_i``, ``beta_i = w * mean gap``).
    min_customer_purchases : int
        Pairs with fewer distinct purchase days are not scored; 2 (default)
        keeps items the customer has already rebought; 1 also offers
        repurchase items bought once, on the item's prior cycle.
    shrink_to_global : float
        Weight of a weak Normal penalty (in log-parameters) pulling each item's
        empirical-Bayes prior toward the prior pooled over all items, so items
        with a handful of repeat customers get a stable prior.
    """

    def __init__(
        self,
        min_item_repeat_customers: int = 3,
        prior_strength: float | None = None,
        min_customer_purchases: int = 2,
        shrink_to_global: float = 1.0,
    ) -> None:
        self.min_item_repeat_customers = min_item_repeat_customers
        self.prior_strength = prior_strength
        self.min_customer_purchases = min_customer_purchases
        self.shrink_to_global = shrink_to_global

    indptr_: np.ndarray | None = None
    #: At most this many customers (a seeded sample) give the pairs that the
    #: item priors and dropout are fitted on; every customer's pairs are then
    #: scored with them. Item-level rates need no more, and the fits cost
    #: per pair.
    prior_sample: int | None = 100_000

    # -- fitting -------------------------------------------------------------
    def fit(
        self,
        customer_codes: np.ndarray,
        item_codes: np.ndarray,
        days: np.ndarray,
        as_of_day: float,
        n_customers: int | None = None,
        n_items: int | None = None,
    ) -> RepurchaseModel:
        """Learn item priors and every customer's cycles from a purchase log.

        Parameters
        ----------
        customer_codes, item_codes : np.ndarray
            Integer codes per purchase event.
        days : np.ndarray
            Purchase time in days; purchases of an item on the same
            ``floor(day)`` are one purchase. Events after ``as_of_day`` are ignored.
        as_of_day : float
            End of the training data (inclusive).
        n_customers, n_items : int, optional
            Code ranges (default ``max + 1``).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            On malformed input or hyperparameters.
        """
        if self.min_item_repeat_customers < 1 or self.min_customer_purchases not in (1, 2):
            raise ValueError("min_item_repeat_customers >= 1 and min_customer_purchases in {1, 2}")
        if self.prior_strength is not None and not self.prior_strength > 0:
            raise ValueError("prior_strength must be positive or None")
        c = np.asarray(customer_codes)
        i = np.asarray(item_codes)
        d = np.asarray(days, dtype=np.float64)
        if not (c.shape == i.shape == d.shape) or c.ndim != 1:
            raise ValueError("customer_codes, item_codes and days must be 1-D of equal length")
        if c.size and not (
            np.issubdtype(c.dtype, np.integer) and np.issubdtype(i.dtype, np.integer)
        ):
            raise ValueError("customer and item codes must be integers")
        if not np.all(np.isfinite(d)) or not math.isfinite(float(as_of_day)):
            raise ValueError("days and as_of_day must be finite")
        c, i = c.astype(np.int64), i.astype(np.int64)
        n_customers = int(c.max()) + 1 if n_customers is None and c.size else int(n_customers or 0)
        n_items = int(i.max()) + 1 if n_items is None and i.size else int(n_items or 0)
        if c.size and (c.min() < 0 or c.max() >= n_customers or i.min() < 0 or i.max() >= n_items):
            raise ValueError("codes out of range")
        keep = d <= float(as_of_day)
        c, i, whole = c[keep], i[keep], np.floor(d[keep]).astype(np.int64)

        # Distinct (customer, item, day), sorted by customer, item, day.
        c, i, whole = distinct_purchase_days(c, i, whole, n_items)
        pair_key = c * max(n_items, 1) + i
        starts = _group_starts(pair_key) if c.size else np.zeros(0, dtype=np.int64)
        ends = np.r_[starts[1:], c.size]
        p_cust, p_item = c[starts], i[starts]
        p_n = (ends - starts).astype(np.int64)
        p_first = whole[starts].astype(np.float64)
        p_last = whole[ends - 1].astype(np.float64) if c.size else np.zeros(0)
        p_m = p_n - 1  # gaps
        p_S = p_last - p_first  # total length of the gaps

        # Per-gap log statistic for the shape estimate.
        gaps = np.diff(whole).astype(np.float64)
        same = np.diff(pair_key) == 0 if c.size else np.zeros(0, dtype=bool)
        gap_pair = np.cumsum(np.r_[True, ~same])[:-1][same] - 1 if c.size else np.zeros(0, int)
        n_pairs = p_n.size
        sum_log_gap = np.bincount(gap_pair, weights=np.log(gaps[same]), minlength=n_pairs)

        buyers = p_cust[np.r_[True, p_cust[1:] != p_cust[:-1]]] if c.size else p_cust
        in_sample = seeded_mask(buyers, n_customers, self.prior_sample, seed=2)

        rep_cust = np.bincount(p_item[p_m >= 1], minlength=n_items)
        is_rep = rep_cust >= self.min_item_repeat_customers

        # Item regularity k_i: pairs with >= 2 gaps.
        multi = p_m >= 2
        stat = np.zeros(n_pairs)
        stat[multi] = p_m[multi] * (
            np.log(p_S[multi] / p_m[multi]) - sum_log_gap[multi] / p_m[multi]
        )
        use = multi & is_rep[p_item]
        k_global = 1.0  # no customer with two gaps of a repurchase item: exponential gaps
        if use.any():
            one_group = np.zeros(int(use.sum()), dtype=np.int64)
            k_global = float(_fit_shapes(np.array([stat[use].sum()]), one_group, p_m[use])[0])
        n_multi = np.bincount(p_item[use], minlength=n_items)
        stat_sum = np.bincount(p_item[use], weights=stat[use], minlength=n_items)
        own = n_multi >= max(self.min_item_repeat_customers, 5)
        k_item = np.where(own, _fit_shapes(stat_sum, p_item[use], p_m[use]), k_global)

        # Item prior on the rate, Gamma(alpha_i, beta_i).
        rep_pairs = (p_m >= 1) & is_rep[p_item]
        tot_S = np.bincount(p_item[rep_pairs], weights=p_S[rep_pairs], minlength=n_items)
        tot_m = np.bincount(p_item[rep_pairs], weights=p_m[rep_pairs], minlength=n_items)
        mean_gap = np.where(tot_m > 0, tot_S / np.maximum(tot_m, 1), np.nan)
        glob_gap = float(tot_S.sum() / tot_m.sum()) if tot_m.sum() > 0 else 30.0
        mean_gap = np.where(np.isfinite(mean_gap), mean_gap, glob_gap)
        if self.prior_strength is not None:
            alpha = self.prior_strength * k_item
            beta = self.prior_strength * mean_gap
        else:
            fit_pairs = rep_pairs & in_sample[p_cust]
            alpha, beta = self._empirical_bayes(
                p_item[fit_pairs],
                p_m[fit_pairs].astype(np.float64),
                p_S[fit_pairs],
                k_item,
                n_items,
                is_rep,
            )
        alpha = np.where(is_rep, alpha, 1.0)
        beta = np.where(is_rep, beta, k_item * glob_gap)

        keep_pair = is_rep[p_item] & (p_n >= self.min_customer_purchases)
        p_cust, p_item, p_n, p_last = (
            p_cust[keep_pair],
            p_item[keep_pair],
            p_n[keep_pair],
            p_last[keep_pair],
        )
        p_m, p_S = p_m[keep_pair], p_S[keep_pair]
        post_a = alpha[p_item] + p_m * k_item[p_item]
        post_b = beta[p_item] + p_S

        self.n_customers_ = n_customers
        self.n_items_ = n_items
        self.as_of_day_ = float(as_of_day)
        self.indptr_ = np.r_[0, np.cumsum(np.bincount(p_cust, minlength=n_customers))].astype(
            np.int64
        )
        self.pair_customer_ = p_cust.astype(np.int64)
        self.pair_item_ = p_item.astype(np.int64)
        self.pair_n_ = p_n.astype(np.int64)
        self.pair_last_day_ = p_last.astype(np.float64)
        self.pair_post_shape_ = post_a.astype(np.float64)
        self.pair_post_rate_ = post_b.astype(np.float64)
        self.item_shape_k_ = k_item.astype(np.float64)
        self.item_prior_alpha_ = alpha.astype(np.float64)
        self.item_prior_beta_ = beta.astype(np.float64)
        self.item_repeat_customers_ = rep_cust.astype(np.int64)
        self.is_repurchase_item_ = is_rep
        # the gap at the prior mean rate; for customers, at the posterior mean
        self.item_cycle_days_ = np.where(is_rep, k_item * beta / alpha, np.inf)
        self.item_dropout_ = self._fit_dropout(n_items, in_sample)
        self._check_state()
        return self

    def _fit_dropout(
        self, n_items: int, in_sample: np.ndarray, prior_pairs: float = 20.0
    ) -> np.ndarray:
        """Per item, the chance a customer stops buying it after a purchase.

        Like BG/NBD's dropout at the customer level: after each purchase the
        customer stops with probability ``pi``, so a pair with ``m`` repeats
        and a last purchase ``e`` days ago has likelihood
        ``(1 - pi)**m ((1 - pi) S(e) + pi)`` with ``S`` the chance of no rebuy
        in ``e`` days while still buying. Fitted per item by maximum a
        posteriori (a Beta prior worth ``prior_pairs`` pairs at the pooled
        value), so a lapsed pair is not scored as if it were merely late.
        """
        if self.pair_item_.size == 0:
            return np.zeros(n_items)
        # the pairs of the sampled customers: the incomplete beta per pair is
        # the cost, and an item-level rate needs no more
        pairs = np.flatnonzero(in_sample[self.pair_customer_])
        k, a, b, e = self._pair_gaps(pairs, self.as_of_day_)
        surv = _gap_survival(k, a, b, e)  # P(no rebuy yet | still buying)
        item = self.pair_item_[pairs]
        m = (self.pair_n_[pairs] - 1).astype(np.float64)

        def solve(idx: np.ndarray, n: int, a0: np.ndarray, b0: np.ndarray) -> np.ndarray:
            # The log-posterior is concave in pi: the root of its derivative.
            reps = np.bincount(idx, weights=m, minlength=n)

            def derivatives(pi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                p = pi[idx]
                ratio = (1.0 - surv) / ((1.0 - p) * surv + p)
                d = (
                    np.bincount(idx, weights=ratio, minlength=n)
                    + a0 / pi
                    - (reps + b0) / (1.0 - pi)
                )
                dd = (
                    -np.bincount(idx, weights=ratio * ratio, minlength=n)
                    - a0 / pi**2
                    - (reps + b0) / (1.0 - pi) ** 2
                )
                return d, dd

            lo, hi = np.zeros(n), np.full(n, 1.0 - 1e-9)
            return _bracketed_newton(derivatives, np.full(n, 0.5), lo, hi, 1e-10)

        tiny = np.full(1, 1e-6)
        pooled = float(solve(np.zeros(item.size, dtype=np.int64), 1, tiny, tiny)[0])
        a0 = np.full(n_items, prior_pairs * pooled)
        b0 = np.full(n_items, prior_pairs * (1.0 - pooled))
        return np.where(self.is_repurchase_item_, solve(item, n_items, a0, b0), 0.0)

    def _pair_gaps(
        self, pairs: np.ndarray, at_day: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Gap shape ``k``, posterior shape ``a`` and rate ``b``, and days since
        the last purchase at ``at_day``, per pair."""
        k = self.item_shape_k_[self.pair_item_[pairs]]
        a = self.pair_post_shape_[pairs]
        b = self.pair_post_rate_[pairs]
        e = np.maximum(at_day - self.pair_last_day_[pairs], 0.0)
        return k, a, b, e

    def _empirical_bayes(
        self,
        item: np.ndarray,
        m: np.ndarray,
        S: np.ndarray,
        k_item: np.ndarray,
        n_items: int,
        is_rep: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Maximise every item's marginal likelihood at once (separable L-BFGS)."""
        # Pairs with the same (item, gaps, total gap length) contribute the
        # same term: evaluate each distinct triple once, weighted by its count
        # (exact; gaps are whole days, so millions of pairs share few triples).
        item, m, S, count = _distinct_weighted(item, m, S)
        mk = m * k_item[item]

        def marginal(
            la: np.ndarray, lb: np.ndarray, idx: np.ndarray, n: int
        ) -> tuple[float, np.ndarray, np.ndarray]:
            a, b = np.exp(la)[idx], np.exp(lb)[idx]
            ll = gammaln(a + mk) - gammaln(a) + a * np.log(b) - (a + mk) * np.log(b + S)
            ga = (digamma(a + mk) - digamma(a) + np.log(b) - np.log(b + S)) * a
            gb = (a / b - (a + mk) / (b + S)) * b
            return (
                float(count @ ll),
                np.bincount(idx, weights=count * ga, minlength=n),
                np.bincount(idx, weights=count * gb, minlength=n),
            )

        zero = np.zeros(item.size, dtype=np.int64)

        def glob(theta: np.ndarray) -> tuple[float, np.ndarray]:
            f, ga, gb = marginal(theta[:1], theta[1:], zero, 1)
            return -f, -np.r_[ga, gb]

        mean_gap = float(count @ S / (count @ m)) if count @ m > 0 else 30.0
        k0 = float(np.median(k_item[is_rep])) if is_rep.any() else 1.0
        th0 = np.log([2.0, 2.0 * mean_gap / k0])
        res = optimize.minimize(glob, th0, jac=True, method="L-BFGS-B", bounds=[(-10, 15)] * 2)
        ga0, gb0 = res.x
        if item.size == 0:
            return np.full(n_items, math.exp(ga0)), np.full(n_items, math.exp(gb0))
        w = float(self.shrink_to_global)
        # penalise log(alpha) and log(beta/alpha) (the log prior mean gap scale)
        ref_a, ref_ratio = ga0, gb0 - ga0

        la, lb = _newton_per_item(item, mk, S, count, n_items, ref_a, ref_ratio, w)
        return np.exp(la), np.exp(lb)

    # -- state ----------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.indptr_ is None:
            raise NotFittedError("RepurchaseModel is not fitted; call fit() first")

    _ARRAYS = (
        "indptr_",
        "pair_customer_",
        "pair_item_",
        "pair_n_",
        "pair_last_day_",
        "pair_post_shape_",
        "pair_post_rate_",
        "item_shape_k_",
        "item_prior_alpha_",
        "item_prior_beta_",
        "item_repeat_customers_",
        "is_repurchase_item_",
        "item_cycle_days_",
        "item_dropout_",
    )

    def _check_state(self) -> None:
        n_c, n_i = self.n_customers_, self.n_items_
        ip = self.indptr_
        assert ip is not None
        n_p = self.pair_item_.size
        if ip.shape != (n_c + 1,) or ip[0] != 0 or ip[-1] != n_p or np.any(np.diff(ip) < 0):
            raise RepurchaseStateError("indptr does not match the pairs")
        for name in (
            "pair_customer_",
            "pair_n_",
            "pair_last_day_",
            "pair_post_shape_",
            "pair_post_rate_",
        ):
            if getattr(self, name).shape != (n_p,):
                raise RepurchaseStateError(f"{name} has the wrong shape")
        for name in (
            "item_shape_k_",
            "item_prior_alpha_",
            "item_prior_beta_",
            "item_repeat_customers_",
            "is_repurchase_item_",
            "item_cycle_days_",
            "item_dropout_",
        ):
            if getattr(self, name).shape != (n_i,):
                raise RepurchaseStateError(f"{name} has the wrong shape")
        if n_p and (self.pair_item_.min() < 0 or self.pair_item_.max() >= n_i):
            raise RepurchaseStateError("pair item codes out of range")
        if not np.array_equal(self.pair_customer_, np.repeat(np.arange(n_c), np.diff(ip))):
            raise RepurchaseStateError("pairs are not sorted by customer")
        for name in (
            "pair_last_day_",
            "pair_post_shape_",
            "pair_post_rate_",
            "item_shape_k_",
            "item_prior_alpha_",
            "item_prior_beta_",
        ):
            if not np.all(np.isfinite(getattr(self, name))):
                raise RepurchaseStateError(f"{name} is not finite")
        if np.any(self.pair_post_shape_ <= 0) or np.any(self.pair_post_rate_ <= 0):
            raise RepurchaseStateError("posterior parameters must be positive")

    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-serialisable metadata and the arrays (load with ``allow_pickle=False``)."""
        self._check_fitted()
        meta = {
            "schema": STATE_SCHEMA,
            "min_item_repeat_customers": int(self.min_item_repeat_customers),
            "prior_strength": None if self.prior_strength is None else float(self.prior_strength),
            "min_customer_purchases": int(self.min_customer_purchases),
            "shrink_to_global": float(self.shrink_to_global),
            "as_of_day": self.as_of_day_,
            "n_customers": int(self.n_customers_),
            "n_items": int(self.n_items_),
            "n_pairs": int(self.pair_item_.size),
            "n_repurchase_items": int(self.is_repurchase_item_.sum()),
        }
        arrays = {
            name.rstrip("_"): np.ascontiguousarray(getattr(self, name)) for name in self._ARRAYS
        }
        # A bundle holds only finite numbers: items that are not repurchase
        # items (cycle = inf) are stored as 0 and restored from the mask.
        cycle = arrays["item_cycle_days"].astype(np.float64, copy=True)
        cycle[~np.isfinite(cycle)] = 0.0
        arrays["item_cycle_days"] = cycle
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> RepurchaseModel:
        """Rebuild from :meth:`to_state` output; raises :class:`RepurchaseStateError`."""
        if meta.get("schema") != STATE_SCHEMA:
            raise RepurchaseStateError(f"unknown repurchase state schema {meta.get('schema')!r}")
        try:
            obj = cls(
                min_item_repeat_customers=int(meta["min_item_repeat_customers"]),
                prior_strength=meta["prior_strength"],
                min_customer_purchases=int(meta["min_customer_purchases"]),
                shrink_to_global=float(meta["shrink_to_global"]),
            )
            obj.n_customers_ = int(meta["n_customers"])
            obj.n_items_ = int(meta["n_items"])
            obj.as_of_day_ = float(meta["as_of_day"])
            for name in cls._ARRAYS:
                if name == "item_dropout_" and "item_dropout" not in arrays:
                    # versions written before the dropout existed: nobody stops
                    obj.item_dropout_ = np.zeros(int(meta["n_items"]))
                    continue
                setattr(obj, name, np.asarray(arrays[name.rstrip("_")]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RepurchaseStateError(f"malformed repurchase state: {exc}") from exc
        obj.is_repurchase_item_ = obj.is_repurchase_item_.astype(bool)
        cycle = np.asarray(obj.item_cycle_days_, dtype=np.float64).copy()
        if cycle.shape == obj.is_repurchase_item_.shape:
            cycle[~obj.is_repurchase_item_] = np.inf
        obj.item_cycle_days_ = cycle
        obj._check_state()
        return obj

    # -- prediction -------------------------------------------------------------
    def _prob(
        self, pairs: np.ndarray, within_days: float, at_day: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P(rebuy within ``within_days``), cycle days and days since last, per pair."""
        k, a, b, e = self._pair_gaps(pairs, at_day)
        s_now = _gap_survival(k, a, b, e)
        s_then = _gap_survival(k, a, b, e + within_days)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = (s_now - s_then) / s_now
        # far in the tail both survivals underflow: use the power-law tail of
        # the beta-prime predictive, 1 - ((e + b) / (e + N + b))**a
        tail = ~(s_now > 1e-280)
        p[tail] = -np.expm1(-a[tail] * np.log1p(within_days / (e[tail] + b[tail])))
        p = np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0)
        # ... times the chance they still buy it at all after e quiet days
        pi = self.item_dropout_[self.pair_item_[pairs]]
        with np.errstate(invalid="ignore", divide="ignore"):
            still = (1.0 - pi) * s_now / ((1.0 - pi) * s_now + pi)
        p = p * np.where(pi > 0, np.nan_to_num(still, nan=0.0), 1.0)
        cycle = k * b / a  # the gap at the posterior mean rate
        return p, cycle, e

    def _at(self, as_of_day: float | None) -> float:
        if as_of_day is None:
            return self.as_of_day_
        if not float(as_of_day) >= self.as_of_day_:
            raise ValueError("as_of_day must not be before the model's as-of day")
        return float(as_of_day)

    def buy_again(
        self,
        customer_row: int,
        within_days: float,
        k: int = 10,
        *,
        as_of_day: float | None = None,
    ) -> list[dict[str, Any]]:
        """Top-``k`` items the customer is most likely to rebuy within ``within_days``.

        Cost is O(items of this customer) through ``indptr_``.

        Returns
        -------
        list of dict
            ``item_row``, ``probability``, ``cycle_days``, ``days_since_last``,
            ``n_purchases`` and ``reason`` (plain words), best first. Empty for
            customers with no repurchase history.
        """
        self._check_fitted()
        assert self.indptr_ is not None
        if not 0 <= int(customer_row) < self.n_customers_:
            raise IndexError(f"customer_row must be in [0, {self.n_customers_})")
        if not within_days > 0:
            raise ValueError("within_days must be positive")
        lo, hi = self.indptr_[customer_row], self.indptr_[customer_row + 1]
        pairs = np.arange(lo, hi)
        if pairs.size == 0:
            return []
        p, cycle, e = self._prob(pairs, float(within_days), self._at(as_of_day))
        top = np.argsort(-p, kind="stable")[: int(k)]
        out = []
        for j in top:
            n = int(self.pair_n_[pairs[j]])
            c_days, since = float(cycle[j]), float(e[j])
            if n >= 2:
                reason = f"you buy this about every {_days(c_days)}; last bought {_days(since)} ago"
            else:
                reason = (
                    f"customers rebuy this about every {_days(c_days)}; "
                    f"you bought it {_days(since)} ago"
                )
            out.append(
                {
                    "item_row": int(self.pair_item_[pairs[j]]),
                    "probability": float(p[j]),
                    "cycle_days": c_days,
                    "days_since_last": since,
                    "n_purchases": n,
                    "reason": reason,
                }
            )
        return out

    def rhythm(self, customer_row: int) -> dict[int, tuple[float, float]]:
        """The items a customer rebought (two purchase days or more): item row ->
        (their cycle in days, days since they last bought it), the figures
        behind :meth:`buy_again`'s reasons."""
        self._check_fitted()
        assert self.indptr_ is not None
        if not 0 <= int(customer_row) < self.n_customers_:
            return {}
        lo, hi = self.indptr_[customer_row], self.indptr_[customer_row + 1]
        pairs = np.arange(lo, hi)
        pairs = pairs[np.asarray(self.pair_n_)[pairs] >= 2]
        if pairs.size == 0:
            return {}
        _, cycle, e = self._prob(pairs, 1.0, self._at(None))
        items = np.asarray(self.pair_item_)[pairs].tolist()
        return {int(i): (float(c), float(d)) for i, c, d in zip(items, cycle, e, strict=True)}

    def score_customers(
        self, rows: np.ndarray, within_days: float, *, as_of_day: float | None = None
    ) -> sp.csr_matrix:
        """Probabilities as a ``len(rows) x n_items`` CSR matrix (zeros elsewhere)."""
        self._check_fitted()
        assert self.indptr_ is not None
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_customers_):
            raise IndexError(f"rows must be in [0, {self.n_customers_})")
        starts, stops = self.indptr_[rows], self.indptr_[rows + 1]
        counts = stops - starts
        indptr = np.r_[0, np.cumsum(counts)]
        pairs = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1])
        p, _, _ = self._prob(pairs, float(within_days), self._at(as_of_day))
        return sp.csr_matrix(
            (p.astype(np.float64), self.pair_item_[pairs], indptr),
            shape=(rows.size, self.n_items_),
        )


def days_text(v: float) -> str:
    """A number of days in words: "1 day", "9 days"."""
    return _days(v)


def _days(v: float) -> str:
    n = int(round(v))
    return "1 day" if n == 1 else f"{n} days"
