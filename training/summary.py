"""The one-screen summary printed at the end of ``encore train``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from recommender.answers import as_of_date

RANK_COLS = ("ndcg@10", "recall@20", "recall@20_repeat", "recall@20_new", "map@10", "coverage@10")


def _f(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return "-" if v is None else str(v)


SPEND_COLS = ("rmse", "mae", "total_predicted", "total_actual", "relative_bias")


def _spend_table(spend: dict[str, Any] | None, console: Console) -> None:
    """The spend model's fit and how its expected spend did on the judged window."""
    if not spend:
        return
    if "model" not in spend:
        console.print(f"Spend model: not fitted ({spend.get('skipped', '?')})", markup=False)
        return
    fit = spend["model"]
    corr = spend.get("frequency_correlation")
    console.print(
        f"Spend model (Gamma-Gamma) on {fit.get('n_customers', 0):,} repeat buyers: "
        f"p {fit['p']:.3g}, q {fit['q']:.3g}, gamma {fit['gamma']:.4g}, "
        f"log-likelihood {fit.get('log_likelihood', float('nan')):.1f}; "
        f"spend/frequency correlation {_f(corr, 3)}; "
        f"{spend.get('nonpositive_orders', 0):,} repeat orders of value <= 0 left out",
        markup=False,
    )
    if "rmse" not in spend:
        return
    t = Table(
        title=f"Spend per customer over {spend.get('horizon_days', 0):g} days, "
        f"{spend.get('window', '')} ({spend.get('customers', '?')} customers; "
        f"expected purchases of {spend.get('timing_model')} x expected order value)"
    )
    t.add_column("estimator")
    for c in SPEND_COLS:
        t.add_column(c, justify="right")
    rows = [("encore", spend)] + [
        (k, v) for k, v in (spend.get("baselines") or {}).items() if isinstance(v, dict)
    ]
    for name, row in rows:
        t.add_row(name, *(_f(row.get(c), 3 if c == "relative_bias" else 2) for c in SPEND_COLS))
    console.print(t)


def print_summary(result: Any, console: Console) -> None:
    m = result.manifest
    metrics = m.get("metrics", {})
    ranking = metrics.get("ranking")
    if ranking:
        w = metrics.get("ranking_window", {})
        t = Table(
            title=f"Ranking on the held-out window ({w.get('customers', '?')} customers, "
            f"{w.get('start', '?')[:10]} .. {as_of_date(w.get('end')) or '?'})"
        )
        t.add_column("model")
        for c in RANK_COLS:
            t.add_column(c, justify="right")
        served = (metrics.get("serving") or {}).get("list")
        for name, row in ranking.items():
            label = f"{name} (served)" if name == served else name
            t.add_row(label, *(_f(row.get(c)) for c in RANK_COLS))
        console.print(t)
        reason = (metrics.get("serving") or {}).get("reason")
        if reason:
            console.print(f"Served list: {reason}")
    timing = metrics.get("timing")
    if timing:
        t = Table(
            title=f"Next-purchase model over {timing.get('horizon_days', 0):g} days, "
            f"{timing.get('window', '')}; P(buy) within "
            f"{timing.get('p_horizon_days', 0):g} days "
            f"({timing.get('customers', '?')} customers; model {timing.get('model')})"
        )
        cols = (
            "rmse",
            "mae",
            "msle",
            "total_predicted",
            "total_actual",
            "relative_bias",
            "brier",
            "log_loss",
            "auc",
        )
        t.add_column("estimator")
        for c in cols:
            t.add_column(c, justify="right")
        rows = [("encore", timing)] + [
            (k, v) for k, v in (timing.get("baselines") or {}).items() if isinstance(v, dict)
        ]
        for name, row in rows:
            t.add_row(name, *(_f(row.get(c), 3) for c in cols))
        console.print(t)
    _spend_table(metrics.get("spend"), console)
    ba = metrics.get("buy_again")
    if ba and ba.get("customers"):
        t = Table(
            title=f"Buy-again list on repeat items in the window ({ba['customers']} customers)"
        )
        t.add_column("list")
        t.add_column(f"recall@{ba['k']}", justify="right")
        t.add_column(f"ndcg@{ba['k']}", justify="right")
        for name in ("buy_again", "buy_again_due_only", "personal_frequency"):
            row = ba[name]
            t.add_row(name, _f(row[f"recall@{ba['k']}"]), _f(row[f"ndcg@{ba['k']}"]))
        console.print(t)
    d = m.get("data", {})
    v = m.get("validation", {})
    console.print(
        f"Data: {d.get('rows', 0):,} rows kept of {v.get('rows_read', 0):,} read "
        f"({v.get('rows_dropped', 0):,} dropped), {d.get('customers', 0):,} customers, "
        f"{d.get('items', 0):,} items, "
        f"{str(d.get('time_min'))[:10]} .. {str(d.get('time_max'))[:10]}",
        markup=False,
    )
    chosen = m.get("config", {}).get("als_chosen", {})
    if m.get("components", {}).get("als"):
        console.print(
            "ALS: "
            + ", ".join(
                f"{k}={chosen.get(k)}"
                for k in (
                    "factors",
                    "regularization",
                    "alpha",
                    "iterations",
                    "weighting",
                    "half_life_days",
                )
            ),
            markup=False,
        )
    for w in m.get("warnings", []):
        console.print(f"warning: {w}", markup=False)
    verdict = getattr(result, "verdict", None)
    if verdict is not None:
        console.print(
            f"Promotion gate: {verdict.status}"
            + (f" (against {verdict.compared_with})" if verdict.compared_with else ""),
            markup=False,
        )
        for reason in verdict.reasons:
            console.print(f"  - {reason}", markup=False)
    if result.published:
        state = "published as current" + (
            " (forced past the gate)" if verdict and verdict.forced else ""
        )
    elif getattr(result, "held_back", False):
        state = "HELD BACK by the gate (written, not published)"
    else:
        state = "written, NOT published"
    console.print(
        f"Model version {result.version} {state}: {result.path} "
        f"({m.get('timings_s', {}).get('total', 0):.1f}s)",
        markup=False,
    )
