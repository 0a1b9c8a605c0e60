"""Hyperparameter search for ALS, bounded by a time budget.

Trials are scored on a validation window that ends where the evaluation window
starts, so the figures reported for the chosen configuration come from weeks
the search never looked at.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from recommender.data.ids import IdIndex
from training.config import ALSConfig, SearchConfig
from training.ranking import K_NDCG, Split, evaluate, fit_als, weighted_matrix

SPACE: dict[str, list[Any]] = {
    "factors": [32, 64, 128],
    "regularization": [0.01, 0.05, 0.1, 0.5],
    "alpha": [1.0, 5.0, 10.0, 20.0, 40.0],
    "weighting": ["raw", "log", "bm25", "tfidf"],
    "half_life_days": [None, 60.0, 180.0],
    "iterations": [10, 15, 25],
}


def candidates(base: ALSConfig, n: int, seed: int) -> list[ALSConfig]:
    """The base configuration first, then ``n - 1`` distinct random draws."""
    rng = np.random.default_rng(seed)
    out = [base]
    seen = {tuple(sorted(dataclasses.asdict(base).items(), key=lambda kv: kv[0]))}
    attempts = 0
    while len(out) < n and attempts < n * 20:
        attempts += 1
        draw = {k: v[int(rng.integers(len(v)))] for k, v in SPACE.items()}
        cfg = dataclasses.replace(base, **draw)
        key = tuple(sorted(dataclasses.asdict(cfg).items(), key=lambda kv: kv[0]))
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def search(
    split: Split,
    customers: IdIndex,
    items: IdIndex,
    base: ALSConfig,
    settings: SearchConfig,
    *,
    on_trial: Callable[[int, ALSConfig, dict[str, Any]], None] | None = None,
) -> tuple[ALSConfig, list[dict[str, Any]]]:
    """Random search; returns the best configuration by nDCG@10 and every trial."""
    start = time.perf_counter()
    trials: list[dict[str, Any]] = []
    best_cfg, best = base, -np.inf
    for i, cfg in enumerate(candidates(base, settings.max_trials, settings.seed)):
        if i > 0 and time.perf_counter() - start > settings.time_budget_s:
            break
        t0 = time.perf_counter()
        matrix = weighted_matrix(
            split.train, customers, items, cfg, now=split.cutoff, counts=split.counts
        )
        # a trial stands for the judged fit on the history
        model = fit_als(matrix, cfg, settings.seed, iterations=cfg.history_iterations)
        metrics = evaluate(model, split)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        trial = {"config": dataclasses.asdict(cfg), "metrics": metrics}
        trials.append(trial)
        if on_trial is not None:
            on_trial(i, cfg, metrics)
        score = metrics[f"ndcg@{K_NDCG}"]
        if np.isfinite(score) and score > best:
            best_cfg, best = cfg, score
    return best_cfg, trials


def validation_split_cutoffs(
    eval_cutoff: pd.Timestamp, eval_days: int
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(start, end) of the validation window: the ``eval_days`` before evaluation."""
    return eval_cutoff - pd.Timedelta(days=eval_days), eval_cutoff
