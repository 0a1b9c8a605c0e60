"""Fit and judge the next-purchase-time and buy-it-again models for a training run."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.data.sampling import seeded_mask, seeded_subset
from recommender.ranking.metrics import ndcg_at_k, recall_at_k
from recommender.timing.metrics import (
    calibration_png,
    calibration_table,
    evaluate_timing,
    naive_baselines,
)
from recommender.timing.repurchase import RepurchaseModel
from recommender.timing.selection import PurchaseTimingModel
from recommender.value.evaluation import evaluate_spend, spend_baselines
from recommender.value.health import ShopHealth, shop_health
from recommender.value.spend import (
    GammaGammaModel,
    SpendSummary,
    spend_frequency_correlation,
    summarize_spend,
)
from training.config import TrainConfig

#: Above this |correlation| of repeat orders and order value the spend model's
#: independence assumption is called weak.
SPEND_CORRELATION_WARN = 0.3


def _days(ts: pd.Series) -> np.ndarray:
    return np.asarray(ts, dtype="datetime64[s]").astype(np.int64) / 86400.0


def _line_values(frame: pd.DataFrame) -> np.ndarray | None:
    """Each line's value (quantity x unit price; NaN where the price is
    missing), or None when the log has no prices at all."""
    if "price" not in frame.columns:
        return None
    price = frame["price"].to_numpy(dtype=np.float64)
    if not np.isfinite(price).any():
        return None
    if "quantity" not in frame.columns:
        return price
    return frame["quantity"].to_numpy(dtype=np.float64) * price


def _codes(
    purchases: pd.DataFrame, customers: IdIndex, items: IdIndex
) -> tuple[np.ndarray, np.ndarray]:
    if "crow" in purchases.columns and "irow" in purchases.columns:
        return purchases["crow"].to_numpy(), purchases["irow"].to_numpy()
    return (
        customers.rows(purchases["customer_id"].to_numpy()),
        items.rows(purchases["item_id"].to_numpy()),
    )


@dataclass(frozen=True, eq=False)
class PurchaseArrays:
    """Purchases as parallel arrays on the run's indexes (an item row is -1
    for an item left out of the index)."""

    customer: np.ndarray
    item: np.ndarray
    day: np.ndarray
    """Float days since the Unix epoch."""
    value: np.ndarray | None = None
    """Each line's value (NaN where its price is missing); None without prices."""

    def where(self, mask: np.ndarray) -> PurchaseArrays:
        value = self.value[mask] if self.value is not None else None
        return PurchaseArrays(self.customer[mask], self.item[mask], self.day[mask], value)


@dataclass(frozen=True, eq=False)
class TimingTask:
    """What both models are fitted on and judged against."""

    history: PurchaseArrays
    n_customers: int
    n_items: int
    first_day: float
    end_day: float
    """The models are fitted as of this day (midnight after the log, or ``--as-of``)."""
    cut_day: float
    """Judged on purchases in ``[cut_day, cut_day + horizon)``."""
    horizon: float
    p_horizon: float
    """Probabilities are judged on buying within this many days."""
    window_kind: str
    future: PurchaseArrays | None
    """Purchases of known customers after ``--as-of`` (a backtest of the
    published models); None: judged on the last window of the log instead."""
    cfg: TrainConfig

    @property
    def judged_on(self) -> PurchaseArrays:
        return self.future if self.future is not None else self.history


Warn = Callable[[str], None]


class FittedTiming(NamedTuple):
    """What the timing step built: the models (None where not fitted), the
    metrics for the manifest, and the shop's health."""

    timing: PurchaseTimingModel | None
    repurchase: RepurchaseModel | None
    metrics: dict[str, Any]
    spend: GammaGammaModel | None = None
    spend_summary: SpendSummary | None = None
    """Each customer's repeat orders and mean order value as of the end (the
    spend model's inputs, aligned with the customer index)."""
    health: ShopHealth | None = None


def fit_timing_models(
    purchases: pd.DataFrame,
    customers: IdIndex,
    items: IdIndex,
    end: pd.Timestamp,
    cfg: TrainConfig,
    *,
    warn: Warn,
    future: pd.DataFrame | None = None,
) -> FittedTiming:
    """Fit both models (and the spend model, when the log has prices) as of
    ``end`` and judge them on data they did not see; measure the shop's health.

    With ``future`` (rows after ``--as-of``) the published models themselves
    are judged on what happened next (a backtest); otherwise copies fitted
    before the last window are judged on that window. Returns the models (None
    where one cannot be fitted, with a warning) and metrics for the manifest.
    """
    task = timing_task(purchases, customers, items, end, cfg, future)
    # The models share nothing but the input arrays, and their costly parts
    # (special functions, sorts, bincounts) run in numpy and scipy without the
    # GIL: the buy-again model, then the shop's health, are computed on a
    # second thread while this one fits the next-purchase and spend models.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encore-timing-buy-again") as pool:
        buy_again = pool.submit(fit_buy_again, task, warn)
        health = pool.submit(measure_health, task, warn)
        timing, judged, timing_metrics = fit_next_purchase(task, warn)
        spend, summary, spend_metrics = fit_spend(task, judged, warn)
        repurchase, repurchase_metrics = buy_again.result()
        shop = health.result()
    return FittedTiming(
        timing,
        repurchase,
        {**timing_metrics, **repurchase_metrics, **spend_metrics},
        spend,
        summary,
        shop,
    )


def timing_task(
    purchases: pd.DataFrame,
    customers: IdIndex,
    items: IdIndex,
    end: pd.Timestamp,
    cfg: TrainConfig,
    future: pd.DataFrame | None,
) -> TimingTask:
    """The purchases as arrays and the window the models are judged on: the
    rows after ``--as-of`` when there are any, else the log's last window."""
    cust_codes, item_codes = _codes(purchases, customers, items)
    history = PurchaseArrays(
        cust_codes, item_codes, _days(purchases["timestamp"]), _line_values(purchases)
    )
    end_day = _days(pd.Series([end]))[0]
    ahead = _known_future(future, customers, items)
    if ahead is not None:
        # through the last day with data after --as-of, inclusive
        horizon = float(
            cfg.timing_horizon_days or min(np.floor(ahead.day.max() - end_day) + 1, 365.0)
        )
        cut_day = end_day
        kind = "after --as-of (backtest of the published model)"
    else:
        horizon = float(cfg.timing_horizon_days or cfg.eval_days)
        cut_day = end_day - horizon
        kind = "last window of the log (model refitted without it)"
    return TimingTask(
        history=history,
        n_customers=len(customers),
        n_items=len(items),
        first_day=float(history.day.min()),
        end_day=end_day,
        cut_day=cut_day,
        horizon=horizon,
        p_horizon=float(cfg.timing_p_horizon_days or horizon),
        window_kind=kind,
        future=ahead,
        cfg=cfg,
    )


def _known_future(
    future: pd.DataFrame | None, customers: IdIndex, items: IdIndex
) -> PurchaseArrays | None:
    """Rows after ``--as-of`` of customers in the index, or None when there are none."""
    if future is None or not len(future):
        return None
    rows = PurchaseArrays(
        customers.rows(future["customer_id"].to_numpy()),
        items.rows(future["item_id"].to_numpy()),
        _days(future["timestamp"]),
        _line_values(future),
    )
    rows = rows.where(rows.customer >= 0)
    return rows if rows.day.size else None


# ------------------------------------------------------------- next-purchase model


def fit_next_purchase(
    task: TimingTask, warn: Warn
) -> tuple[PurchaseTimingModel | None, PurchaseTimingModel | None, dict[str, Any]]:
    """The published next-purchase model, the copy judged on the window (the
    published one in a backtest; None when none could be judged) and their
    metrics (selection, judged window)."""
    out: dict[str, Any] = {}
    evaluated: PurchaseTimingModel | None = None
    # The timing models see one row per customer and purchase day, sorted:
    # deduplicated once here instead of in every fit.
    tc, td = _customer_days(task.history.customer, task.history.day)
    timing: PurchaseTimingModel | None = None
    try:
        timing = _timing_candidates(task, task.end_day).fit(tc, td, task.end_day, task.n_customers)
        out["timing_selection"] = timing.selection_
    except Exception as exc:
        warn(f"next-purchase model not published: {exc}")
    try:
        evaluated = _timing_to_judge(task, timing, tc, td, warn)
        if evaluated is not None:
            judged_on = task.judged_on
            judged = _judge_timing(
                evaluated,
                judged_on.customer,
                judged_on.day,
                task.cut_day,
                task.horizon,
                task.p_horizon,
            )
            judged["window"] = task.window_kind
            out["timing"] = judged
    except Exception as exc:  # reported; publishing depends on the final fit only
        warn(f"next-purchase model could not be evaluated: {exc}")
        evaluated = None
    return timing, evaluated, out


def _timing_candidates(task: TimingTask, as_of_day: float) -> PurchaseTimingModel:
    """A model that chooses among the candidates on a holdout no longer than a
    third of the history."""
    horizon = float(task.cfg.timing_horizon_days or task.cfg.eval_days)
    holdout = min(horizon, (as_of_day - task.first_day) / 3.0)
    return PurchaseTimingModel(holdout_days=holdout if holdout >= 7 else None)


def _timing_to_judge(
    task: TimingTask,
    timing: PurchaseTimingModel | None,
    tc: np.ndarray,
    td: np.ndarray,
    warn: Warn,
) -> PurchaseTimingModel | None:
    """The model to judge: the published one in a backtest, else the published
    choice of model refitted without the window (the selection among the
    candidates itself already used a held-out window)."""
    if task.future is not None:
        return timing
    before = td < task.cut_day
    if not before.any():
        warn("next-purchase model not evaluated: no purchase before the evaluation window")
        return None
    chosen = (timing.model_name_,) if timing is not None else None
    evaluated = timing.calibration_model() if timing is not None else None
    if evaluated is None or evaluated.as_of_day_ != task.cut_day:
        # the selection's calibration fit ended elsewhere: refit
        fresh = (
            PurchaseTimingModel(candidates=chosen)
            if chosen
            else _timing_candidates(task, task.cut_day)
        )
        evaluated = fresh.fit(tc[before], td[before], task.cut_day, task.n_customers)
    return evaluated


# ---------------------------------------------------------------------- spend model


def fit_spend(
    task: TimingTask, judged_timing: PurchaseTimingModel | None, warn: Warn
) -> tuple[GammaGammaModel | None, SpendSummary | None, dict[str, Any]]:
    """The published spend model (Gamma-Gamma, on each customer's repeat
    orders as of the end), the summary it reads, and its metrics.

    Judged like the next-purchase model, on its window: predicted spend is the
    judged timing copy's expected purchases in the window times the expected
    order value of a spend model fitted before the window (the published one
    in a backtest), against :func:`~recommender.value.evaluation.spend_baselines`.
    Without prices nothing is fitted and ``metrics["spend"]`` says why.
    """
    h = task.history
    if h.value is None:
        return None, None, {"spend": {"skipped": "the log has no prices"}}
    summary = summarize_spend(h.customer, h.day, h.value, task.n_customers)
    corr = spend_frequency_correlation(summary)
    out: dict[str, Any] = {
        "repeat_buyers": int((summary.frequency > 0).sum()),
        "nonpositive_orders": summary.nonpositive_orders,
        "frequency_correlation": corr,
    }
    if summary.nonpositive_orders:
        warn(
            f"spend model: {summary.nonpositive_orders:,} repeat order(s) of value 0 or "
            "less (free items, refunds) left out"
        )
    if corr is not None and abs(corr) > SPEND_CORRELATION_WARN:
        warn(
            f"order value depends on frequency here (correlation {corr:.2f}); "
            "the spend model's independence assumption is weak"
        )
    try:
        model = _fit_gamma_gamma(summary, task.cfg)
    except Exception as exc:
        warn(f"spend model not published: {exc}")
        return None, None, {"spend": {**out, "skipped": str(exc)}}
    out["model"] = model.to_state()
    try:
        judged = _judge_spend(task, judged_timing, model, summary)
        if judged is not None:
            out.update(judged)
    except Exception as exc:  # reported; publishing depends on the final fit only
        warn(f"spend model could not be evaluated: {exc}")
    return model, summary, {"spend": out}


def _fit_gamma_gamma(summary: SpendSummary, cfg: TrainConfig) -> GammaGammaModel:
    """The spend model fitted on a seeded sample of at most
    ``cfg.max_spend_fit_customers`` repeat buyers (all of them in most shops)."""
    buyers = np.flatnonzero(summary.frequency > 0)
    use = seeded_subset(buyers, cfg.max_spend_fit_customers, cfg.seed)
    return GammaGammaModel().fit(summary.frequency[use], summary.monetary[use])


def _judge_spend(
    task: TimingTask,
    judged_timing: PurchaseTimingModel | None,
    published: GammaGammaModel,
    summary: SpendSummary,
    max_customers: int | None = 100_000,
) -> dict[str, Any] | None:
    """Predicted vs actual spend per customer in ``[cut_day, cut_day + horizon)``."""
    if judged_timing is None:
        return None
    h = task.history
    assert h.value is not None
    if task.future is None:
        before = h.where(h.day < task.cut_day)
        assert before.value is not None
        summary = summarize_spend(before.customer, before.day, before.value, task.n_customers)
        model = _fit_gamma_gamma(summary, task.cfg)
    else:
        model = published
    on = task.judged_on
    if on.value is None:
        return None
    timing_summary = judged_timing.summary_
    rows = seeded_subset(np.flatnonzero(np.asarray(timing_summary.has_history)), max_customers)
    window = (on.day >= task.cut_day) & (on.day < task.cut_day + task.horizon)
    value = np.where(np.isfinite(on.value), on.value, 0.0)
    actual = np.bincount(on.customer[window], weights=value[window], minlength=task.n_customers)[
        rows
    ]
    order_value = model.expected_order_value(summary.frequency[rows], summary.monetary[rows])
    predicted = judged_timing.predict(task.horizon, rows)["expected_purchases"] * order_value
    naive = spend_baselines(summary, timing_summary.T, timing_summary.has_history, task.horizon)
    out = {
        **evaluate_spend(predicted, actual),
        "baselines": {k: evaluate_spend(v[rows], actual) for k, v in naive.items()},
        "horizon_days": task.horizon,
        "window": task.window_kind,
        "customers": int(len(rows)),
        "timing_model": judged_timing.model_name_,
    }
    if model is not published:
        out["fit_before_window"] = model.to_state()
    return out


def measure_health(task: TimingTask, warn: Warn) -> ShopHealth | None:
    """The monthly repeat-purchase measures and cohort retention of the log
    (None, with a warning, if they cannot be measured: they are reported, and
    the models are published without them)."""
    h = task.history
    try:
        return shop_health(h.customer, h.day, h.value)
    except Exception as exc:
        warn(f"shop health not measured: {type(exc).__name__}: {exc}")
        return None


# ------------------------------------------------------------------ buy-again model


def fit_buy_again(task: TimingTask, warn: Warn) -> tuple[RepurchaseModel | None, dict[str, Any]]:
    """The published buy-again model (None with fewer than two items, or when
    no item is rebought) and its judged metrics."""
    out: dict[str, Any] = {}
    if task.n_items < 2:
        return None, out
    known = task.history.where(task.history.item >= 0)
    repurchase = _fit_published_buy_again(task, known, warn)
    try:
        if task.future is not None and repurchase is not None:
            out["buy_again"] = _backtest_buy_again(task, known, repurchase)
        elif task.future is None and (known.day < task.cut_day).any():
            out["buy_again"] = _judge_refitted_buy_again(task, known)
    except Exception as exc:
        warn(f"buy-again model could not be evaluated: {exc}")
    return repurchase, out


def _fit_published_buy_again(
    task: TimingTask, known: PurchaseArrays, warn: Warn
) -> RepurchaseModel | None:
    try:
        repurchase = RepurchaseModel(min_customer_purchases=1).fit(
            known.customer, known.item, known.day, task.end_day, task.n_customers, task.n_items
        )
        if not np.asarray(repurchase.is_repurchase_item_).any():
            warn("buy-again model: no item is rebought by enough customers; none published")
            return None
    except Exception as exc:
        warn(f"buy-again model not published: {exc}")
        return None
    return repurchase


def _backtest_buy_again(
    task: TimingTask, known: PurchaseArrays, repurchase: RepurchaseModel
) -> dict[str, Any]:
    """The published model judged on the known items bought after ``--as-of``."""
    assert task.future is not None
    ahead = task.future.where(task.future.item >= 0)
    return _judge_buy_again(
        repurchase,
        np.concatenate([known.customer, ahead.customer]),
        np.concatenate([known.item, ahead.item]),
        np.concatenate([known.day, ahead.day]),
        task.cut_day,
        task.horizon,
        task.n_customers,
        task.n_items,
        max_customers=task.cfg.max_eval_customers,
    )


def _judge_refitted_buy_again(task: TimingTask, known: PurchaseArrays) -> dict[str, Any]:
    """A copy refitted before the window on a seeded sample of the customers
    who bought before it, judged on the window.

    The item-level estimates need no more customers than that (the published
    fit draws its priors from as many), and the judge sees at most
    ``max_eval_customers``.
    """
    cfg, n_c = task.cfg, task.n_customers
    before = known.day < task.cut_day
    bought_before = np.flatnonzero(np.bincount(known.customer[before], minlength=n_c))
    sample = seeded_mask(bought_before, n_c, cfg.max_buy_again_eval_fit_customers, cfg.seed)
    use = sample[known.customer]
    fit = known.where(before & use)
    copy = RepurchaseModel(min_customer_purchases=1).fit(
        fit.customer, fit.item, fit.day, task.cut_day, n_c, task.n_items
    )
    judged_on = known.where(use)
    out = _judge_buy_again(
        copy,
        judged_on.customer,
        judged_on.item,
        judged_on.day,
        task.cut_day,
        task.horizon,
        n_c,
        task.n_items,
        max_customers=cfg.max_eval_customers,
    )
    out["fit_customers"] = int(sample.sum())
    return out


def _customer_days(cust: np.ndarray, days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (customer, whole day) pairs sorted by customer then day.

    Days come back as mid-day (``floor + 0.5``): the models floor them again,
    and a cut at midnight (``day < cut``, ``day <= cut``) puts each purchase
    day on the same side as its purchases.
    """
    if cust.size == 0:
        return cust.astype(np.int64), days.astype(np.float64)
    whole = np.floor(days).astype(np.int64)
    d0 = int(whole.min())
    span = int(whole.max()) - d0 + 1
    key = np.sort(cust.astype(np.int64) * span + (whole - d0))
    key = key[np.r_[True, key[1:] != key[:-1]]]
    c, d = np.divmod(key, span)
    return c, (d + d0).astype(np.float64) + 0.5


def _judge_timing(
    model: PurchaseTimingModel,
    cust_codes: np.ndarray,
    days: np.ndarray,
    cut_day: float,
    horizon: float,
    p_horizon: float,
    max_customers: int | None = 100_000,
) -> dict[str, Any]:
    """Predicted vs actual purchases in ``[cut_day, cut_day + horizon)``.

    Probabilities are judged on buying within ``p_horizon`` days.
    """
    summary = model.summary_
    rows = np.flatnonzero(np.asarray(summary.has_history))
    n = summary.n_customers
    rows = seeded_subset(rows, max_customers)  # totals and rates judged on a sample

    def counts(h: float) -> np.ndarray:
        window = (days >= cut_day) & (days < cut_day + h)
        # same-day purchases are one transaction, as in the model
        buyers, _ = _customer_days(cust_codes[window], days[window])
        return np.bincount(buyers, minlength=n)[rows].astype(np.float64)

    actual = counts(horizon)
    bought = counts(p_horizon) > 0
    pred = model.predict(horizon, rows)
    p = model.predict(p_horizon, rows)["p_purchase"]
    baselines = naive_baselines(summary, horizon, p_horizon)
    baselines = {
        name: {key: np.asarray(arr)[rows] for key, arr in base.items()}
        for name, base in baselines.items()
    }
    out = evaluate_timing(pred["expected_purchases"], actual, p, bought, baselines=baselines)
    out["calibration"] = calibration_table(p, bought)
    out["horizon_days"] = horizon
    out["p_horizon_days"] = p_horizon
    out["customers"] = int(len(rows))
    out["model"] = model.model_name_
    return out


def calibration_report(judged: dict[str, Any]) -> bytes:
    """The reliability diagram (PNG) of a judged next-purchase model
    (``metrics["timing"]``), drawn from its calibration table."""
    return calibration_png(
        judged["calibration"],
        title=f"P(buy within {judged['p_horizon_days']:g} days): predicted vs observed",
    )


def _judge_buy_again(
    model: RepurchaseModel,
    cust_codes: np.ndarray,
    item_codes: np.ndarray,
    days: np.ndarray,
    cut_day: float,
    horizon: float,
    n_c: int,
    n_i: int,
    k: int = 10,
    max_customers: int | None = None,
) -> dict[str, Any]:
    """Buy-again list vs personal frequency on repeat items bought in the window."""
    before = days < cut_day
    window = (days >= cut_day) & (days < cut_day + horizon)
    hist = sp.csr_matrix(
        (np.ones(before.sum()), (cust_codes[before], item_codes[before])), shape=(n_c, n_i)
    )
    hist.sum_duplicates()
    bought = sp.csr_matrix(
        (np.ones(window.sum()), (cust_codes[window], item_codes[window])), shape=(n_c, n_i)
    )
    bought.sum_duplicates()
    bought.data[:] = 1.0
    seen = hist.copy()
    seen.data[:] = 1.0
    repeat = bought.multiply(seen).tocsr()
    repeat.eliminate_zeros()
    rows = np.flatnonzero(np.diff(repeat.indptr) > 0)
    if rows.size == 0:
        return {"customers": 0}
    rows = seeded_subset(rows, max_customers)  # as for the ranking evaluation
    scores = model.score_customers(rows, horizon).tocsr()
    ranked_only = _top_from_sparse(scores, k)
    # The list a shop shows: items due by probability, then the rest of the
    # customer's history by how often they bought it.
    h = hist[rows].tocsr().astype(np.float64)
    h.data = h.data / (h.data.max(initial=0.0) + 1.0) * 1e-3
    ranked_model = _top_from_sparse((scores + h).tocsr(), k)
    # personal frequency: own most-bought items, ties by recency of nothing (stable)
    ranked_pf = _top_from_sparse(hist[rows], k)
    rel = repeat[rows]
    out: dict[str, Any] = {"customers": int(rows.size), "k": k}
    for name, ranked in (
        ("buy_again", ranked_model),
        ("buy_again_due_only", ranked_only),
        ("personal_frequency", ranked_pf),
    ):
        out[name] = {
            f"recall@{k}": float(np.nanmean(recall_at_k(ranked, rel, k))),
            f"ndcg@{k}": float(np.nanmean(ndcg_at_k(ranked, rel, k))),
        }
    return out


def _top_from_sparse(m: sp.csr_matrix, k: int) -> np.ndarray:
    """Each row's ``k`` largest stored entries as columns (``-1`` pads), ties
    in stored order."""
    row = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((np.arange(m.nnz), -m.data, row))
    rank = np.arange(m.nnz) - m.indptr[row]
    keep = rank < k
    out = np.full((m.shape[0], k), -1, dtype=np.int64)
    out[row[keep], rank[keep]] = m.indices[order][keep]
    return out
