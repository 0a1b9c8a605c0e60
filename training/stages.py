"""The stages of ``encore train``, each a function from typed inputs to a typed output.

:func:`training.pipeline.train` calls them in order, and decides there, and
only there, which stage runs beside which. A stage reports through the
:class:`Run` it is given (progress lines, warnings, step timings) and raises
:class:`TrainingError` when the run cannot go on; none of them touches the
published version except :func:`write_and_verify`, which writes a new one
beside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata as md
import platform
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.data.interactions import build_matrix, rows_in_time_range
from recommender.data.transactions import (
    PURCHASE_EVENTS,
    Transactions,
    as_of_cutoff,
    load_catalog,
    load_transactions,
)
from recommender.gate import Candidate, GateConfig, Lists, Verdict, judge, rescore
from recommender.purchases import PURCHASES_FILE, purchase_log_bytes
from recommender.ranking.als import ALSRecommender
from recommender.ranking.baselines import PopularityRecommender
from recommender.ranking.two_stage import rank_among, rank_customers
from recommender.store.artifacts import (
    ArtifactError,
    current_version,
    new_version_name,
    prune_versions,
    publish_version,
    read_manifest,
    remove_stale_temporaries,
)
from recommender.store.bundle import (
    Bundle,
    Catalog,
    CustomerSpend,
    load_bundle,
    load_bundle_dir,
    save_bundle,
)
from recommender.store.lock import StoreLock
from training import ranking
from training.config import ALSConfig, TrainConfig
from training.ranker_step import RankerResult, day_number, fit_two_stage
from training.search import search as run_search

if TYPE_CHECKING:  # imported when used: a run with --no-timing never loads them
    from recommender.timing.repurchase import RepurchaseModel
    from recommender.timing.selection import PurchaseTimingModel
    from recommender.value.health import ShopHealth

Reporter = Callable[[str], None]
TopN = tuple[np.ndarray, np.ndarray]


class TrainingError(RuntimeError):
    """Training cannot produce a publishable version; the published one is untouched."""


@dataclass
class Run:
    """What a run reports as it goes: progress lines, warnings and step timings.

    ``warnings`` and ``timings`` are the very objects the manifest holds, so a
    warning raised while the version is written still reaches its manifest.
    """

    say: Reporter
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.say(f"[warn] {msg}")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Print ``[step] name ...`` and, when it ends, ``[done] name in ...s``."""
        self.say(f"[step] {name} ...")
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        self.say(f"[done] {name} in {self.timings[name]:.2f}s")


# ----------------------------------------------------------------- stage outputs


@dataclass(frozen=True)
class LogSource:
    """Where the log is and how to read it (the options of ``encore train``)."""

    transactions: str | Path
    items_path: str | Path | None = None
    columns: dict[str, str] | None = None
    as_of: str | None = None
    strict: bool = False
    event_weights: dict[str, float] | None = None
    time_format: str | None = None


@dataclass(frozen=True, eq=False)
class LoadedLog:
    """The checked log, its catalog, and the day it is taken as of."""

    tx: Transactions
    catalog: pd.DataFrame | None
    catalog_report: dict[str, Any] | None
    end: pd.Timestamp
    """Midnight after the last day of the log (or of ``--as-of``)."""
    future: pd.DataFrame | None
    """Purchases after ``--as-of``, for a backtest (None without ``--as-of``)."""


@dataclass(frozen=True, eq=False)
class Prepared:
    """The log on the model's id indexes, and where its evaluation window starts."""

    frame: pd.DataFrame
    """Every row, with its customer and item rows (``crow``, ``irow``; -1 for
    an item left out)."""
    purchases: pd.DataFrame
    customers: IdIndex
    items: IdIndex
    has_events: bool
    end: pd.Timestamp
    eval_cut: pd.Timestamp
    rankable: bool
    """There is something to rank and a window to judge it on."""


@dataclass(frozen=True, eq=False)
class ServingTables:
    """What serving reads besides the models, and the fingerprint of the data."""

    history: sp.csr_matrix
    """Purchases per customer and item: what serving ranks from and leaves out."""
    popularity: np.ndarray
    catalog: Catalog
    fingerprint: dict[str, Any]


@dataclass(frozen=True, eq=False)
class TimingResult:
    """The next-purchase, buy-again and spend models (None where not fitted),
    their metrics, and the shop's health."""

    timing: PurchaseTimingModel | None = None
    repurchase: RepurchaseModel | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    spend: CustomerSpend | None = None
    health: ShopHealth | None = None
    notes: tuple[str, ...] = ()
    """Warnings raised while fitting, for the main thread to report in order."""
    seconds: float = 0.0


@dataclass(frozen=True, eq=False)
class RankingResult:
    """The published ALS model, the configuration it was fitted with, and how it scored."""

    model: ALSRecommender
    config: ALSConfig
    trials: list[dict[str, Any]]
    metrics: dict[str, Any]
    """``ranking`` (ALS and the baselines) and ``ranking_window``."""
    judged: ALSRecommender | None = None
    """The model fitted before the window and judged on it (the gate re-scores it)."""
    window: ranking.Split | None = None
    earlier: ALSRecommender | None = None
    """Fitted on the history before the ranker's label window (one window
    before the evaluation window), when the ranker is on."""
    two_stage: RankerResult | None = None
    """The two-stage ranker and the list chosen to serve (None: ALS's, untried)."""

    @property
    def served(self) -> str:
        """The list known customers are shown (see :class:`RankerResult`)."""
        return self.two_stage.serve if self.two_stage is not None else "als"


@dataclass(frozen=True, eq=False)
class Written:
    """A complete version on disk that passed its read-back, not yet published."""

    path: Path
    manifest: dict[str, Any]


# ------------------------------------------------------------------------- stages


def load(source: LogSource, run: Run) -> LoadedLog:
    """Read and check the log (and the catalog); refuse a log without purchases."""
    with run.step("load and check the log"):
        # Without --as-of, rows stamped after today are clock errors: count and drop them.
        tx = load_transactions(
            source.transactions,
            columns=source.columns,
            as_of=source.as_of or pd.Timestamp.now(tz="UTC").tz_localize(None).normalize(),
            strict=source.strict,
            event_weights=source.event_weights,
            time_format=source.time_format,
        )
        catalog, catalog_report = (None, None)
        if source.items_path is not None:
            catalog, catalog_report = load_catalog(
                source.items_path, columns=source.columns, strict=source.strict
            )
    rep = tx.report
    run.say(
        f"        {rep.rows_read:,} rows read, {rep.rows_kept:,} kept, "
        f"{rep.rows_dropped:,} dropped"
        + "".join(f"; {k}: {v:,}" for k, v in rep.dropped.items() if v)
    )
    if len(tx.purchases) == 0:
        raise TrainingError("the log has no purchase events; nothing to learn when customers buy")
    last_day = tx.frame["timestamp"].max().normalize()
    future = tx.future if source.as_of else None
    if future is not None and tx.has_events:
        future = future[future["event"].isin(PURCHASE_EVENTS)]
    return LoadedLog(
        tx=tx,
        catalog=catalog,
        catalog_report=catalog_report,
        end=as_of_cutoff(source.as_of or last_day),
        future=future,
    )


def prepare(log: LoadedLog, cfg: TrainConfig, run: Run) -> Prepared:
    """Encode the ids, leave out rarely bought items, and decide whether to rank."""
    frame, end = log.tx.frame, log.end
    eval_cut = end - pd.Timedelta(days=cfg.eval_days)
    customers, crow = IdIndex.encode(frame["customer_id"])
    items, irow = IdIndex.encode(frame["item_id"])
    if cfg.min_item_customers > 1:
        buyers = pd.Series(crow).groupby(irow).nunique().to_numpy()
        keep = buyers >= cfg.min_item_customers
        items = IdIndex(items.ids_[keep])
        remap = np.where(keep, np.cumsum(keep) - 1, -1)
        irow = remap[irow]
    frame = frame.assign(crow=crow, irow=irow)
    has_events = log.tx.has_events
    purchases = frame if not has_events else frame[frame["event"].isin(PURCHASE_EVENTS)]
    run.say(
        f"        {len(customers):,} customers, {len(items):,} items, "
        f"as of the end of {(end - pd.Timedelta(days=1)).date()}"
    )
    rankable = len(items) >= 2
    if not rankable:
        run.warn(
            f"ranking model skipped: the log has {len(items)} distinct item(s), so there is "
            "nothing to rank (a log without item detail, like CDNOW's); "
            "training the next-purchase model only"
        )
    elif frame["timestamp"].min() >= eval_cut:
        rankable = False
        run.warn(
            f"ranking model skipped: the log spans less than the {cfg.eval_days}-day "
            "evaluation window, so it cannot be evaluated; lower --eval-days"
        )
    return Prepared(
        frame=frame,
        purchases=purchases,
        customers=customers,
        items=items,
        has_events=has_events,
        end=end,
        eval_cut=eval_cut,
        rankable=rankable,
    )


def serving_tables(log: LoadedLog, data: Prepared, cfg: TrainConfig) -> ServingTables:
    """The purchase history, recent popularity, catalog and data fingerprint."""
    history = build_matrix(data.purchases.assign(weight=1.0), data.customers, data.items)
    popularity = recent_popularity(
        data.purchases, history, data.customers, data.items, data.end, cfg.popularity_days
    )
    return ServingTables(
        history=history,
        popularity=popularity,
        catalog=Catalog.from_frame(log.catalog, data.items),
        fingerprint=log.tx.fingerprint(),
    )


def fit_timing(log: LoadedLog, data: Prepared, cfg: TrainConfig) -> TimingResult:
    """Fit and judge the next-purchase, buy-again and spend models and measure
    the shop's health (silently: their warnings come back as notes, for
    :func:`finish_timing` to report)."""
    from training.timing_step import fit_timing_models

    notes: list[str] = []
    t0 = time.perf_counter()
    fitted = fit_timing_models(
        data.purchases,
        data.customers,
        data.items,
        data.end,
        cfg,
        warn=notes.append,
        future=log.future,
    )
    spend = None
    if fitted.spend is not None and fitted.spend_summary is not None:
        s = fitted.spend_summary
        spend = CustomerSpend(fitted.spend, s.frequency, s.monetary)
    return TimingResult(
        timing=fitted.timing,
        repurchase=fitted.repurchase,
        metrics=fitted.metrics,
        spend=spend,
        health=fitted.health,
        notes=tuple(notes),
        seconds=time.perf_counter() - t0,
    )


def finish_timing(job: Future[TimingResult] | None, run: Run) -> TimingResult:
    """Wait for :func:`fit_timing` started in the background (if it was) and report it."""
    if job is None:
        return TimingResult()
    with run.step("finish the next-purchase and buy-again models"):
        result = job.result()
    run.timings["next-purchase and buy-again models (own time)"] = round(result.seconds, 3)
    run.say(f"        they took {result.seconds:.2f}s in all, alongside the steps above")
    for note in result.notes:
        run.warn(note)
    return result


def split(data: Prepared, tables: ServingTables, cfg: TrainConfig, run: Run) -> ranking.Split:
    """Split off the evaluation window; refuse a window nobody with history buys in."""
    with run.step("split off the evaluation window"):
        window = _split_at(data, tables, cfg, data.eval_cut, data.end)
    run.say(
        f"        evaluation window {data.eval_cut.date()} .. "
        f"{(data.end - pd.Timedelta(days=1)).date()}:"
        f" {window.n_users:,} customers with history buy in it (evaluated)"
    )
    if window.n_users == 0:
        raise TrainingError(
            "no customer with history buys in the evaluation window; "
            "the model cannot be evaluated (check --as-of and --eval-days)"
        )
    return window


def judge_baselines(window: ranking.Split, cfg: TrainConfig, run: Run) -> dict[str, Any]:
    """Popularity, item-kNN and personal frequency on the window (when configured)."""
    if not cfg.run_baselines:
        return {}
    tifu = len(window.train) <= cfg.tifu_max_rows
    if not tifu:
        run.say(
            f"        TIFU-KNN not judged: the history has more than {cfg.tifu_max_rows:,} rows "
            "(its neighbour search would cost more than the ranker)"
        )
    with run.step("evaluate the baselines on the window"):
        return ranking.evaluate_baselines(window, tifu=tifu)


def fit_ranking(
    data: Prepared,
    tables: ServingTables,
    window: ranking.Split,
    baselines: dict[str, Any],
    cfg: TrainConfig,
    run: Run,
    *,
    show_progress: bool = False,
) -> RankingResult:
    """Search (when on), fit ALS on the history, judge it on the window, refit on everything."""
    chosen, trials = _choose_config(data, tables, cfg, run)
    earlier = None
    if cfg.ranker:
        # The ranker learns from features as of one window before the
        # evaluation window, ALS's among them: that model is fitted first,
        # and the one judged on the window is warm-started from it (as the
        # published one is from the judged one), so the chain costs one fit.
        start = data.eval_cut - pd.Timedelta(days=cfg.eval_days)
        seen = rows_in_time_range(data.frame, None, start)
        if len(seen):
            with run.step("fit ALS on the history before the ranker's label window"):
                earlier = ranking.fit_als(
                    ranking.weighted_matrix(seen, data.customers, data.items, chosen, now=start),
                    chosen,
                    cfg.seed,
                    iterations=chosen.history_iterations,
                    show_progress=show_progress,
                )
    with run.step("fit ALS on the history before the window"):
        matrix = ranking.weighted_matrix(
            window.train,
            data.customers,
            data.items,
            chosen,
            now=data.eval_cut,
            counts=window.counts,
        )
        judged = ranking.fit_als(
            matrix,
            chosen,
            cfg.seed,
            iterations=chosen.history_iterations if earlier is None else chosen.refit_iterations,
            warm_start=earlier,
            show_progress=show_progress,
        )
    with run.step("evaluate ALS on the window"):
        als_metrics = ranking.evaluate(judged, window)
    metrics = {
        "ranking": {"als": als_metrics, **baselines},
        "ranking_window": {
            "start": data.eval_cut.isoformat(),
            "end": data.end.isoformat(),
            "customers": window.n_users,
        },
    }
    with run.step("refit ALS on the whole log"):
        full = ranking.weighted_matrix(
            data.frame,
            data.customers,
            data.items,
            chosen,
            now=data.end,
            counts=_whole_log_counts(data, tables),
        )
        model = ranking.fit_als(
            full, chosen, cfg.seed, warm_start=judged, iterations=chosen.refit_iterations
        )
    return RankingResult(
        model=model,
        config=chosen,
        trials=trials,
        metrics=metrics,
        judged=judged,
        window=window,
        earlier=earlier,
    )


def fit_ranker(
    log: LoadedLog,
    data: Prepared,
    ranked: RankingResult,
    timing: TimingResult,
    cfg: TrainConfig,
    run: Run,
) -> RankingResult:
    """Train and judge the two-stage ranker; choose the served list (see
    :mod:`training.ranker_step`). A ranker that cannot be trained leaves ALS
    served, with a warning."""
    if not cfg.ranker or ranked.window is None:
        return ranked
    with run.step("two-stage ranker: train, judge, choose the served list"):
        try:
            result = fit_two_stage(
                frame=data.frame,
                purchases=data.purchases,
                customers=data.customers,
                items=data.items,
                catalog=log.catalog,
                eval_cut=data.eval_cut,
                end=data.end,
                window=ranked.window,
                ranked=ranked,
                baseline_metrics=ranked.metrics["ranking"],
                repurchase=timing.repurchase,
                timing_on=cfg.timing,
                cfg=cfg,
                say=run.say,
            )
        except Exception as exc:  # noqa: BLE001 - a weekly run must not die of its ranker
            run.warn(
                f"two-stage ranker not trained ({type(exc).__name__}: {exc}); serving ALS's list"
            )
            return ranked
    metrics = {
        **ranked.metrics,
        "ranking": {**ranked.metrics["ranking"], "ranker": result.metrics["ranker"]},
        "ranking_explore": result.metrics["ranking_explore"],
        "ranker_training": result.metrics["ranker_training"],
        "serving": {"list": result.serve, "explore": result.explore, "reason": result.reason},
    }
    return dataclasses.replace(ranked, metrics=metrics, two_stage=result)


def precompute_top_n(
    data: Prepared,
    tables: ServingTables,
    ranked: RankingResult | None,
    cfg: TrainConfig,
    run: Run,
) -> TopN | None:
    """Each known customer's top ``cfg.top_n`` for serving, unless that is too many scores."""
    if ranked is None or cfg.top_n <= 0:
        return None
    if ranked.served != "als":
        # the served list's own table (None: ranked per request, or popularity)
        return ranked.two_stage.table if ranked.two_stage is not None else None
    n_scores = float(len(data.customers)) * float(len(data.items))
    if n_scores > cfg.top_n_max_scores:
        run.say(
            f"        top-N not precomputed: {n_scores:.2g} scores exceeds "
            f"{cfg.top_n_max_scores:.2g}"
            "; serving will score exactly"
        )
        return None
    with run.step("precompute top-N for known customers"):
        return ranked.model.recommend(
            np.arange(len(data.customers)),
            tables.history,
            k=cfg.top_n,
            workers=ranking.ranking_workers(),
        )


def assemble_manifest(
    log: LoadedLog,
    tables: ServingTables,
    ranked: RankingResult | None,
    timing: TimingResult,
    cfg: TrainConfig,
    run: Run,
) -> dict[str, Any]:
    """The version's manifest, less what writing adds (files, components, shapes)."""
    chosen = ranked.config if ranked is not None else cfg.als
    metrics = {**(ranked.metrics if ranked is not None else {}), **timing.metrics}
    trials = ranked.trials if ranked is not None else []
    return {
        "as_of": log.end.isoformat(),
        "libraries": library_versions(),
        "config": {**cfg.to_dict(), "als_chosen": dataclasses.asdict(chosen)},
        "config_hash": cfg.hash(),
        "data": tables.fingerprint,
        "validation": log.tx.report.to_dict(),
        "catalog": log.catalog_report,
        "metrics": metrics,
        "search": {"trials": trials} if trials else None,
        "serving": metrics.get("serving") or {"list": "als" if ranked is not None else None},
        "warnings": run.warnings,
        "timings_s": run.timings,
    }


@contextmanager
def hold_store(models_dir: Path, wait_s: float, run: Run) -> Iterator[StoreLock]:
    """Hold the store's lock for the whole run, and clear what killed runs left.

    Raises :class:`recommender.store.lock.StoreLockedError` when another run
    holds it for longer than ``wait_s``. Under the lock no other run can be
    writing, so every ``.tmp-*`` entry is a killed run's leftover.
    """
    lock = StoreLock(models_dir, wait_s=wait_s, what="encore train")
    if wait_s > 0:
        run.say(f"        waiting up to {wait_s:g}s for the store's lock")
    with lock:
        removed = remove_stale_temporaries(models_dir, older_than_s=0)
        if removed:
            run.say(f"        removed {removed} leftover(s) of an interrupted run")
        yield lock


def gate(
    models_dir: Path,
    log: LoadedLog,
    data: Prepared,
    tables: ServingTables,
    ranked: RankingResult | None,
    topn: TopN | None,
    manifest: dict[str, Any],
    cfg: GateConfig,
    run: Run,
    *,
    force: bool = False,
    seed: int = 0,
) -> Verdict:
    """Judge the new version against the published one (see :mod:`recommender.gate`).

    The verdict goes into ``manifest["gate"]``; the version is written
    whatever it says, and published only if it passed (or ``force``).
    """
    with run.step("promotion gate"):
        metrics = manifest["metrics"]
        if ranked is not None and ranked.window is not None:
            _ensure_popularity(ranked, metrics, cfg.metric)
        name = current_version(models_dir)
        previous, note = None, None
        if name is not None:
            try:
                previous = read_manifest(models_dir / name)
            except ArtifactError as exc:
                note = f"the current version {name} is unreadable ({exc})"
                run.warn(f"gate: {note}; judging without it")
        top_items, top_scores = _active_top_lists(data, tables, ranked, topn, seed)
        rescored = None
        if previous is not None and ranked is not None:
            rescored, note = _rescore_current(models_dir, name, previous, data, ranked, cfg, seed)
        verdict = judge(
            Candidate(
                metrics=metrics,
                data=tables.fingerprint,
                validation=log.tx.report.to_dict(),
                top_items=top_items,
                top_scores=top_scores,
                n_items=len(data.items),
                rescored=rescored,
                rescore_note=note,
            ),
            previous,
            cfg,
            current_version=name,
            force=force,
        )
    manifest["gate"] = verdict.to_dict()
    against = f"against {name}" if previous is not None else "first version of this store"
    run.say(f"        gate {verdict.status} ({against}; {verdict.method or 'no comparison'})")
    for reason in verdict.reasons:
        run.say(f"        [gate] {reason}")
    if verdict.forced:
        run.warn("the gate held this version back; publishing it anyway (--force)")
    return verdict


def _ensure_popularity(ranked: RankingResult, metrics: dict[str, Any], metric: str) -> None:
    """Judge popularity on the window when the baselines were not run: the
    served list must beat it whatever the configuration."""
    table = metrics.setdefault("ranking", {})
    if "popularity" in table or ranked.window is None:
        return
    model = PopularityRecommender().fit(ranked.window.counts)
    table["popularity"] = {**ranking.evaluate(model, ranked.window), "for_gate_only": True}


def _active_top_lists(
    data: Prepared,
    tables: ServingTables,
    ranked: RankingResult | None,
    topn: TopN | None,
    seed: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Top-10 of customers who bought in the evaluation window (at most 10,000)."""
    if ranked is None:
        return None, None
    recent = data.purchases["timestamp"] >= data.eval_cut
    active = np.unique(data.purchases.loc[recent, "crow"].to_numpy())
    if len(active) > 10_000:
        active = np.sort(np.random.default_rng(seed).choice(active, 10_000, replace=False))
    if topn is not None:
        return topn[0][active, :10], topn[1][active, :10]
    two = ranked.two_stage
    if ranked.served == "ranker" and two is not None and two.ranker and two.stage:
        # ranked live: a sample of 2,000 shows collapsed or empty lists as well
        few = np.sort(np.random.default_rng(seed).permutation(active)[:2000])
        return rank_customers(two.stage, two.ranker, few, 10)
    return ranked.model.recommend(active, tables.history, k=10)


def _rescore_current(
    models_dir: Path,
    name: str | None,
    previous: dict[str, Any],
    data: Prepared,
    ranked: RankingResult,
    cfg: GateConfig,
    seed: int,
) -> tuple[dict[str, Any] | None, str | None]:
    """Both versions' served lists (ALS's or the ranker's) on the purchases of
    the window after the current version's day, trained on the same span of
    the log; or None and why not."""
    if ranked.judged is None or ranked.window is None:
        return None, "the new version has no judged ranking model"
    if ranked.served not in ("als", "ranker"):
        return None, f"the new version serves {ranked.served}'s table, which is not re-scored"
    try:
        trained_to = pd.Timestamp(previous["as_of"])
    except (KeyError, TypeError, ValueError):
        return None, "the current version's manifest has no as-of day"
    since = max(data.eval_cut, trained_to)
    if since >= data.end:
        return None, "the current version was trained on the whole evaluation window"
    try:
        current: Bundle = load_bundle(models_dir, name)
    except ArtifactError as exc:
        return None, f"the current version cannot be loaded ({exc})"
    current_list: ALSRecommender | Lists
    if current.served == "ranker" and current.ranker is not None and current.stage is not None:
        current_list = partial(rank_among, current.stage, current.ranker)
    elif current.served == "als" and current.als is not None:
        current_list = current.als
    else:
        return None, f"the current version serves {current.served}'s list, which is not re-scored"
    unseen = rows_in_time_range(data.purchases, since, data.end)
    relevant = build_matrix(unseen.assign(weight=1.0), data.customers, data.items)
    candidate = ranked.judged
    if since > data.eval_cut:
        # The judged model stops at the window's start, the current version at
        # its own day: a few warm-started sweeps on the log up to that day put
        # both on the same span, so the comparison is not tilted by weeks of data.
        seen = rows_in_time_range(data.frame, None, since)
        matrix = ranking.weighted_matrix(seen, data.customers, data.items, ranked.config, now=since)
        candidate = ranking.fit_als(
            matrix,
            ranked.config,
            seed,
            warm_start=ranked.judged,
            iterations=ranked.config.refit_iterations,
        )
    candidate_list: ALSRecommender | Lists = candidate
    two = ranked.two_stage
    if ranked.served == "ranker" and two is not None and two.judged is not None:
        # the ranker judged on the window (its labels end where the window
        # starts), with features as of the current version's day
        stage = two.stage_at(day_number(since), candidate)
        candidate_list = partial(rank_among, stage, two.judged)
    figures = rescore(
        candidate_list,
        data.customers,
        data.items,
        relevant,
        current_list,
        current.customers,
        current.items,
        cfg.metric,
        min_customers=cfg.min_rescore_customers,
    )
    if figures is None:
        return None, "too few customers and items both versions know buy in the window"
    since_text = since.date().isoformat()
    figures["method"] = (
        f"both re-scored on purchases from {since_text}, trained on the log before it"
    )
    figures["since"] = since.isoformat()
    return figures, None


def publish_stage(
    models_dir: Path, written: Written, verdict: Verdict, do_publish: bool, run: Run
) -> bool:
    """Point ``current`` at the new version if the gate let it through; say so."""
    if not do_publish:
        return False
    if not verdict.publishable:
        run.warn(
            f"version {written.path.name} held back by the gate; {current_version(models_dir)} "
            "stays current (encore models promote VERSION, or --force, to publish it anyway)"
        )
        return False
    publish_version(models_dir, written.path.name, "train", forced=verdict.forced)
    return True


def retire_old_versions(models_dir: Path, keep: int | None, run: Run) -> list[str]:
    """Delete all but the newest ``keep`` versions (never the current one or
    the rollback target)."""
    if not keep:
        return []
    removed = prune_versions(models_dir, keep=keep)
    if removed:
        run.say(f"        removed {len(removed)} old version(s): {', '.join(removed)}")
    return removed


def draw_calibration(timing: TimingResult) -> bytes | None:
    """The next-purchase model's reliability diagram (PNG), if it was judged."""
    judged = timing.metrics.get("timing", {})
    if "calibration" not in judged:
        return None
    from training.timing_step import calibration_report

    return calibration_report(judged)


def write_and_verify(
    models_dir: Path,
    *,
    data: Prepared,
    tables: ServingTables,
    ranked: RankingResult | None,
    topn: TopN | None,
    timing: TimingResult,
    manifest: dict[str, Any],
    calibration_plot: Future[bytes | None],
    run: Run,
    report: Callable[[Bundle, bytes | None], bytes] | None = None,
    purchase_log: Future[bytes] | None = None,
) -> Written:
    """Write the version atomically and read it back as serving will.

    ``purchase_log`` is the ``purchases.npz`` file, when already being
    built (else it is built here). ``calibration_plot`` is awaited after the
    arrays are written; a plot that
    failed is a warning, not a failed run. ``report`` draws ``report.html``
    from the version as serving will hold it (built in memory from the very
    arrays written) and the plot; it is written, and hashed, before the
    version is committed. A version that fails its read-back is deleted,
    never left looking complete.
    """

    def plot() -> bytes | None:
        try:
            return calibration_plot.result()
        except Exception as exc:  # a missing picture must not stop the publish
            run.warn(f"calibration plot not written: {exc}")
            return None

    manifest["timings_s"]["total"] = round(time.perf_counter() - run.started, 3)
    health = timing.health.to_dict() if timing.health is not None else None
    als = ranked.model if ranked is not None else None
    two = ranked.two_stage if ranked is not None else None
    with_ranker = (
        (two.ranker, two.stage, two.probe)
        if two is not None and two.ranker is not None and two.stage is not None
        else None
    )
    version = new_version_name()
    manifest.setdefault("created_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    drawn: list[bytes | None] = []
    drawing = threading.Lock()

    def plot_once() -> bytes | None:
        with drawing:  # asked for by the page's thread and by the writer
            if not drawn:
                drawn.append(plot())
            return drawn[0]

    def html() -> bytes | None:
        if report is None:
            return None
        in_memory = Bundle(
            version=version,
            path=models_dir / version,
            manifest={**manifest, "version": version},
            customers=data.customers,
            items=data.items,
            history=tables.history,
            popularity=tables.popularity,
            catalog=tables.catalog,
            als=als,
            topn_items=topn[0] if topn is not None else None,
            topn_scores=topn[1] if topn is not None else None,
            timing=timing.timing,
            repurchase=timing.repurchase,
            spend=timing.spend,
            health=health,
            ranker=with_ranker[0] if with_ranker else None,
            stage=with_ranker[1] if with_ranker else None,
        )
        try:
            return report(in_memory, plot_once())
        except Exception as exc:  # a missing page must not stop the publish
            run.warn(f"report.html not written: {type(exc).__name__}: {exc}")
            return None

    # The page and the purchase log are built from memory on a second thread
    # while this one writes the arrays.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encore-pages") as pages:
        page = pages.submit(html)
        log = purchase_log or pages.submit(purchase_log_bytes, data.purchases, len(data.customers))
        path = save_bundle(
            models_dir,
            customers=data.customers,
            items=data.items,
            history=tables.history,
            popularity=tables.popularity,
            catalog=tables.catalog,
            manifest=manifest,
            als=als,
            topn=topn,
            timing=timing.timing,
            repurchase=timing.repurchase,
            spend=timing.spend,
            health=health,
            ranker=with_ranker,
            version=version,
            reports={
                "timing_calibration.png": plot_once,
                "report.html": page.result,
                PURCHASES_FILE: log.result,
            },
        )
    # The file hashes were taken from these very files a moment ago (and
    # serving checks them when it loads): hashing them again here would only
    # read the page cache twice.
    try:
        bundle = load_bundle_dir(path, verify_hashes=False)
        if bundle.als is not None and als is not None and len(data.customers):
            probe = np.arange(min(len(data.customers), 64))
            a, _ = als.recommend(probe, tables.history, k=10)
            b, _ = bundle.als.recommend(probe, bundle.history, k=10)
            if not np.array_equal(a, b):
                raise TrainingError(f"{path}: saved model does not reproduce its recommendations")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return Written(path=path, manifest=bundle.manifest)


# ------------------------------------------------------------------ stage helpers


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("encore", "implicit", "numpy", "scipy", "pandas", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def recent_popularity(
    purchases: pd.DataFrame,
    history: sp.csr_matrix,
    customers: IdIndex,
    items: IdIndex,
    end: pd.Timestamp,
    days: int,
) -> np.ndarray:
    """Distinct buyers per item over the last ``days`` (all time for items with none).

    ``history`` is the customer x item matrix of all ``purchases``.
    """
    recent = purchases[purchases["timestamp"] >= end - pd.Timedelta(days=days)]
    m = build_matrix(recent.assign(weight=1.0), customers, items)
    pop = np.bincount(m.indices, minlength=len(items)).astype(np.float32)
    # all-time buyers break ties and rank items with no recent sale
    pop_all = np.bincount(history.indices, minlength=len(items)).astype(np.float32)
    score = pop + pop_all / (pop_all.max(initial=0.0) + 1.0)
    return (score / max(score.max(initial=0.0), 1e-12)).astype(np.float32)


def _whole_log_counts(data: Prepared, tables: ServingTables) -> sp.csr_matrix | None:
    """The summed row weights of the whole log, when they are already built: in
    a log of orders alone every row weighs 1, so they are the purchase history."""
    return None if data.has_events else tables.history


def _split_at(
    data: Prepared,
    tables: ServingTables,
    cfg: TrainConfig,
    cut: pd.Timestamp,
    stop: pd.Timestamp,
) -> ranking.Split:
    return ranking.make_split(
        data.frame,
        data.purchases,
        data.customers,
        data.items,
        cut,
        stop,
        max_users=cfg.max_eval_customers,
        seed=cfg.seed,
        total=_whole_log_counts(data, tables),
    )


def _choose_config(
    data: Prepared, tables: ServingTables, cfg: TrainConfig, run: Run
) -> tuple[ALSConfig, list[dict[str, Any]]]:
    """The ALS configuration to fit, searched on the window before the evaluation
    window when the search is on, and the trials of that search."""
    search_on = cfg.search.enabled
    rows = len(data.frame)
    if search_on is None:
        search_on = rows <= cfg.search.auto_max_rows
        run.say(
            f"        search {'on' if search_on else 'off'}: the log has {rows:,} rows "
            f"({'at most' if search_on else 'more than'} {cfg.search.auto_max_rows:,}; "
            f"{'--no-search' if search_on else '--search'} to change)"
        )
    if not search_on:
        return cfg.als, []
    with run.step("hyperparameter search on the validation window"):
        cut = data.eval_cut
        val = _split_at(data, tables, cfg, cut - pd.Timedelta(days=cfg.eval_days), cut)
        if val.n_users == 0:
            run.warn("search skipped: no customer buys in the validation window")
            return cfg.als, []
        return run_search(
            val,
            data.customers,
            data.items,
            cfg.als,
            cfg.search,
            on_trial=lambda i, c, m: run.say(
                f"        trial {i + 1}: nDCG@10 {m['ndcg@10']:.4f} "
                f"factors={c.factors} reg={c.regularization} alpha={c.alpha} "
                f"w={c.weighting} half-life={c.half_life_days} it={c.iterations}"
            ),
        )
