"""Evaluating purchase-timing predictions on a holdout window.

Two kinds of prediction are scored per customer:

* counts: expected number of purchases in the window, against the actual
  number (RMSE, MAE, mean squared log error, totals and relative bias);
* probabilities: P(at least one purchase within N days), against whether the
  customer did buy (Brier score, log-loss, ROC AUC by rank statistics).

Every figure is returned as a plain Python float (or ``None`` where it is
undefined, e.g. AUC when every customer bought), so the result can be written
to a manifest with :func:`json.dumps` as is.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "auc_score",
    "calibration_png",
    "calibration_table",
    "count_metrics",
    "evaluate_timing",
    "naive_baselines",
    "probability_metrics",
]

_EPS = 1e-15


def _vec(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def count_metrics(predicted_counts: Any, actual_counts: Any) -> dict[str, float | None]:
    """Per-customer error of predicted purchase counts.

    Parameters
    ----------
    predicted_counts, actual_counts : array_like
        Expected and observed purchases per customer in the window.

    Returns
    -------
    dict
        ``rmse``, ``mae``, ``msle`` (mean of ``(log1p(pred) - log1p(actual))**2``),
        ``total_predicted``, ``total_actual`` and ``relative_bias``
        (``total_predicted / total_actual - 1``; ``None`` when nobody bought).
    """
    pred = _vec(predicted_counts, "predicted_counts")
    act = _vec(actual_counts, "actual_counts")
    if pred.shape != act.shape:
        raise ValueError("predicted_counts and actual_counts differ in length")
    if pred.size == 0:
        raise ValueError("no customers to evaluate")
    if np.any(pred < 0) or np.any(act < 0):
        raise ValueError("counts must be non-negative")
    err = pred - act
    tot_p, tot_a = float(pred.sum()), float(act.sum())
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "msle": float(np.mean((np.log1p(pred) - np.log1p(act)) ** 2)),
        "total_predicted": tot_p,
        "total_actual": tot_a,
        "relative_bias": (tot_p / tot_a - 1.0) if tot_a > 0 else None,
    }


def auc_score(score: Any, positive: Any) -> float | None:
    """ROC AUC from rank statistics (Mann-Whitney U), ties counted as one half.

    Returns ``None`` when one of the classes is empty.
    """
    s = _vec(score, "score")
    y = np.asarray(positive, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Average ranks (1-based; tied scores share the mean of their ranks),
    # computed here: importing scipy.stats for rankdata costs more than the
    # ranking itself.
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], s.size]
    ranks = np.empty(s.size)
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(first) - 1]
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def probability_metrics(p_purchase: Any, bought: Any) -> dict[str, float | None]:
    """Brier score, log-loss (probabilities clipped to ``[1e-15, 1 - 1e-15]``),
    ROC AUC, mean predicted probability and observed rate."""
    p = _vec(p_purchase, "p_purchase")
    y = np.asarray(bought, dtype=bool).ravel()
    if p.shape != y.shape:
        raise ValueError("p_purchase and bought differ in length")
    if p.size == 0:
        raise ValueError("no customers to evaluate")
    if np.any(p < 0) or np.any(p > 1):
        raise ValueError("p_purchase must lie in [0, 1]")
    pc = np.clip(p, _EPS, 1 - _EPS)
    yf = y.astype(np.float64)
    return {
        "brier": float(np.mean((p - yf) ** 2)),
        "log_loss": float(-np.mean(yf * np.log(pc) + (1 - yf) * np.log1p(-pc))),
        "auc": auc_score(p, y),
        "mean_p": float(p.mean()),
        "observed_rate": float(yf.mean()),
    }


def evaluate_timing(
    predicted_counts: Any,
    actual_counts: Any,
    p_purchase: Any,
    bought: Any,
    baselines: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score timing predictions, and optionally baselines, on one holdout.

    Parameters
    ----------
    predicted_counts, actual_counts : array_like
        Expected and observed purchases per customer in the holdout window.
    p_purchase : array_like
        Predicted probability that each customer buys within N days.
    bought : array_like of bool
        Whether each customer did buy within those N days.
    baselines : mapping, optional
        ``name -> counts`` (count metrics only) or
        ``name -> {"counts": ..., "p_purchase": ...}`` as made by
        :func:`naive_baselines`; scored against the same outcomes.

    Returns
    -------
    dict
        ``n_customers``, the keys of :func:`count_metrics` and
        :func:`probability_metrics`, and ``baselines``: ``{name: metrics}``.
    """
    out: dict[str, Any] = {"n_customers": int(np.asarray(actual_counts).size)}
    out.update(count_metrics(predicted_counts, actual_counts))
    out.update(probability_metrics(p_purchase, bought))
    if baselines:
        scored: dict[str, Any] = {}
        for name, base in baselines.items():
            if isinstance(base, Mapping):
                metrics = count_metrics(base["counts"], actual_counts)
                if base.get("p_purchase") is not None:
                    metrics.update(probability_metrics(base["p_purchase"], bought))
            else:
                metrics = count_metrics(base, actual_counts)
            scored[name] = metrics
        out["baselines"] = scored
    return out


def naive_baselines(
    summary: Any, horizon_days: float, p_horizon_days: float | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Two naive predictions to compare a timing model with.

    * ``past_rate``: each customer's own repeat-purchase rate ``x / T``
      (0 when ``T = 0``), extrapolated over the horizon;
    * ``average_rate``: everyone's pooled rate ``sum(x) / sum(T)`` over the
      customers with history.

    Probabilities of buying within ``p_horizon_days`` assume Poisson purchases
    at that rate: ``1 - exp(-rate * p_horizon_days)``.

    Parameters
    ----------
    summary : PurchaseSummary
        Anything with ``x``, ``T`` (days) and ``has_history`` arrays.
    horizon_days : float
        Length of the window the counts are for.
    p_horizon_days : float, optional
        Window of the probabilities (default ``horizon_days``).

    Returns
    -------
    dict
        ``{name: {"counts": array, "p_purchase": array}}``, one entry per
        customer code (0 for customers without history).
    """
    x = np.asarray(summary.x, dtype=np.float64)
    T = np.asarray(summary.T, dtype=np.float64)
    has = np.asarray(summary.has_history, dtype=bool)
    ph = horizon_days if p_horizon_days is None else p_horizon_days
    own = np.zeros_like(x)
    pos = has & (T > 0)
    own[pos] = x[pos] / T[pos]
    t_sum = float(T[has].sum())
    pooled = float(x[has].sum()) / t_sum if t_sum > 0 else 0.0
    avg = np.where(has, pooled, 0.0)
    return {
        name: {"counts": rate * horizon_days, "p_purchase": -np.expm1(-rate * ph)}
        for name, rate in (("past_rate", own), ("average_rate", avg))
    }


def calibration_table(p: Any, outcome: Any, bins: int = 10) -> list[dict[str, float]]:
    """Reliability table: equal-width probability bins, non-empty bins only.

    Returns
    -------
    list of dict
        One row per non-empty bin with ``lower``, ``upper``, ``n``,
        ``mean_predicted`` and ``observed_rate``.
    """
    pv = _vec(p, "p")
    y = np.asarray(outcome, dtype=np.float64).ravel()
    if pv.shape != y.shape:
        raise ValueError("p and outcome differ in length")
    if bins < 1:
        raise ValueError("bins must be >= 1")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, pv, side="right") - 1, 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    sp = np.bincount(idx, weights=pv, minlength=bins)
    sy = np.bincount(idx, weights=y, minlength=bins)
    return [
        {
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "n": int(n[i]),
            "mean_predicted": float(sp[i] / n[i]),
            "observed_rate": float(sy[i] / n[i]),
        }
        for i in range(bins)
        if n[i] > 0
    ]


def calibration_png(table: Sequence[Mapping[str, float]], title: str | None = None) -> bytes:
    """A reliability diagram (PNG bytes) of a :func:`calibration_table`.

    Drawn from the table alone, so it can be made after the predictions are
    gone. Uses matplotlib's Agg canvas directly, without pyplot, so no global
    backend is changed and no display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    mp = [row["mean_predicted"] for row in table]
    ob = [row["observed_rate"] for row in table]
    total = max(1.0, float(sum(row["n"] for row in table)))
    sizes = [max(10.0, 200.0 * row["n"] / total) for row in table]
    ax.plot(mp, ob, color="C0")
    ax.scatter(mp, ob, s=sizes, color="C0", label="bins (area ~ customers)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability of a purchase")
    ax.set_ylabel("observed share who bought")
    ax.set_title(title or "Calibration of P(purchase)")
    ax.legend(loc="upper left")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
