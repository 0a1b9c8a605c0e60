"""Fit and judge the next-purchase-time and buy-it-again models for a training run."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
from training.config import TrainConfig


def _days(ts: pd.Series) -> np.ndarray:
    return np.asarray(ts, dtype="datetime64[s]").astype(np.int64) / 86400.0


def _codes(
    purchases: pd.DataFrame, customers: IdIndex, items: IdIndex
) -> tuple[np.ndarray, np.ndarray]:
    if "crow" in purchases.columns and "irow" in purchases.columns:
        return purchases["crow"].to_numpy(), purchases["irow"].to_numpy()
    return (
        customers.rows(purchases["customer_id"].to_numpy()),
        items.rows(purchases["item_id"].to_numpy()),
    )


def fit_timing_models(
    purchases: pd.DataFrame,
    customers: IdIndex,
    items: IdIndex,
    end: pd.Timestamp,
    cfg: TrainConfig,
    *,
    warn: Callable[[str], None],
    future: pd.DataFrame | None = None,
) -> tuple[PurchaseTimingModel | None, RepurchaseModel | None, dict[str, Any]]:
    """Fit both models as of ``end`` and judge them on data they did not see.

    With ``future`` (rows after ``--as-of``) the published models themselves
    are judged on what happened next (a backtest); otherwise copies fitted
    before the last window are judged on that window. Returns the models (None
    where one cannot be fitted, with a warning) and metrics for the manifest.
    """
    horizon = float(cfg.timing_horizon_days or cfg.eval_days)
    end_day = _days(pd.Series([end]))[0]
    cust_codes, item_codes = _codes(purchases, customers, items)
    days = _days(purchases["timestamp"])
    n_c, n_i = len(customers), len(items)
    metrics: dict[str, Any] = {}
    first_day = float(days.min())

    def make_timing(as_of_day: float) -> PurchaseTimingModel:
        # choose among the candidates on a holdout no longer than a third of the history
        holdout = min(horizon, (as_of_day - first_day) / 3.0)
        return PurchaseTimingModel(holdout_days=holdout if holdout >= 7 else None)

    fut_c = fut_i = fut_days = None
    if future is not None and len(future):
        fut_c = customers.rows(future["customer_id"].to_numpy())
        fut_i = items.rows(future["item_id"].to_numpy())
        fut_days = _days(future["timestamp"])
        known = fut_c >= 0
        fut_c, fut_i, fut_days = fut_c[known], fut_i[known], fut_days[known]
        if fut_days.size == 0:
            fut_c = None
    if fut_c is not None:
        assert fut_days is not None and fut_i is not None
        # through the last day with data after --as-of, inclusive
        eval_h = float(
            cfg.timing_horizon_days or min(np.floor(fut_days.max() - end_day) + 1, 365.0)
        )
        eval_cut = end_day
        ev_c, ev_days = fut_c, fut_days
        window_kind = "after --as-of (backtest of the published model)"
    else:
        eval_h = horizon
        eval_cut = end_day - horizon
        ev_c, ev_days = cust_codes, days
        window_kind = "last window of the log (model refitted without it)"
    p_h = float(cfg.timing_p_horizon_days or eval_h)

    def timing_part() -> tuple[PurchaseTimingModel | None, dict[str, Any]]:
        out: dict[str, Any] = {}
        # The timing models see one row per customer and purchase day, sorted:
        # deduplicated once here instead of in every fit.
        tc, td = _customer_days(cust_codes, days)
        timing: PurchaseTimingModel | None = None
        try:
            timing = make_timing(end_day).fit(tc, td, end_day, n_c)
            out["timing_selection"] = timing.selection_
        except Exception as exc:
            warn(f"next-purchase model not published: {exc}")

        t_before = td < eval_cut
        try:
            if fut_c is not None:
                evaluated = timing
            elif not t_before.any():
                evaluated = None
                warn("next-purchase model not evaluated: no purchase before the evaluation window")
            else:
                # Judge the published choice of model, refitted without the window (the
                # selection among candidates itself already used a held-out window).
                chosen = (timing.model_name_,) if timing is not None else None
                evaluated = timing.calibration_model() if timing is not None else None
                if evaluated is None or evaluated.as_of_day_ != eval_cut:
                    # the selection's calibration fit ended elsewhere: refit
                    evaluated = (
                        PurchaseTimingModel(candidates=chosen) if chosen else make_timing(eval_cut)
                    ).fit(tc[t_before], td[t_before], eval_cut, n_c)
            if evaluated is not None:
                judged = _judge_timing(evaluated, ev_c, ev_days, eval_cut, eval_h, p_h)
                judged["window"] = window_kind
                out["timing"] = judged
        except Exception as exc:  # reported; publishing depends on the final fit only
            warn(f"next-purchase model could not be evaluated: {exc}")

        return timing, out

    def repurchase_part() -> tuple[RepurchaseModel | None, dict[str, Any]]:
        out: dict[str, Any] = {}
        before = days < eval_cut
        repurchase: RepurchaseModel | None = None
        ok = item_codes >= 0
        if n_i >= 2:
            try:
                repurchase = RepurchaseModel(min_customer_purchases=1).fit(
                    cust_codes[ok], item_codes[ok], days[ok], end_day, n_c, n_i
                )
                if not np.asarray(repurchase.is_repurchase_item_).any():
                    warn("buy-again model: no item is rebought by enough customers; none published")
                    repurchase = None
            except Exception as exc:
                warn(f"buy-again model not published: {exc}")
                repurchase = None
            try:
                if fut_c is not None and repurchase is not None:
                    assert fut_i is not None and fut_days is not None
                    hist_c, hist_i, hist_d = cust_codes[ok], item_codes[ok], days[ok]
                    out["buy_again"] = _judge_buy_again(
                        repurchase,
                        np.concatenate([hist_c, fut_c[fut_i >= 0]]),
                        np.concatenate([hist_i, fut_i[fut_i >= 0]]),
                        np.concatenate([hist_d, fut_days[fut_i >= 0]]),
                        eval_cut,
                        eval_h,
                        n_c,
                        n_i,
                        max_customers=cfg.max_eval_customers,
                    )
                elif fut_c is None and (before & ok).any():
                    # Refitted and judged on a seeded sample of the customers
                    # who bought before the window: the item-level estimates
                    # need no more (the published fit draws its priors from
                    # as many), and the judge sees at most max_eval_customers.
                    bought_before = np.flatnonzero(
                        np.bincount(cust_codes[before & ok], minlength=n_c)
                    )
                    sample = seeded_mask(
                        bought_before, n_c, cfg.max_buy_again_eval_fit_customers, cfg.seed
                    )
                    use = ok & sample[cust_codes]
                    fit_rows = before & use
                    ev = RepurchaseModel(min_customer_purchases=1).fit(
                        cust_codes[fit_rows],
                        item_codes[fit_rows],
                        days[fit_rows],
                        eval_cut,
                        n_c,
                        n_i,
                    )
                    out["buy_again"] = _judge_buy_again(
                        ev,
                        cust_codes[use],
                        item_codes[use],
                        days[use],
                        eval_cut,
                        eval_h,
                        n_c,
                        n_i,
                        max_customers=cfg.max_eval_customers,
                    )
                    out["buy_again"]["fit_customers"] = int(sample.sum())
            except Exception as exc:
                warn(f"buy-again model could not be evaluated: {exc}")
        return repurchase, out

    # The two models share nothing but the input arrays, and their costly
    # parts (special functions, sorts, bincounts) run in numpy and scipy
    # without the GIL: fitting them side by side uses both cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        timing_job = pool.submit(timing_part)
        repurchase_job = pool.submit(repurchase_part)
        timing, timing_metrics = timing_job.result()
        repurchase, repurchase_metrics = repurchase_job.result()
    metrics.update(timing_metrics)
    metrics.update(repurchase_metrics)
    return timing, repurchase, metrics


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
