"""Fitting and judging ranking models on a time split."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.data.interactions import apply_weighting, build_matrix, rows_in_time_range
from recommender.data.sampling import seeded_subset
from recommender.data.transactions import PURCHASE_EVENTS
from recommender.ranking.als import ALSRecommender
from recommender.ranking.base import Recommender
from recommender.ranking.baselines import (
    ItemKNNRecommender,
    PersonalFrequencyRecommender,
    PopularityRecommender,
)
from recommender.ranking.metrics import evaluate_recommender
from recommender.ranking.repeat_baselines import Baskets, PTopFreqRecommender, TIFUKNNRecommender
from training.config import ALSConfig

K_NDCG, K_RECALL, K_MAP = 10, 20, 10
#: Each ranking thread holds a block of dense scores (about 64 MB).
MAX_EVAL_WORKERS = 4


def ranking_workers() -> int:
    """Threads that rank customers side by side: one per core, at most
    :data:`MAX_EVAL_WORKERS` (see :meth:`Recommender.recommend`)."""
    return min(os.cpu_count() or 1, MAX_EVAL_WORKERS)


@dataclass
class Split:
    """Training history and the purchases of the window after it, on shared indexes."""

    train: pd.DataFrame
    counts: sp.csr_matrix
    relevant: sp.csr_matrix
    users: np.ndarray
    cutoff: pd.Timestamp
    item_knn: ItemKNNRecommender | None = None
    """The item-kNN baseline fitted on ``counts`` (by :func:`evaluate_baselines`),
    kept for the two-stage ranker's stage at the cutoff."""

    @property
    def n_users(self) -> int:
        return int(len(self.users))


def make_split(
    frame: pd.DataFrame,
    purchases: pd.DataFrame,
    customers: IdIndex,
    items: IdIndex,
    cutoff: pd.Timestamp,
    end: pd.Timestamp,
    *,
    max_users: int | None = None,
    seed: int = 0,
    total: sp.csr_matrix | None = None,
) -> Split:
    """History before ``cutoff``; relevant = purchases in ``[cutoff, end)``.

    Evaluated customers are those with history and at least one purchase in the
    window: a cold customer has nothing for a personal model to work from, and
    is served by popularity whatever the model.

    ``total``, when given, is the summed row weights of the whole ``frame``
    and every row of ``frame`` is a purchase of weight 1 (a log of orders
    alone). When the window reaches past the last row, the history is then
    ``total`` minus the window, which saves building it from millions of rows.
    """
    train = rows_in_time_range(frame, None, cutoff)
    window = rows_in_time_range(purchases, cutoff, end)
    relevant = build_matrix(window.assign(weight=1.0), customers, items)
    if total is not None and (len(frame) == 0 or frame["timestamp"].max() < end):
        # exact: both hold whole counts of the same rows (float32 is exact to 2**24)
        counts = (total - relevant).tocsr()
        counts.eliminate_zeros()
    else:
        counts = build_matrix(train, customers, items)
    has_hist = np.diff(counts.indptr) > 0
    has_rel = np.diff(relevant.indptr) > 0
    users = np.flatnonzero(has_hist & has_rel)
    users = seeded_subset(users, max_users, seed)
    return Split(train=train, counts=counts, relevant=relevant, users=users, cutoff=cutoff)


def weighted_matrix(
    split_train: pd.DataFrame,
    customers: IdIndex,
    items: IdIndex,
    cfg: ALSConfig,
    now: pd.Timestamp,
    counts: sp.csr_matrix | None = None,
) -> sp.csr_matrix:
    """The matrix ALS is fitted on: ``counts`` (the summed row weights of
    ``split_train``, when already built) or a recency-decayed sum, re-weighted."""
    if counts is None or cfg.half_life_days is not None:
        counts = build_matrix(
            split_train, customers, items, half_life_days=cfg.half_life_days, now=now
        )
    return apply_weighting(counts, cfg.weighting)


def fit_als(matrix: sp.csr_matrix, cfg: ALSConfig, seed: int, **kw: Any) -> ALSRecommender:
    model = ALSRecommender(
        factors=cfg.factors,
        regularization=cfg.regularization,
        alpha=cfg.alpha,
        iterations=cfg.iterations,
        random_state=seed,
    )
    return model.fit(matrix, **kw)


def evaluate(model: Recommender, split: Split, workers: int | None = None) -> dict[str, Any]:
    """nDCG@10, recall@20 (all / repeat / new items), MAP@10, coverage on ``split``.

    ``workers`` threads rank the customers (default :func:`ranking_workers`).
    """
    if workers is None:
        workers = ranking_workers()
    return evaluate_recommender(
        model,
        split.counts,
        split.relevant,
        split.users,
        k_ndcg=K_NDCG,
        k_recall=K_RECALL,
        k_map=K_MAP,
        workers=workers,
    )


def _purchase_baskets(split: Split) -> Baskets:
    """The purchase days of the history before the window, as baskets."""
    train = split.train
    if "event" in train.columns:
        train = train[train["event"].isin(PURCHASE_EVENTS)]
    n_customers, n_items = split.counts.shape
    return Baskets.from_lines(
        train["crow"].to_numpy(),
        train["irow"].to_numpy(),
        train["timestamp"].to_numpy(dtype="datetime64[D]").astype(np.int64),
        n_customers,
        n_items,
    )


def evaluate_baselines(split: Split, *, tifu: bool = True) -> dict[str, dict[str, Any]]:
    """Popularity, item-kNN, personal frequency, P-TopFreq and (with ``tifu``)
    TIFU-KNN on the same split (TIFU-KNN's neighbours searched for the judged
    customers only)."""
    out: dict[str, dict[str, Any]] = {}
    baskets: Baskets | None = None
    models: list[Recommender] = [
        PopularityRecommender(),
        ItemKNNRecommender(),
        PersonalFrequencyRecommender(),
        PTopFreqRecommender(),
    ]
    if tifu:
        models.append(TIFUKNNRecommender(neighbours_for=split.users))
    for model in models:
        t0 = time.perf_counter()
        if isinstance(model, PTopFreqRecommender | TIFUKNNRecommender):
            baskets = baskets or _purchase_baskets(split)
            model.fit(split.counts, baskets=baskets)
        else:
            model.fit(split.counts)
        if isinstance(model, ItemKNNRecommender):
            split.item_knn = model
        metrics = evaluate(model, split)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        out[model.name] = metrics
    return out
