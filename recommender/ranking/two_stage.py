"""Two-stage recommendations (candidates, then a learned ranker) and the honest
protocol that judges them.

Protocol (:func:`evaluate_two_stage`), with cutoffs ``t0 < t1 < t2`` one label
window apart:

1. fit ALS, item-kNN and the repurchase model on the lines before ``t0``,
   build candidates and features as of ``t0`` and labels from ``[t0, t1)``;
   train the ranker, early stopping on held-out customers (with
   ``train_windows`` above 1, earlier windows add queries while fewer than
   ``max_train_customers`` were drawn);
2. fit the same models on the lines before ``t1``, build candidates and
   features as of ``t1`` and judge the ranked lists on ``[t1, t2)`` beside
   every baseline fitted on the same lines, on the same customers.

The published model (:func:`fit_for_publishing`) is the same code moved one
window later: labels from the last window, features as of its start, and
serving features as of the end of the log.

Fallback: when the ranker does not beat the best baseline's nDCG@10 on the
judged window, the result says so and names the baseline to serve instead.

Every list of the two-stage model comes from :func:`rank_customers`: the
evaluation, a batch export in blocks and a single request share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender.data.interactions import apply_weighting
from recommender.data.sampling import seeded_subset
from recommender.ranking.als import ALSRecommender
from recommender.ranking.als_search import NormOrderedSearch
from recommender.ranking.base import Recommender, top_k_sparse
from recommender.ranking.baselines import (
    ItemKNNRecommender,
    PersonalFrequencyRecommender,
    PopularityRecommender,
)
from recommender.ranking.candidates import (
    CandidateConfig,
    Candidates,
    generate_candidates,
)
from recommender.ranking.features import (
    FEATURES,
    PurchaseLines,
    ShopSnapshot,
    build_snapshot,
    pair_features,
    pair_values,
)
from recommender.ranking.ltr import LTRRanker
from recommender.ranking.metrics import evaluate_rankings, split_relevant
from recommender.ranking.repeat_baselines import PTopFreqRecommender, TIFUKNNRecommender
from recommender.timing.repurchase import RepurchaseModel
from recommender.timing.selection import PurchaseTimingModel

__all__ = [
    "Judgement",
    "PublishedRanker",
    "StageModels",
    "TwoStageConfig",
    "TrainingSet",
    "TwoStageReport",
    "build_training_set",
    "candidate_recall",
    "evaluate_two_stage",
    "fit_baselines",
    "fit_for_publishing",
    "fit_stage",
    "judge",
    "judged_customers",
    "rank_among",
    "JudgingPass",
    "judging_pass",
    "rank_for_judging",
    "rank_judged",
    "rank_customers",
    "score_candidates",
    "stage_from_state",
    "stage_state",
    "train_ranker",
    "window_labels",
]

K_NDCG, K_RECALL = 10, 20
PAIR_DAYS = FEATURES.index("pair_days")


@dataclass(frozen=True)
class TwoStageConfig:
    """Settings of the two-stage model and of its protocol."""

    window_days: int = 28
    """Label window: the ranker learns what is bought in the next this many days."""
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    """Candidates per source."""
    max_train_customers: int | None = 20_000
    """At most this many customers (with a purchase in the label window) give
    training rows: a 500,000-customer shop does not need features for every pair.
    Customers without a purchase in the window give lambdarank no gradient
    (a query without a relevant row), so none are drawn."""
    train_windows: int = 3
    """Most label windows the ranker learns from, the newest first, each with
    its own models and features as of its start. An older window is added
    only while fewer than ``max_train_customers`` customers were drawn: a
    small shop, whose one window holds few queries for early stopping to
    judge by, gets more of them; a large one fits its models once."""
    valid_share: float = 0.2
    """Share of the training customers held out for early stopping."""
    label: str = "binary"
    """``binary``: bought in the window or not, the relevance the lists are
    judged by; ``days``: distinct days of purchase in the window (capped at
    ``max_label``), which weighs items bought often above those bought once,
    a preference the binary judge does not share."""
    max_label: int = 3
    """Cap of the graded label."""
    block_size: int = 2048
    """Customers per block of candidates and features."""
    build_threads: int = 1
    """Blocks of a training set built side by side (BLAS held to one thread
    each); the rows are the same in any case."""
    use_repurchase: bool = True
    """Fit the buy-again model for the ``buy_again_p`` feature."""
    use_timing: bool = False
    """Fit BG/NBD (:class:`PurchaseTimingModel`, ``bgnbd`` only) for the
    ``cust_p_active`` and ``cust_expected_purchases`` features. Off by
    default: their inputs (baskets, recency, tenure) are features already and
    the trees learn each shop's mix of them."""
    knn_neighbours: int = 100
    """Neighbours per item of the item-kNN source."""
    max_eval_customers: int | None = None
    """At most this many customers are judged (a seeded sample)."""
    num_threads: int = 1
    """Threads of LightGBM (see :class:`LTRRanker`)."""
    fit_threads: int = 0
    """Threads of the ALS, item-kNN and TIFU-KNN fits (``implicit``'s; 0: all
    cores)."""
    seed: int = 0
    ranker: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of :class:`LTRRanker` (its defaults otherwise)."""
    repurchase: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the :class:`RepurchaseModel` behind ``buy_again_p``
    (the training pipeline passes its published model's, so that the model
    serving features is fitted as the ones the ranker learned from)."""

    def __post_init__(self) -> None:
        if self.label not in ("days", "binary"):
            raise ValueError("label must be 'days' or 'binary'")
        if (
            min(self.window_days, self.block_size, self.max_label, self.train_windows) < 1
            or self.build_threads < 1
        ):
            raise ValueError(
                "window_days, block_size, max_label, train_windows and build_threads "
                "must be positive"
            )
        if not 0.0 < self.valid_share < 1.0:
            raise ValueError("valid_share must lie in (0, 1)")


@dataclass
class StageModels:
    """Everything fitted on the lines before one cutoff."""

    snapshot: ShopSnapshot
    als: ALSRecommender | None
    knn: ItemKNNRecommender | None
    repurchase: RepurchaseModel | None
    config: TwoStageConfig
    timing: PurchaseTimingModel | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    search: NormOrderedSearch | None = None
    """A pruned exact search over the ALS item factors for one customer's
    ALS candidates (what serving sets on a large catalogue)."""

    @property
    def cutoff(self) -> int:
        return self.snapshot.cutoff

    def candidates(self, rows: np.ndarray) -> Candidates:
        """Candidates of customer ``rows`` as of the cutoff."""
        return generate_candidates(
            rows,
            self.snapshot,
            als=self.als,
            knn=self.knn,
            config=self.config.candidates,
            search=self.search,
        )

    def features(self, candidates: Candidates) -> np.ndarray:
        """:data:`FEATURES` of the candidate pairs."""
        return pair_features(
            self.snapshot,
            candidates,
            repurchase=self.repurchase,
            timing=self.timing,
            horizon_days=float(self.config.window_days),
        )


def fit_stage(
    lines: PurchaseLines,
    cutoff: int,
    config: TwoStageConfig,
    *,
    als: ALSRecommender | None = None,
    repurchase: RepurchaseModel | None = None,
    knn: ItemKNNRecommender | None = None,
) -> StageModels:
    """Snapshot, ALS, item-kNN and (optionally) the repurchase model as of ``cutoff``.

    Only lines strictly before ``cutoff`` are read. ``als``, ``repurchase``
    and ``knn``, when given, must have been fitted on those lines (``knn`` on
    their line counts with ``config.knn_neighbours``; the training pipeline
    shares its own fits); otherwise they are fitted here.
    """
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    past = lines.before(cutoff)
    # the whole lines: their purchase days are sorted once for every cutoff
    snapshot = build_snapshot(lines, cutoff, recent_days=config.window_days)
    seconds["snapshot"] = time.perf_counter() - t
    counts = past.line_matrix()
    if counts.nnz:
        if als is None:
            t = time.perf_counter()
            als = ALSRecommender(random_state=config.seed, num_threads=config.fit_threads)
            als.fit(apply_weighting(counts, "bm25"))
            seconds["als"] = time.perf_counter() - t
        if knn is None:
            t = time.perf_counter()
            knn = ItemKNNRecommender(k=config.knn_neighbours).fit(counts)
            seconds["item_knn"] = time.perf_counter() - t
    else:
        als = knn = None
    if not config.use_repurchase:
        repurchase = None
    elif repurchase is None and len(past):
        t = time.perf_counter()
        repurchase = RepurchaseModel(**config.repurchase).fit(
            np.asarray(past.customer_rows, dtype=np.int64),
            np.asarray(past.item_rows, dtype=np.int64),
            np.asarray(past.days, dtype=np.float64),
            as_of_day=float(cutoff),
            n_customers=lines.n_customers,
            n_items=lines.n_items,
        )
        seconds["repurchase"] = time.perf_counter() - t
    timing: PurchaseTimingModel | None = None
    if config.use_timing and len(past):
        t = time.perf_counter()
        timing = PurchaseTimingModel(candidates=("bgnbd",)).fit(
            np.asarray(past.customer_rows, dtype=np.int64),
            np.asarray(past.days, dtype=np.float64),
            as_of_day=float(cutoff),
            n_customers=lines.n_customers,
        )
        seconds["timing"] = time.perf_counter() - t
    return StageModels(snapshot, als, knn, repurchase, config, timing, seconds)


def window_labels(lines: PurchaseLines, start: int, end: int) -> sp.csr_matrix:
    """Customers x items: distinct days of purchase in ``[start, end)``."""
    return lines.between(start, end).day_matrix()


def _labels_of(candidates: Candidates, window: sp.csr_matrix, config: TwoStageConfig) -> np.ndarray:
    local = np.repeat(np.arange(candidates.rows.size), np.diff(candidates.matrix.indptr))
    sub = sp.csr_matrix(window[candidates.rows])
    days = pair_values(sub, local, candidates.matrix.indices.astype(np.int64))
    if config.label == "binary":
        return (days > 0).astype(np.int32)
    return np.minimum(days, config.max_label).astype(np.int32)


@dataclass
class TrainingSet:
    """Feature rows, labels and query groups of a set of customers."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    rows: np.ndarray
    """The customers of the groups, in order."""


def build_training_set(stage: StageModels, rows: np.ndarray, window: sp.csr_matrix) -> TrainingSet:
    """Candidates, features and labels (from ``window``) of customer ``rows``.

    Customers none of whose candidates is bought in the window are dropped:
    a query without a relevant row gives lambdarank no gradient.
    """
    cfg = stage.config

    def block_set(start: int) -> TrainingSet:
        block = np.asarray(rows[start : start + cfg.block_size], dtype=np.int64)
        # features for the customers who give the ranker a gradient only
        return _labelled(block, stage.candidates(block), stage.features, window, cfg)

    starts = range(0, len(rows), cfg.block_size)
    if cfg.build_threads > 1 and len(starts) > 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"), ThreadPoolExecutor(cfg.build_threads) as pool:
            return _concat(list(pool.map(block_set, starts)))
    return _concat([block_set(start) for start in starts])


def _labelled(
    block: np.ndarray,
    cands: Candidates,
    x: np.ndarray | Callable[[Candidates], np.ndarray],
    window: sp.csr_matrix,
    cfg: TwoStageConfig,
) -> TrainingSet:
    """The feature rows of a block's candidates with their labels from
    ``window``, for the customers with at least one bought candidate.

    ``x`` is the feature rows of every candidate, or the function that
    computes them, which is then asked for the kept customers' rows only.
    """
    y = _labels_of(cands, window, cfg)
    sizes = cands.group_sizes()
    positive = np.add.reduceat(y > 0, np.r_[0, np.cumsum(sizes)[:-1]]) > 0
    positive &= sizes > 0
    keep_rows = np.repeat(positive, sizes)
    kept = x(cands.take(positive)) if callable(x) else x[keep_rows]
    return TrainingSet(kept, y[keep_rows], sizes[positive], block[positive])


def train_ranker(
    lines: PurchaseLines,
    label_start: int,
    config: TwoStageConfig,
    *,
    stage_at: Callable[[int], StageModels] | None = None,
) -> tuple[LTRRanker, TrainingSet, StageModels, np.ndarray]:
    """Train a ranker on labels from ``[label_start, label_start + window)``
    with features as of ``label_start`` (and, with ``train_windows`` above 1,
    on as many earlier windows too).

    A seeded share of the customers is held out for early stopping, the same
    customers in every window, so no held-out customer is also trained on.

    Returns
    -------
    ranker, training set, the stage as of ``label_start``, and the held-out
    customers of that window (all of them with a purchase in it, also those
    whose candidates miss every purchase: they are judged too).

    ``stage_at(cutoff)`` gives the stage as of a cutoff (default
    :func:`fit_stage`; the training pipeline passes one that shares its fits).
    """
    cfg = config

    def fit_at(cutoff: int) -> StageModels:
        return fit_stage(lines, cutoff, cfg) if stage_at is None else stage_at(cutoff)

    w = cfg.window_days
    held_mask = np.random.default_rng(cfg.seed).random(lines.n_customers) < cfg.valid_share
    cap = cfg.max_train_customers
    trains, valids = [], []
    newest: StageModels | None = None
    newest_held = np.zeros(0, dtype=np.int64)
    drawn = 0
    for j in range(cfg.train_windows):
        if cap is not None and drawn >= cap:
            break  # enough queries already: an older window would only cost a fit
        start = label_start - j * w
        stage = fit_at(start)
        labels = window_labels(lines, start, start + w)
        left = None if cap is None else cap - drawn
        customers = seeded_subset(judged_customers(stage, labels, None, cfg.seed), left, cfg.seed)
        drawn += customers.size
        held = held_mask[customers]
        if j == 0:
            newest, newest_held = stage, customers[held]
        if customers.size == 0:
            break
        trains.append(build_training_set(stage, customers[~held], labels))
        valids.append(build_training_set(stage, customers[held], labels))
    assert newest is not None
    train, valid = _concat(trains), _concat(valids)
    params = {"num_threads": cfg.num_threads, "seed": cfg.seed, **cfg.ranker}
    ranker = LTRRanker(FEATURES, **params)
    ranker.fit(
        train.features,
        train.labels,
        train.groups,
        valid=(valid.features, valid.labels, valid.groups) if valid.groups.size else None,
    )
    return ranker, train, newest, newest_held


def _concat(sets: list[TrainingSet]) -> TrainingSet:
    if not sets:
        empty = np.zeros((0, len(FEATURES)), dtype=np.float32)
        return TrainingSet(
            empty, np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
        )
    return TrainingSet(
        np.concatenate([s.features for s in sets]),
        np.concatenate([s.labels for s in sets]),
        np.concatenate([s.groups for s in sets]),
        np.concatenate([s.rows for s in sets]),
    )


def score_candidates(
    stage: StageModels,
    ranker: LTRRanker,
    rows: np.ndarray,
    *,
    num_threads: int | None = None,
) -> tuple[Candidates, np.ndarray, np.ndarray]:
    """Candidates of customer ``rows`` (one block), their features and ranker scores."""
    cands = stage.candidates(np.asarray(rows, dtype=np.int64))
    x = stage.features(cands)
    scores = ranker.predict(x, num_threads=num_threads).astype(np.float32)
    return cands, x, scores


def rank_customers(
    stage: StageModels,
    ranker: LTRRanker,
    rows: np.ndarray,
    k: int = 10,
    *,
    exclude_history: bool = False,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` item rows (``-1`` padded) and ranker scores of customer ``rows``.

    The one scoring path of the two-stage model: the evaluation, a batch
    export (in blocks of ``config.block_size``) and a single request (one row)
    all call it. ``exclude_history`` drops every item the customer bought
    before the cutoff (the explore-only list).
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_items = stage.snapshot.n_items
    k = min(k, n_items)
    out_items = np.full((rows.size, k), -1, dtype=np.int32)
    out_scores = np.full((rows.size, k), -np.inf, dtype=np.float32)
    none = np.full(n_items, -np.inf, dtype=np.float32)
    for start in range(0, rows.size, stage.config.block_size):
        block = rows[start : start + stage.config.block_size]
        cands, x, scores = score_candidates(stage, ranker, block, num_threads=num_threads)
        m = cands.matrix
        keep = ~(x[:, PAIR_DAYS] > 0) if exclude_history else np.ones(m.nnz, dtype=bool)
        local = np.repeat(np.arange(block.size), np.diff(m.indptr))
        entries = sp.csr_matrix(
            (scores[keep], (local[keep], m.indices[keep])), shape=(block.size, n_items)
        )
        items, top = top_k_sparse(entries, none, k)
        out_items[start : start + block.size] = items
        out_scores[start : start + block.size] = top
    return out_items, out_scores


def rank_among(
    stage: StageModels, ranker: LTRRanker, rows: np.ndarray, cols: np.ndarray, k: int
) -> np.ndarray:
    """Top-``k`` of customer ``rows`` among the item rows ``cols`` only, as
    positions into ``cols`` (``-1`` where fewer candidates are left): the
    served list as the promotion gate compares it with another version's."""
    rows = np.asarray(rows, dtype=np.int64)
    n_items = stage.snapshot.n_items
    at = np.full(n_items, -1, dtype=np.int64)
    at[np.asarray(cols, dtype=np.int64)] = np.arange(len(cols))
    k = min(k, len(cols))
    out = np.full((rows.size, k), -1, dtype=np.int64)
    none = np.full(n_items, -np.inf, dtype=np.float32)
    for start in range(0, rows.size, stage.config.block_size):
        block = rows[start : start + stage.config.block_size]
        cands, _, scores = score_candidates(stage, ranker, block)
        m = cands.matrix
        keep = at[m.indices] >= 0
        local = np.repeat(np.arange(block.size), np.diff(m.indptr))
        entries = sp.csr_matrix(
            (scores[keep], (local[keep], m.indices[keep])), shape=(block.size, n_items)
        )
        items, _ = top_k_sparse(entries, none, k)
        out[start : start + block.size] = np.where(items >= 0, at[np.maximum(items, 0)], -1)
    return out


# -- judging -------------------------------------------------------------------


@dataclass
class JudgingPass:
    """The candidates and features of the customers a ranker is judged on,
    computed once and before any ranker exists (they do not depend on it):
    see :func:`judging_pass`."""

    rows: np.ndarray
    blocks: list[tuple[Candidates, np.ndarray]]
    """Each block's candidates and their feature rows, in the order of ``rows``."""
    recall: dict[str, float | None]
    """:func:`candidate_recall` of the pass."""
    labelled: TrainingSet
    """The features with labels from the judged window (as
    :func:`build_training_set` builds them)."""


def judging_pass(stage: StageModels, rows: np.ndarray, relevant: sp.csr_matrix) -> JudgingPass:
    """One pass over the candidates of ``rows`` for a judgement on ``relevant``
    (customers x items of the judged window): features, candidate recall, and
    the pass's features with their labels: the judged window's purchases are
    the labels a ranker for publishing learns from."""
    rows = np.asarray(rows, dtype=np.int64)
    tally = _RecallTally(stage, rows, relevant)
    blocks, sets = [], []
    for start in range(0, rows.size, stage.config.block_size):
        block = rows[start : start + stage.config.block_size]
        cands = stage.candidates(block)
        x = stage.features(cands)
        sets.append(_labelled(block, cands, x, relevant, stage.config))
        tally.add(start, cands)
        blocks.append((cands, x))
    return JudgingPass(rows, blocks, tally.result(), _concat(sets))


def rank_judged(
    judging: JudgingPass, ranker: LTRRanker, n_items: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ranked lists of a :class:`JudgingPass` (as :func:`rank_customers`)
    and its explore-only lists (``exclude_history=True``)."""
    rows = judging.rows
    k = min(k, n_items)
    lists = np.full((rows.size, k), -1, dtype=np.int32)
    explore = np.full((rows.size, k), -1, dtype=np.int32)
    none = np.full(n_items, -np.inf, dtype=np.float32)
    start = 0
    for cands, x in judging.blocks:
        size = cands.rows.size
        scores = ranker.predict(x).astype(np.float32)
        m = cands.matrix
        local = np.repeat(np.arange(size), np.diff(m.indptr))
        for out, keep in (
            (lists, np.ones(m.nnz, dtype=bool)),
            (explore, ~(x[:, PAIR_DAYS] > 0)),
        ):
            entries = sp.csr_matrix(
                (scores[keep], (local[keep], m.indices[keep])), shape=(size, n_items)
            )
            out[start : start + size] = top_k_sparse(entries, none, k)[0]
        start += size
    return lists, explore


def rank_for_judging(
    stage: StageModels,
    ranker: LTRRanker,
    rows: np.ndarray,
    relevant: sp.csr_matrix,
    k: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, float | None], TrainingSet]:
    """:func:`judging_pass` and :func:`rank_judged` in one call: the ranked and
    explore-only lists, the candidate recall and the labelled features."""
    judging = judging_pass(stage, rows, relevant)
    lists, explore = rank_judged(judging, ranker, stage.snapshot.n_items, k)
    return lists, explore, judging.recall, judging.labelled


def fit_baselines(lines: PurchaseLines, stage: StageModels) -> dict[str, Recommender]:
    """Every baseline, fitted on the lines before the stage's cutoff (ALS and
    item-kNN are the stage's own)."""
    past = lines.before(stage.cutoff)
    counts = past.line_matrix()
    c = np.asarray(past.customer_rows, dtype=np.int64)
    i = np.asarray(past.item_rows, dtype=np.int64)
    d = np.asarray(past.days, dtype=np.int64)
    models: dict[str, Recommender] = {
        "popularity": PopularityRecommender().fit(counts),
        "personal_frequency": PersonalFrequencyRecommender().fit(counts),
        "p_topfreq": PTopFreqRecommender().fit_events(c, i, d, past.n_customers, past.n_items),
        "tifu_knn": TIFUKNNRecommender(num_threads=stage.config.fit_threads).fit_events(
            c, i, d, past.n_customers, past.n_items
        ),
    }
    if stage.als is not None:
        models["als"] = stage.als
    if stage.knn is not None:
        models["item_knn"] = stage.knn
    return models


class _RecallTally:
    """Counts, block by block, the window's purchases that the candidates hold
    (over all pairs, and over repeat and new items) and the candidates."""

    def __init__(self, stage: StageModels, rows: np.ndarray, relevant: sp.csr_matrix) -> None:
        self.rel = sp.csr_matrix(relevant[rows])
        self.repeat, self.new = split_relevant(self.rel, stage.snapshot.history_rows(rows))
        self.found = {"all": 0.0, "repeat": 0.0, "new": 0.0}
        self.total = {"all": 0.0, "repeat": 0.0, "new": 0.0}
        self.n_cands = 0
        self.n_rows = len(rows)

    def add(self, start: int, cands: Candidates) -> None:
        """The candidates of the rows from position ``start`` on."""
        member = sp.csr_matrix(cands.matrix, dtype=np.float32)
        member.data[:] = 1.0
        self.n_cands += member.nnz
        end = start + member.shape[0]
        for name, part in (("all", self.rel), ("repeat", self.repeat), ("new", self.new)):
            sub = sp.csr_matrix(part[start:end])
            sub.data[:] = 1.0
            self.found[name] += float(sub.multiply(member).sum())
            self.total[name] += float(sub.sum())

    def result(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {
            f"candidate_recall_{name}": (
                self.found[name] / self.total[name] if self.total[name] else None
            )
            for name in self.found
        }
        out["candidates_per_customer"] = self.n_cands / max(self.n_rows, 1)
        return out


def candidate_recall(
    stage: StageModels, rows: np.ndarray, relevant: sp.csr_matrix
) -> dict[str, float | None]:
    """Share of the window's (customer, item) purchases that the candidates hold:
    over all pairs, and over repeat and new items; plus candidates per customer."""
    tally = _RecallTally(stage, rows, relevant)
    block = stage.config.block_size
    for start in range(0, len(rows), block):
        tally.add(start, stage.candidates(rows[start : start + block]))
    return tally.result()


@dataclass
class Judgement:
    """The ranker beside every baseline on one window and one set of customers."""

    metrics: dict[str, dict[str, Any]]
    """Model name -> nDCG@10, recall@10, recall@20 (all / repeat / new), ..."""
    best_baseline: str
    beats_best: bool
    serve: str
    """``"ranker"``, or the name of the baseline to serve instead."""
    candidates: dict[str, float | None]
    explore: dict[str, dict[str, Any]]
    """Explore-only lists (history excluded), judged on new items: the ranker
    and ALS with ``exclude_seen``."""

    @property
    def explore_ok(self) -> bool:
        """The explore-only ranker is at least as good as ALS on new items."""
        r = self.explore.get("ranker", {}).get("ndcg@10")
        a = self.explore.get("als", {}).get("ndcg@10")
        return r is None or a is None or r >= a


def _metrics(ranked: np.ndarray, relevant: sp.csr_matrix, history: sp.csr_matrix) -> dict:
    n_items = relevant.shape[1]
    out = evaluate_rankings(
        ranked, relevant, history, n_items, k_ndcg=K_NDCG, k_recall=K_RECALL, k_map=K_NDCG
    )
    at10 = evaluate_rankings(
        ranked[:, :10], relevant, history, n_items, k_ndcg=10, k_recall=10, k_map=10
    )
    for key in ("recall@10", "recall@10_repeat", "recall@10_new"):
        out[key] = at10[key]
    return out


def judge(
    lines: PurchaseLines,
    stage: StageModels,
    ranker: LTRRanker,
    rows: np.ndarray,
    relevant: sp.csr_matrix,
    *,
    baselines: dict[str, Recommender] | None = None,
) -> Judgement:
    """Rank ``rows`` as of the stage's cutoff and compare with every baseline on
    ``relevant`` (customers x items of the judged window)."""
    rows = np.asarray(rows, dtype=np.int64)
    if baselines is None:
        baselines = fit_baselines(lines, stage)
    counts = lines.before(stage.cutoff).line_matrix()
    rel = sp.csr_matrix(relevant[rows])
    hist = sp.csr_matrix(counts[rows])
    k = max(K_NDCG, K_RECALL)
    metrics: dict[str, dict[str, Any]] = {}
    t = time.perf_counter()
    ranked, _ = rank_customers(stage, ranker, rows, k)
    metrics["ranker"] = _metrics(ranked, rel, hist)
    metrics["ranker"]["rank_s"] = round(time.perf_counter() - t, 3)
    for name, model in baselines.items():
        lists, _ = model.recommend(rows, counts, k=k)
        metrics[name] = _metrics(lists, rel, hist)
    scores = {name: (m["ndcg@10"] or 0.0) for name, m in metrics.items() if name != "ranker"}
    best = max(scores, key=lambda n: scores[n])
    beats = (metrics["ranker"]["ndcg@10"] or 0.0) > scores[best]

    # explore-only: every purchased item out, judged on new items
    _, new = split_relevant(rel, hist)
    has_new = np.diff(new.indptr) > 0
    explore: dict[str, dict[str, Any]] = {}
    if has_new.any():
        sub = rows[has_new]
        ranked_x, _ = rank_customers(stage, ranker, sub, k, exclude_history=True)
        explore["ranker"] = _metrics(ranked_x, new[has_new], hist[has_new])
        if stage.als is not None:
            als_x, _ = stage.als.recommend(sub, counts, k=k, exclude_seen=True)
            explore["als"] = _metrics(als_x, new[has_new], hist[has_new])
    return Judgement(
        metrics=metrics,
        best_baseline=best,
        beats_best=beats,
        serve="ranker" if beats else best,
        candidates=candidate_recall(stage, rows, relevant),
        explore=explore,
    )


def judged_customers(
    stage: StageModels, relevant: sp.csr_matrix, limit: int | None, seed: int
) -> np.ndarray:
    """Customers with a purchase before the cutoff and one in the window."""
    has_hist = stage.snapshot.cust_baskets > 0
    has_rel = np.diff(sp.csr_matrix(relevant).indptr) > 0
    return seeded_subset(np.flatnonzero(has_hist & has_rel), limit, seed)


@dataclass
class TwoStageReport:
    """What :func:`evaluate_two_stage` measured."""

    cutoffs: tuple[int, int, int]
    ranker: LTRRanker
    judgement: Judgement
    train_rows: int
    train_customers: int
    seconds: dict[str, float]


def evaluate_two_stage(
    lines: PurchaseLines, t1: int, config: TwoStageConfig | None = None
) -> TwoStageReport:
    """Train as of ``t1 - window`` with labels up to ``t1``; judge as of ``t1``
    on ``[t1, t1 + window)`` against every baseline (see the module docstring)."""
    cfg = config or TwoStageConfig()
    w = cfg.window_days
    t0, t2 = t1 - w, t1 + w
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    ranker, train, _, _ = train_ranker(lines, t0, cfg)
    seconds["train_ranker"] = time.perf_counter() - t
    t = time.perf_counter()
    stage1 = fit_stage(lines, t1, cfg)
    seconds["stage_t1"] = time.perf_counter() - t
    relevant = window_labels(lines, t1, t2)
    rows = judged_customers(stage1, relevant, cfg.max_eval_customers, cfg.seed)
    t = time.perf_counter()
    judgement = judge(lines, stage1, ranker, rows, relevant)
    seconds["judge"] = time.perf_counter() - t
    return TwoStageReport(
        cutoffs=(t0, t1, t2),
        ranker=ranker,
        judgement=judgement,
        train_rows=int(train.labels.size),
        train_customers=int(train.groups.size),
        seconds=seconds,
    )


@dataclass
class PublishedRanker:
    """The ranker trained on the last window and the stage that serves it."""

    ranker: LTRRanker
    stage: StageModels
    """Fitted on the whole log: features as of ``end``."""
    validation: Judgement
    """The ranker beside every baseline on the held-out training customers."""

    @property
    def serve(self) -> str:
        return self.validation.serve


def fit_for_publishing(
    lines: PurchaseLines, end: int, config: TwoStageConfig | None = None
) -> PublishedRanker:
    """Train with labels from ``[end - window, end)`` and features as of its
    start, then fit the stage that serves features as of ``end``.

    The validation compares the ranker with every baseline on the customers
    held out from training (same window): when it does not win, ``serve``
    names the baseline to publish instead.
    """
    cfg = config or TwoStageConfig()
    t1 = end - cfg.window_days
    labels = window_labels(lines, t1, end)
    ranker, _, stage1, held = train_ranker(lines, t1, cfg)
    rows = held if held.size else judged_customers(stage1, labels, 5000, cfg.seed)
    validation = judge(lines, stage1, ranker, rows, labels)
    stage2 = fit_stage(lines, end, cfg)
    return PublishedRanker(ranker=ranker, stage=stage2, validation=validation)


# -- storage -------------------------------------------------------------------
STAGE_SCHEMA = "encore.two_stage/1"


def stage_state(
    stage: StageModels,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What a serving process needs of a stage besides ALS and the buy-again
    model (which a bundle holds already): settings, snapshot arrays and the
    item-kNN similarity.

    Returns
    -------
    meta, snapshot arrays, item-kNN arrays (CSR ``indptr``, ``indices``, ``data``)
    """
    cfg = stage.config
    if stage.timing is not None:
        raise ValueError("a stage with timing features cannot be stored (use_timing is off)")
    meta = {
        "schema": STAGE_SCHEMA,
        "cutoff": int(stage.cutoff),
        "window_days": int(cfg.window_days),
        "block_size": int(cfg.block_size),
        "knn_neighbours": int(cfg.knn_neighbours),
        "use_repurchase": bool(stage.repurchase is not None),
        "candidates": asdict(cfg.candidates),
        "has_knn": stage.knn is not None,
    }
    knn: dict[str, np.ndarray] = {}
    if stage.knn is not None:
        assert stage.knn.similarity_ is not None
        sim = sp.csr_matrix(stage.knn.similarity_, dtype=np.float32)
        sim.sort_indices()
        knn = {
            "indptr": sim.indptr.astype(np.int64),
            "indices": sim.indices.astype(np.int32),
            "data": sim.data.astype(np.float32),
        }
    return meta, stage.snapshot.to_arrays(), knn


def stage_from_state(
    meta: dict[str, Any],
    snapshot: dict[str, Any],
    knn: dict[str, Any] | None,
    *,
    als: ALSRecommender | None,
    repurchase: RepurchaseModel | None,
) -> StageModels:
    """The stage :func:`stage_state` stored, with the bundle's ALS and buy-again model.

    Raises
    ------
    ValueError
        On an unknown schema, or parts that do not fit together.
    """
    if meta.get("schema") != STAGE_SCHEMA:
        raise ValueError(
            f"unknown two-stage schema {meta.get('schema')!r}; expected {STAGE_SCHEMA}"
        )
    snap = ShopSnapshot.from_arrays(snapshot)
    if int(meta["cutoff"]) != snap.cutoff:
        raise ValueError("the snapshot's cutoff differs from the stage's")
    if meta.get("use_repurchase") and repurchase is None:
        raise ValueError("the ranker reads the buy-again model, and the version has none")
    config = TwoStageConfig(
        window_days=int(meta["window_days"]),
        block_size=int(meta["block_size"]),
        knn_neighbours=int(meta["knn_neighbours"]),
        use_repurchase=bool(meta.get("use_repurchase")),
        candidates=CandidateConfig(**meta["candidates"]),
    )
    model: ItemKNNRecommender | None = None
    if meta.get("has_knn"):
        if not knn:
            raise ValueError("the stage's item-kNN similarity is missing")
        n = snap.n_items
        sim = sp.csr_matrix((knn["data"], knn["indices"], knn["indptr"]), shape=(n, n))
        sim.check_format(full_check=True)
        model = ItemKNNRecommender(k=config.knn_neighbours)
        model.similarity_ = sim
        model._similarity_t = sim.T.tocsr()
    if als is not None and als.n_items != snap.n_items:
        raise ValueError("the ALS model and the snapshot have different items")
    return StageModels(
        snapshot=snap,
        als=als,
        knn=model,
        repurchase=repurchase if config.use_repurchase else None,
        config=config,
    )
