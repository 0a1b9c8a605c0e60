"""The two-stage ranker inside ``encore train``: trained, judged beside every
baseline on the evaluation window, and chosen (or not) as the served list.

The protocol of :mod:`recommender.ranking.two_stage`, on the pipeline's own
cutoffs and fits (``W`` is the evaluation window's length):

* judged: the ranker learns labels from ``[cut - W, cut)`` with features as of
  ``cut - W`` and ranks the evaluation window's customers as of ``cut``, where
  the stage reuses the ALS model the pipeline judged; its figures join the
  baselines' on the same customers and window;
* published: it learns labels from ``[cut, end)`` with features as of ``cut``
  (the stage just judged) and serves features as of ``end`` with the
  pipeline's published ALS and buy-again models;
* the served list is the ranker's when its nDCG@10 beats every baseline's,
  else that baseline's (the manifest's ``serving`` says which and why); the
  explore-only list (every purchase hidden) is the ranker's when it beats ALS
  on the window's new items, else ALS's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.data.interactions import rows_in_time_range
from recommender.ranking.base import Recommender
from recommender.ranking.baselines import ItemKNNRecommender, PersonalFrequencyRecommender
from recommender.ranking.features import PurchaseLines
from recommender.ranking.ltr import LTRRanker
from recommender.ranking.metrics import evaluate_rankings, split_relevant
from recommender.ranking.repeat_baselines import Baskets, PTopFreqRecommender, TIFUKNNRecommender
from recommender.ranking.two_stage import (
    JudgingPass,
    StageModels,
    TrainingSet,
    TwoStageConfig,
    fit_stage,
    judging_pass,
    rank_customers,
    rank_judged,
    train_ranker,
)
from recommender.timing.repurchase import RepurchaseModel
from training import ranking
from training.config import TrainConfig

K_NDCG, K_RECALL, K_MAP = ranking.K_NDCG, ranking.K_RECALL, ranking.K_MAP
#: Baselines whose whole-log list can be served in the ranker's place.
TABLE_BASELINES = ("p_topfreq", "tifu_knn", "personal_frequency", "item_knn")


@dataclass
class RankerResult:
    """What the two-stage step built and measured."""

    serve: str
    """The served list: ``"ranker"``, ``"als"``, ``"popularity"`` or a
    baseline of :data:`TABLE_BASELINES`."""
    explore: str
    """The explore-only list: ``"ranker"`` or ``"als"``."""
    reason: str
    ranker: LTRRanker | None = None
    stage: StageModels | None = None
    """The stage as of the end of the log (what serving ranks with)."""
    table: tuple[np.ndarray, np.ndarray] | None = None
    """The served list's top-N per customer (None: ranked per request)."""
    probe: np.ndarray | None = None
    """Feature rows saved with the ranker to check it after loading."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """``ranker`` (for the ``ranking`` table), ``ranking_explore`` and ``ranker_training``."""
    judged: LTRRanker | None = None
    """The ranker trained on labels before the evaluation window (judged on it)."""
    lines: PurchaseLines | None = None
    config: TwoStageConfig | None = None

    def stage_at(self, day: int, als: Any) -> StageModels:
        """A stage as of ``day`` with the given ALS model (for the promotion gate)."""
        assert self.lines is not None and self.config is not None
        return fit_stage(self.lines, day, self.config, als=als)


def day_number(ts: pd.Timestamp) -> int:
    """The day of a midnight timestamp as :class:`PurchaseLines` counts days."""
    return int((ts - pd.Timestamp("1970-01-01")).days)


def fit_two_stage(
    *,
    frame: pd.DataFrame,
    purchases: pd.DataFrame,
    customers: Any,
    items: Any,
    catalog: pd.DataFrame | None,
    eval_cut: pd.Timestamp,
    end: pd.Timestamp,
    window: ranking.Split,
    ranked: Any,
    baseline_metrics: dict[str, dict[str, Any]],
    repurchase: RepurchaseModel | None,
    timing_on: bool,
    cfg: TrainConfig,
    say: Any = print,
) -> RankerResult:
    """Train, judge and choose (see the module docstring).

    ``ranked`` is the pipeline's :class:`~training.stages.RankingResult` (its
    judged and published ALS models and their configuration);
    ``baseline_metrics`` the ``ranking`` table the ranker must beat.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    lines = PurchaseLines.from_indexed(purchases, customers, items, catalog=catalog)
    w = int(cfg.eval_days)
    cut_day, end_day = day_number(eval_cut), day_number(end)
    tcfg = TwoStageConfig(
        window_days=w,
        max_train_customers=cfg.ranker_train_customers,
        # the training set's blocks take the cores the stage thread leaves idle
        build_threads=ranking.ranking_workers(),
        # the buy-again feature is served from the version's own model: without
        # one (timing off, or no item rebought) the ranker learns without it
        use_repurchase=timing_on and repurchase is not None,
        repurchase={"min_customer_purchases": 1},
        # twice the ranker's default step: on the 5M-row bench log early stopping
        # kept 25 trees for a held-out nDCG of 0.3826 where 0.05 kept 64 for
        # 0.3829, so training and every served prediction cost less than half
        ranker={"learning_rate": 0.1, "early_stopping_rounds": 15},
        seed=cfg.seed,
    )

    def fit_at(day: int) -> StageModels:
        als = None
        rep = None
        knn = None
        if day == cut_day:
            als, knn = ranked.judged, _shared_knn(window, lines, day, tcfg)
        elif day == cut_day - w and ranked.earlier is not None:
            als = ranked.earlier
        elif day == end_day:
            als, rep = ranked.model, repurchase
        else:
            als = _als_before(frame, customers, items, ranked.config, day, cfg.seed)
        return fit_stage(lines, day, tcfg, als=als, repurchase=rep, knn=knn)

    # The stage as of the evaluation cut, the judged customers' candidates and
    # features there, and the stage as of the end of the log do not depend on
    # the ranker: a second thread builds them, in that order (then the ranker
    # for publishing), while this one fits the stage before the label window,
    # builds the training set and trains: most of these steps are
    # single-threaded numpy and LightGBM, and a machine has a second core.
    _ = lines.purchase_days  # sorted once, before two threads read them
    rows = np.asarray(window.users, dtype=np.int64)
    ahead = ThreadPoolExecutor(1, thread_name_prefix="encore-stage")
    jobs: dict[int, Future[StageModels]] = {cut_day: ahead.submit(fit_at, cut_day)}
    judging = ahead.submit(lambda: judging_pass(jobs[cut_day].result(), rows, window.relevant))
    jobs[end_day] = ahead.submit(fit_at, end_day)
    cache: dict[int, StageModels] = {}

    def stage_at(day: int) -> StageModels:
        if day not in cache:
            cache[day] = jobs[day].result() if day in jobs else fit_at(day)
        return cache[day]

    try:
        return _train_judge_choose(
            lines=lines,
            stage_at=stage_at,
            judging=judging,
            ahead=ahead,
            tcfg=tcfg,
            cut_day=cut_day,
            end_day=end_day,
            window=window,
            ranked=ranked,
            purchases=purchases,
            customers=customers,
            items=items,
            baseline_metrics=baseline_metrics,
            cfg=cfg,
            say=say,
            seconds=seconds,
            started=t,
        )
    finally:
        # a job not needed (the ranker serves nothing) is dropped, a running one waited for
        ahead.shutdown(wait=True, cancel_futures=True)
        cache.clear()


def _train_judge_choose(
    *,
    lines: PurchaseLines,
    stage_at: Callable[[int], StageModels],
    judging: Future[JudgingPass],
    ahead: ThreadPoolExecutor,
    tcfg: TwoStageConfig,
    cut_day: int,
    end_day: int,
    window: ranking.Split,
    ranked: Any,
    purchases: pd.DataFrame,
    customers: Any,
    items: Any,
    baseline_metrics: dict[str, dict[str, Any]],
    cfg: TrainConfig,
    say: Any,
    seconds: dict[str, float],
    started: float,
) -> RankerResult:
    """The steps of :func:`fit_two_stage` once its stages can be had."""
    w = tcfg.window_days
    t = started
    seconds["lines"] = time.perf_counter() - t
    t = time.perf_counter()
    judged_ranker, train_set, _, _ = train_ranker(lines, cut_day - w, tcfg, stage_at=stage_at)
    seconds["train_judged"] = time.perf_counter() - t
    # trained on the stage thread beside the judgement, which alone tells
    # whether it is needed
    publishing = ahead.submit(
        lambda: _publishing_ranker(judging.result().labelled, train_set, judged_ranker, tcfg)
    )

    t = time.perf_counter()
    judged = judging.result()
    rows = judged.rows
    k = max(K_NDCG, K_RECALL, K_MAP)
    n_items = len(items)
    lists, explore_lists = rank_judged(judged, judged_ranker, n_items, k)
    recall = judged.recall
    rel, hist = window.relevant[rows], window.counts[rows]
    figures = evaluate_rankings(
        lists, rel, hist, n_items, k_ndcg=K_NDCG, k_recall=K_RECALL, k_map=K_MAP
    )
    explore = _explore(explore_lists, ranked.judged, rows, rel, hist, window.counts, n_items)
    seconds["judge"] = time.perf_counter() - t

    table = {name: m for name, m in baseline_metrics.items() if not m.get("for_gate_only")}
    best = max(table, key=lambda n: table[n].get("ndcg@10") or 0.0)
    best_ndcg = float(table[best].get("ndcg@10") or 0.0)
    mine = float(figures.get("ndcg@10") or 0.0)
    if mine > best_ndcg:
        serve = "ranker"
        reason = (
            f"the ranker's nDCG@10 {mine:.4f} beats the best baseline's "
            f"({best} {best_ndcg:.4f}) on the evaluation window"
        )
    else:
        serve = best if best in ("als", "popularity", *TABLE_BASELINES) else "als"
        reason = (
            f"the ranker's nDCG@10 {mine:.4f} does not beat {best}'s {best_ndcg:.4f} "
            f"on the evaluation window: serving {serve}'s list"
        )
    ranker_x = (explore.get("ranker") or {}).get("ndcg@10")
    als_x = (explore.get("als") or {}).get("ndcg@10")
    wins = ranker_x is not None and (als_x is None or ranker_x >= als_x)
    explore_list = "ranker" if wins else "als"
    say(f"        ranker nDCG@10 {mine:.4f}, best baseline {best} {best_ndcg:.4f}: serving {serve}")

    result = RankerResult(
        serve=serve,
        explore=explore_list,
        reason=reason,
        judged=judged_ranker,
        lines=lines,
        config=tcfg,
    )
    result.metrics = {
        "ranker": {**figures, "seconds": round(sum(seconds.values()), 2)},
        "ranking_explore": explore,
        "ranker_training": {
            "label_window_days": w,
            "train_rows": int(train_set.labels.size),
            "train_customers": int(train_set.groups.size),
            "best_iteration": judged_ranker.best_iteration_,
            "valid_ndcg@10": judged_ranker.valid_ndcg_,
            "candidates": recall,
            "importance": _top_importance(judged_ranker),
        },
    }
    if serve == "ranker" or explore_list == "ranker":
        t = time.perf_counter()
        published = publishing.result()
        stage_end = stage_at(end_day)
        seconds["train_published"] = time.perf_counter() - t
        result.ranker, result.stage = published, stage_end
        probe_rows = rows[: min(8, rows.size)]
        if probe_rows.size:
            cands = stage_end.candidates(probe_rows)
            x = stage_end.features(cands)
            result.probe = x[:: max(1, len(x) // 16)][:16]
    n_customers = len(customers)
    if cfg.top_n > 0 and serve != "als" and serve != "popularity":
        if n_customers <= cfg.ranker_table_max_customers:
            t = time.perf_counter()
            result.table = _served_table(serve, result, purchases, window, cfg, n_customers)
            seconds["table"] = time.perf_counter() - t
        else:
            say(
                f"        served lists not precomputed: {n_customers:,} customers exceed "
                f"{cfg.ranker_table_max_customers:,}; ranked per request"
            )
    result.metrics["ranker_training"]["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return result


def _publishing_ranker(
    labelled: TrainingSet, earlier: TrainingSet, judged: LTRRanker, tcfg: TwoStageConfig
) -> LTRRanker:
    """The ranker for publishing, with the judged ranker's settings and as
    many trees as early stopping kept for it: it learns from the evaluation
    window's purchases (labels) with features as of its start, on the judged
    customers, and from the windows the judged ranker learned from. The
    features were computed by the judgement's pass; nothing is held out, as
    the number of trees is already chosen."""
    if np.asarray(labelled.groups).size == 0:
        return judged
    params = {"num_threads": tcfg.num_threads, "seed": tcfg.seed, **tcfg.ranker}
    params["n_estimators"] = max(1, int(judged.best_iteration_ or judged.n_estimators))
    ranker = LTRRanker(judged.features, **params)
    ranker.fit(
        np.concatenate([labelled.features, earlier.features]),
        np.concatenate([labelled.labels, earlier.labels]),
        np.concatenate([labelled.groups, earlier.groups]),
    )
    return ranker


def _shared_knn(
    window: ranking.Split, lines: PurchaseLines, day: int, tcfg: TwoStageConfig
) -> ItemKNNRecommender | None:
    """The item-kNN baseline's fit, when it learned from the very line counts
    the stage as of ``day`` learns from (a log of purchases alone)."""
    knn = window.item_knn
    if knn is None or knn.k != tcfg.knn_neighbours:
        return None
    mine, theirs = lines.before(day).line_matrix(), window.counts
    same = (
        mine.shape == theirs.shape
        and mine.nnz == theirs.nnz
        and np.array_equal(mine.indptr, theirs.indptr)
        and np.array_equal(mine.indices, theirs.indices)
        and np.array_equal(mine.data, theirs.data)
    )
    return knn if same else None


def _als_before(
    frame: pd.DataFrame, customers: Any, items: Any, als_cfg: Any, day: int, seed: int
) -> Any:
    """The pipeline's ALS configuration fitted on the log before ``day``."""
    cut = pd.Timestamp("1970-01-01") + pd.Timedelta(days=day)
    seen = rows_in_time_range(frame, None, cut)
    matrix = ranking.weighted_matrix(seen, customers, items, als_cfg, now=cut)
    if matrix.nnz == 0:
        return None
    return ranking.fit_als(matrix, als_cfg, seed, iterations=als_cfg.history_iterations)


def _explore(
    lists: np.ndarray,
    als: Any,
    rows: np.ndarray,
    rel: sp.csr_matrix,
    hist: sp.csr_matrix,
    counts: sp.csr_matrix,
    n_items: int,
) -> dict[str, dict[str, Any]]:
    """The explore-only lists (every purchase hidden) of the ranker and of ALS,
    judged on new items, for the customers who bought one."""
    _, new = split_relevant(sp.csr_matrix(rel), sp.csr_matrix(hist))
    has_new = np.diff(new.indptr) > 0
    if not has_new.any():
        return {}
    sub = rows[has_new]
    k = max(K_NDCG, K_RECALL, K_MAP)

    def judged(ranked: np.ndarray) -> dict[str, Any]:
        return evaluate_rankings(
            ranked, new[has_new], hist[has_new], n_items,
            k_ndcg=K_NDCG, k_recall=K_RECALL, k_map=K_MAP,
        )  # fmt: skip

    out = {"ranker": judged(lists[has_new])}
    if als is not None:
        out["als"] = judged(als.recommend(sub, counts, k=k, exclude_seen=True)[0])
    return out


def _top_importance(ranker: LTRRanker, n: int = 8) -> dict[str, float]:
    gains = ranker.feature_importance("gain")
    total = sum(gains.values()) or 1.0
    return {name: round(v / total, 4) for name, v in list(gains.items())[:n]}


def _served_table(
    serve: str,
    result: RankerResult,
    purchases: pd.DataFrame,
    window: ranking.Split,
    cfg: TrainConfig,
    n_customers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every customer's top ``cfg.top_n`` of the served list, on the whole log."""
    rows = np.arange(n_customers, dtype=np.int64)
    if serve == "ranker":
        assert result.ranker is not None and result.stage is not None
        return rank_customers(result.stage, result.ranker, rows, cfg.top_n)
    n_items = window.counts.shape[1]
    ok = purchases["irow"].to_numpy() >= 0
    c = purchases["crow"].to_numpy()[ok]
    i = purchases["irow"].to_numpy()[ok]
    d = purchases["timestamp"].to_numpy(dtype="datetime64[D]").astype(np.int64)[ok]
    counts = sp.csr_matrix(
        (np.ones(c.size, dtype=np.float32), (c, i)), shape=(n_customers, n_items)
    )
    counts.sum_duplicates()
    model: Recommender
    if serve in ("p_topfreq", "tifu_knn"):
        baskets = Baskets.from_lines(c, i, d, n_customers, n_items)
        model = PTopFreqRecommender() if serve == "p_topfreq" else TIFUKNNRecommender()
        model.fit(counts, baskets=baskets)
    elif serve == "personal_frequency":
        model = PersonalFrequencyRecommender().fit(counts)
    else:
        model = ItemKNNRecommender().fit(counts)
    return model.recommend(rows, counts, k=cfg.top_n, workers=ranking.ranking_workers())
