"""Fit and judge the next-purchase-time and buy-it-again models for a training run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.data import IdIndex
from recommender.metrics import ndcg_at_k, recall_at_k
from recommender.repurchase import RepurchaseModel
from recommender.timing import PurchaseTimingModel
from recommender.timing_metrics import evaluate_timing, naive_baselines
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
) -> tuple[PurchaseTimingModel | None, RepurchaseModel | None, dict[str, Any]]:
    """Judge both models on the last window, then fit them on the whole log.

    Returns the fitted models (None where one cannot be fitted, with a
    warning) and the metrics for the manifest.
    """
    horizon = float(cfg.timing_horizon_days or cfg.eval_days)
    end_day = _days(pd.Series([end]))[0]
    cut_day = end_day - horizon
    cust_codes, item_codes = _codes(purchases, customers, items)
    days = _days(purchases["timestamp"])
    n_c, n_i = len(customers), len(items)
    metrics: dict[str, Any] = {}

    timing: PurchaseTimingModel | None = None
    before = days < cut_day
    if before.sum() == 0:
        warn("next-purchase model not evaluated: no purchase before the evaluation window")
    else:
        try:
            evaluated = PurchaseTimingModel(holdout_days=horizon).fit(
                cust_codes[before], days[before], cut_day, n_c
            )
            metrics["timing"] = _judge_timing(evaluated, cust_codes, days, cut_day, horizon)
        except Exception as exc:  # reported, and the final fit decides whether to publish
            warn(f"next-purchase model could not be evaluated: {exc}")
    try:
        timing = PurchaseTimingModel(holdout_days=horizon).fit(cust_codes, days, end_day, n_c)
        metrics["timing_selection"] = timing.selection_
    except Exception as exc:
        warn(f"next-purchase model not published: {exc}")
        timing = None

    repurchase: RepurchaseModel | None = None
    ok_items = item_codes >= 0
    if n_i >= 1:
        try:
            if (before & ok_items).any():
                ev = RepurchaseModel().fit(
                    cust_codes[before & ok_items], item_codes[before & ok_items],
                    days[before & ok_items], cut_day, n_c, n_i,
                )
                metrics["buy_again"] = _judge_buy_again(
                    ev, cust_codes[ok_items], item_codes[ok_items], days[ok_items],
                    cut_day, horizon, n_c, n_i,
                )
            repurchase = RepurchaseModel().fit(
                cust_codes[ok_items], item_codes[ok_items], days[ok_items], end_day, n_c, n_i
            )
            if not np.asarray(repurchase.is_repurchase_item_).any():
                warn("buy-again model: no item is rebought by enough customers; none published")
                repurchase = None
        except Exception as exc:
            warn(f"buy-again model not published: {exc}")
            repurchase = None
    return timing, repurchase, metrics


def _judge_timing(
    model: PurchaseTimingModel,
    cust_codes: np.ndarray,
    days: np.ndarray,
    cut_day: float,
    horizon: float,
) -> dict[str, Any]:
    """Predicted vs actual purchases in ``[cut_day, cut_day + horizon)``."""
    summary = model.summary_
    has = np.asarray(summary.has_history) if hasattr(summary, "has_history") else None
    rows = np.flatnonzero(has) if has is not None else np.arange(len(summary.x))
    window = (days >= cut_day) & (days < cut_day + horizon)
    # same-day purchases are one transaction, as in the model
    pairs = np.unique(
        np.stack([cust_codes[window], np.floor(days[window])], axis=1), axis=0
    )
    actual_all = np.bincount(pairs[:, 0].astype(np.int64), minlength=len(summary.x))
    actual = actual_all[rows].astype(np.float64)
    pred = model.predict(horizon, rows)
    baselines = naive_baselines(summary, horizon)
    baselines = {k: np.asarray(v)[rows] for k, v in baselines.items()}
    out = evaluate_timing(
        pred["expected_purchases"], actual, pred["p_purchase"], actual > 0, baselines=baselines
    )
    out["horizon_days"] = horizon
    out["customers"] = int(len(rows))
    out["model"] = model.selection_.get("chosen") if isinstance(model.selection_, dict) else None
    return out


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
    scores = model.score_customers(rows, horizon).tocsr()
    ranked_model = _top_from_sparse(scores, k)
    # personal frequency: own most-bought items, ties by recency of nothing (stable)
    ranked_pf = _top_from_sparse(hist[rows], k)
    rel = repeat[rows]
    out = {"customers": int(rows.size), "k": k}
    for name, ranked in (("buy_again", ranked_model), ("personal_frequency", ranked_pf)):
        out[name] = {
            f"recall@{k}": float(np.nanmean(recall_at_k(ranked, rel, k))),
            f"ndcg@{k}": float(np.nanmean(ndcg_at_k(ranked, rel, k))),
        }
    return out


def _top_from_sparse(m: sp.csr_matrix, k: int) -> np.ndarray:
    out = np.full((m.shape[0], k), -1, dtype=np.int64)
    for r in range(m.shape[0]):
        lo, hi = m.indptr[r], m.indptr[r + 1]
        idx, val = m.indices[lo:hi], m.data[lo:hi]
        order = np.argsort(-val, kind="stable")[:k]
        out[r, : len(order)] = idx[order]
    return out
