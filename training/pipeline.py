"""``encore train``: from a transaction log to an evaluated, published model version.

Steps: load and check the log; split off the last ``eval_days`` as an
evaluation window; search ALS hyperparameters on the window before it (by
default only on logs small enough for that to take seconds); fit ALS on the
history before the window and judge it and the baselines on the window; refit
on the whole log (warm-started). The next-purchase and buy-it-again models
are fitted and judged in a background thread while the log is split and the
baselines are judged, and before ALS starts. Then write the version
atomically; read it back and check it; only then switch ``current``. A crash
anywhere leaves the published version as it was.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import logging
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.data.interactions import build_matrix
from recommender.data.transactions import (
    PURCHASE_EVENTS,
    as_of_cutoff,
    load_catalog,
    load_transactions,
)
from recommender.ranking.als import ALSRecommender
from recommender.store.artifacts import publish, remove_stale_temporaries
from recommender.store.bundle import Catalog, load_bundle_dir, save_bundle
from training import ranking
from training.config import ALSConfig, TrainConfig
from training.search import search as run_search

if TYPE_CHECKING:  # imported when used: a run with --no-timing never loads them
    from recommender.timing.repurchase import RepurchaseModel
    from recommender.timing.selection import PurchaseTimingModel

log = logging.getLogger("encore.train")


class TrainingError(RuntimeError):
    """Training cannot produce a publishable version; the published one is untouched."""


@dataclass
class TrainResult:
    """What a run built and where."""

    version: str
    path: Path
    manifest: dict[str, Any]
    published: bool
    warnings: list[str] = field(default_factory=list)


Reporter = Callable[[str], None]


@contextmanager
def _step(name: str, timings: dict[str, float], say: Reporter) -> Iterator[None]:
    say(f"[step] {name} ...")
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)
    say(f"[done] {name} in {timings[name]:.2f}s")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("encore", "implicit", "numpy", "scipy", "pandas", "pyarrow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def to_days(ts: pd.Series | np.ndarray) -> np.ndarray:
    """Timestamps as float days since the Unix epoch."""
    arr = np.asarray(ts, dtype="datetime64[s]").astype(np.int64)
    return arr / 86400.0


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


def _fit_ranking(
    frame: pd.DataFrame,
    purchases: pd.DataFrame,
    customers: IdIndex,
    items: IdIndex,
    eval_cut: pd.Timestamp,
    end: pd.Timestamp,
    cfg: TrainConfig,
    *,
    counts: sp.csr_matrix | None,
    before_als: Callable[[], None],
    timings: dict[str, float],
    say: Reporter,
    warn: Reporter,
    show_progress: bool,
) -> tuple[ALSRecommender, ALSConfig, list[dict[str, Any]], dict[str, Any]]:
    """Split, judge the baselines on the window, search (when on), fit ALS on
    the history, judge it on the window, refit on everything: ``(model, chosen
    config, search trials, metrics)``. ``counts``, when given, is the summed
    row weights of the whole ``frame``, all purchases of weight 1 (built once
    by the caller; the splits and the refit start from it);
    ``before_als`` is called once, before the first ALS fit."""
    chosen = cfg.als
    trials: list[dict[str, Any]] = []

    def split_at(cut: pd.Timestamp, stop: pd.Timestamp) -> ranking.Split:
        return ranking.make_split(
            frame,
            purchases,
            customers,
            items,
            cut,
            stop,
            max_users=cfg.max_eval_customers,
            seed=cfg.seed,
            total=counts,
        )

    with _step("split off the evaluation window", timings, say):
        split = split_at(eval_cut, end)
    say(
        f"        evaluation window {eval_cut.date()} .. {(end - pd.Timedelta(days=1)).date()}:"
        f" {split.n_users:,} customers with history buy in it (evaluated)"
    )
    if split.n_users == 0:
        raise TrainingError(
            "no customer with history buys in the evaluation window; "
            "the model cannot be evaluated (check --as-of and --eval-days)"
        )
    baselines: dict[str, Any] = {}
    if cfg.run_baselines:
        with _step("evaluate the baselines on the window", timings, say):
            baselines = ranking.evaluate_baselines(split)
    before_als()
    search_on = cfg.search.enabled
    if search_on is None:
        search_on = len(frame) <= cfg.search.auto_max_rows
        say(
            f"        search {'on' if search_on else 'off'}: the log has {len(frame):,} rows "
            f"({'at most' if search_on else 'more than'} {cfg.search.auto_max_rows:,}; "
            f"{'--no-search' if search_on else '--search'} to change)"
        )
    if search_on:
        with _step("hyperparameter search on the validation window", timings, say):
            val_split = split_at(eval_cut - pd.Timedelta(days=cfg.eval_days), eval_cut)
            if val_split.n_users == 0:
                warn("search skipped: no customer buys in the validation window")
            else:
                chosen, trials = run_search(
                    val_split,
                    customers,
                    items,
                    cfg.als,
                    cfg.search,
                    on_trial=lambda i, c, m: say(
                        f"        trial {i + 1}: nDCG@10 {m['ndcg@10']:.4f} "
                        f"factors={c.factors} reg={c.regularization} alpha={c.alpha} "
                        f"w={c.weighting} half-life={c.half_life_days} it={c.iterations}"
                    ),
                )
    with _step("fit ALS on the history before the window", timings, say):
        matrix = ranking.weighted_matrix(
            split.train, customers, items, chosen, now=eval_cut, counts=split.counts
        )
        eval_model = ranking.fit_als(
            matrix,
            chosen,
            cfg.seed,
            iterations=chosen.history_iterations,
            show_progress=show_progress,
        )
    with _step("evaluate ALS on the window", timings, say):
        als_metrics = ranking.evaluate(eval_model, split)
    metrics = {
        "ranking": {"als": als_metrics, **baselines},
        "ranking_window": {
            "start": eval_cut.isoformat(),
            "end": end.isoformat(),
            "customers": split.n_users,
        },
    }
    with _step("refit ALS on the whole log", timings, say):
        full = ranking.weighted_matrix(frame, customers, items, chosen, now=end, counts=counts)
        als_model = ranking.fit_als(
            full,
            chosen,
            cfg.seed,
            warm_start=eval_model,
            iterations=chosen.refit_iterations,
        )
    return als_model, chosen, trials, metrics


def _fit_timing_in_background(
    purchases: pd.DataFrame,
    customers: IdIndex,
    items: IdIndex,
    end: pd.Timestamp,
    cfg: TrainConfig,
    future: pd.DataFrame | None,
) -> tuple[PurchaseTimingModel | None, RepurchaseModel | None, dict[str, Any], list[str], float]:
    """:func:`fit_timing_models` with its warnings kept for the main thread to
    print in order, and its own duration."""
    from training.timing_step import fit_timing_models

    notes: list[str] = []
    t0 = time.perf_counter()
    timing, repurchase, metrics = fit_timing_models(
        purchases, customers, items, end, cfg, warn=notes.append, future=future
    )
    return timing, repurchase, metrics, notes, time.perf_counter() - t0


def train(
    transactions: str | Path,
    *,
    items_path: str | Path | None = None,
    columns: dict[str, str] | None = None,
    models_dir: str | Path = "models",
    as_of: str | None = None,
    strict: bool = False,
    event_weights: dict[str, float] | None = None,
    time_format: str | None = None,
    config: TrainConfig | None = None,
    do_publish: bool = True,
    say: Reporter = print,
    show_progress: bool = False,
) -> TrainResult:
    """Train, evaluate and publish a model version; see the module docstring.

    Raises
    ------
    recommender.data.DataError
        The log or catalog cannot be used.
    TrainingError
        A model cannot be fitted or fails its checks.
    """
    cfg = config or TrainConfig()
    timings: dict[str, float] = {}
    warnings: list[str] = []
    t_start = time.perf_counter()

    def warn(msg: str) -> None:
        warnings.append(msg)
        say(f"[warn] {msg}")

    with _step("load and check the log", timings, say):
        # Without --as-of, rows stamped after today are clock errors: count and drop them.
        tx = load_transactions(
            transactions,
            columns=columns,
            as_of=as_of or pd.Timestamp.now(tz="UTC").tz_localize(None).normalize(),
            strict=strict,
            event_weights=event_weights,
            time_format=time_format,
        )
        catalog_frame, catalog_report = (None, None)
        if items_path is not None:
            catalog_frame, catalog_report = load_catalog(items_path, columns=columns, strict=strict)
    rep = tx.report
    say(
        f"        {rep.rows_read:,} rows read, {rep.rows_kept:,} kept, "
        f"{rep.rows_dropped:,} dropped"
        + "".join(f"; {k}: {v:,}" for k, v in rep.dropped.items() if v)
    )

    frame = tx.frame
    if len(tx.purchases) == 0:
        raise TrainingError("the log has no purchase events; nothing to learn when customers buy")
    end = as_of_cutoff(as_of) if as_of else as_of_cutoff(frame["timestamp"].max().normalize())
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
    purchases = frame if not tx.has_events else frame[frame["event"].isin(PURCHASE_EVENTS)]
    say(
        f"        {len(customers):,} customers, {len(items):,} items, "
        f"as of the end of {(end - pd.Timedelta(days=1)).date()}"
    )

    metrics: dict[str, Any] = {}
    als_model = None
    chosen = cfg.als
    trials: list[dict[str, Any]] = []
    rank_ok = len(items) >= 2
    if not rank_ok:
        warn(
            f"ranking model skipped: the log has {len(items)} distinct item(s), so there is "
            "nothing to rank (a log without item detail, like CDNOW's); "
            "training the next-purchase model only"
        )
    if rank_ok and frame["timestamp"].min() >= eval_cut:
        rank_ok = False
        warn(
            f"ranking model skipped: the log spans less than the {cfg.eval_days}-day "
            "evaluation window, so it cannot be evaluated; lower --eval-days"
        )

    # The timing models need only the purchases: they are fitted in a
    # background thread (their numpy and scipy work releases the GIL) while
    # the log is split and the baselines are judged, and ALS waits for them.
    # ALS keeps both cores busy and is bound by memory access: in three
    # alternating runs on the 5M-row bench log its fit on the history took
    # 42-49 s beside them and 29-41 s after them, which took 7.7-8.8 s alone.
    timing_model = repurchase_model = None
    timing_metrics: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encore-timing") as background:
        timing_job = None
        if cfg.timing:
            future = tx.future if as_of else None
            if future is not None and tx.has_events:
                future = future[future["event"].isin(PURCHASE_EVENTS)]
            timing_job = background.submit(
                _fit_timing_in_background, purchases, customers, items, end, cfg, future
            )
            say("        next-purchase and buy-again models: fitting in the background")

        def finish_timing() -> None:
            nonlocal timing_job, timing_model, repurchase_model, timing_metrics
            if timing_job is None:
                return
            with _step("finish the next-purchase and buy-again models", timings, say):
                timing_model, repurchase_model, timing_metrics, notes, seconds = timing_job.result()
            timing_job = None
            timings["next-purchase and buy-again models (own time)"] = round(seconds, 3)
            say(f"        they took {seconds:.2f}s in all, alongside the steps above")
            for note in notes:
                warn(note)

        # Purchases per customer and item: what serving ranks from and leaves
        # out. In a log of orders alone every row weighs 1, so it is also the
        # whole log's counts that ALS is refitted on.
        history = build_matrix(purchases.assign(weight=1.0), customers, items)
        # The rest of what serving reads besides the models, and the data
        # fingerprint, are built here while the background fit runs.
        popularity = recent_popularity(
            purchases, history, customers, items, end, cfg.popularity_days
        )
        catalog = Catalog.from_frame(catalog_frame, items)
        fingerprint = tx.fingerprint()
        if rank_ok:
            als_model, chosen, trials, rank_metrics = _fit_ranking(
                frame,
                purchases,
                customers,
                items,
                eval_cut,
                end,
                cfg,
                counts=None if tx.has_events else history,
                before_als=finish_timing,
                timings=timings,
                say=say,
                warn=warn,
                show_progress=show_progress,
            )
            metrics.update(rank_metrics)
        finish_timing()  # when there is no ranking model to wait before
    metrics.update(timing_metrics)

    topn = None
    n_scores = float(len(customers)) * float(len(items))
    if als_model is not None and cfg.top_n > 0 and n_scores > cfg.top_n_max_scores:
        say(
            f"        top-N not precomputed: {n_scores:.2g} scores exceeds "
            f"{cfg.top_n_max_scores:.2g}"
            "; serving will score exactly"
        )
    elif als_model is not None and cfg.top_n > 0:
        with _step("precompute top-N for known customers", timings, say):
            topn = als_model.recommend(
                np.arange(len(customers)), history, k=cfg.top_n, workers=ranking.ranking_workers()
            )

    manifest = {
        "as_of": end.isoformat(),
        "libraries": library_versions(),
        "config": {**cfg.to_dict(), "als_chosen": dataclasses.asdict(chosen)},
        "config_hash": cfg.hash(),
        "data": fingerprint,
        "validation": rep.to_dict(),
        "catalog": catalog_report,
        "metrics": metrics,
        "search": {"trials": trials} if trials else None,
        "warnings": warnings,
        "timings_s": timings,
    }
    with (
        _step("write and check the model version", timings, say),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="encore-report") as drawing,
    ):
        # The calibration plot is drawn on the core that writing leaves idle.
        reports: dict[str, Callable[[], bytes | None]] = {}
        if "calibration" in metrics.get("timing", {}):
            from training.timing_step import calibration_report

            plot = drawing.submit(calibration_report, metrics["timing"])

            def calibration_plot() -> bytes | None:
                try:
                    return plot.result()
                except Exception as exc:  # a missing picture must not stop the publish
                    warn(f"calibration plot not written: {exc}")
                    return None

            reports["timing_calibration.png"] = calibration_plot
        models_dir = Path(models_dir)
        remove_stale_temporaries(models_dir)
        manifest["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
        path = save_bundle(
            models_dir,
            customers=customers,
            items=items,
            history=history,
            popularity=popularity,
            catalog=catalog,
            manifest=manifest,
            als=als_model,
            topn=topn,
            timing=timing_model,
            repurchase=repurchase_model,
            reports=reports,
        )
        # Read back exactly what serving will read before anyone is pointed at
        # it; a version that fails is deleted, never left looking complete.
        # The file hashes were taken from these very files a moment ago (and
        # serving checks them when it loads): hashing 250 MB again here would
        # only read the page cache twice.
        try:
            bundle = load_bundle_dir(path, verify_hashes=False)
            if bundle.als is not None and als_model is not None and len(customers):
                probe = np.arange(min(len(customers), 64))
                a, _ = als_model.recommend(probe, history, k=10)
                b, _ = bundle.als.recommend(probe, bundle.history, k=10)
                if not np.array_equal(a, b):
                    raise TrainingError(
                        f"{path}: saved model does not reproduce its recommendations"
                    )
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
    if do_publish:
        publish(models_dir, path.name)
    return TrainResult(
        version=path.name,
        path=path,
        manifest=bundle.manifest,
        published=do_publish,
        warnings=warnings,
    )
