"""``encore train``: from a transaction log to an evaluated, published model version.

:func:`train` reads as the list of its stages (each in :mod:`training.stages`):
load and check the log; prepare it (ids, the items left out, whether it can
be ranked); fit the next-purchase and buy-it-again models; build what serving
reads (history, popularity, catalog) and the data fingerprint; split off the
last ``eval_days`` as an evaluation window and judge the baselines on it; fit
ALS (search its hyperparameters on the window before, by default only on logs
small enough for that to take seconds; fit on the history before the window
and judge it; refit on the whole log, warm-started); precompute top-N;
assemble the manifest; judge it against the published version (the
promotion gate); write the version atomically and read it back; only then,
and only if the gate let it through, switch ``current``; delete versions
beyond ``keep``. The whole run holds the store's lock. A crash anywhere
leaves the published version as it was.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recommender.gate import GateConfig, Verdict
from recommender.purchases import purchase_log_bytes
from training import stages
from training.config import TrainConfig
from training.report import render_report
from training.stages import LogSource, Reporter, Run, TrainingError

__all__ = ["TrainResult", "TrainingError", "train"]


@dataclass
class TrainResult:
    """What a run built and where."""

    version: str
    path: Path
    manifest: dict[str, Any]
    published: bool
    verdict: Verdict | None = None
    """The promotion gate's decision (passed, held back, or forced)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def held_back(self) -> bool:
        """Trained and written, but the gate kept it from being published."""
        return self.verdict is not None and not self.verdict.publishable


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
    gate: GateConfig | None = None,
    force: bool = False,
    wait_s: float = 0.0,
    keep: int | None = None,
    say: Reporter = print,
    show_progress: bool = False,
) -> TrainResult:
    """Train, evaluate, judge and publish a model version; see the module docstring.

    Raises
    ------
    recommender.data.DataError
        The log or catalog cannot be used.
    TrainingError
        A model cannot be fitted or fails its checks.
    recommender.store.lock.StoreLockedError
        Another run holds the store for longer than ``wait_s`` seconds.
    """
    cfg = config or TrainConfig()
    models = Path(models_dir)
    run = Run(say)
    source = LogSource(
        transactions,
        items_path=items_path,
        columns=columns,
        as_of=as_of,
        strict=strict,
        event_weights=event_weights,
        time_format=time_format,
    )
    with (
        stages.hold_store(models, wait_s, run),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="encore-log") as aside,
    ):
        log = stages.load(source, run)
        data = stages.prepare(log, cfg, run)
        # The purchase log the version keeps (for the console) needs only the
        # prepared purchases: it is built on a core the steps before ALS leave
        # idle instead of while the version is written.
        purchase_log = aside.submit(purchase_log_bytes, data.purchases, len(data.customers))
        # What runs beside what is decided here. The timing models need only the
        # purchases, and their numpy and scipy work releases the GIL: they are
        # fitted in a background thread while the serving tables are built, the
        # log is split and the baselines are judged. ALS waits for them: it keeps
        # both cores busy, is bound by memory access, and runs slower beside them.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encore-timing") as background:
            timing_job = None
            if cfg.timing:
                timing_job = background.submit(stages.fit_timing, log, data, cfg)
                say("        next-purchase and buy-again models: fitting in the background")
            tables = stages.serving_tables(log, data, cfg)
            window = stages.split(data, tables, cfg, run) if data.rankable else None
            baselines = stages.judge_baselines(window, cfg, run) if window is not None else {}
            timing = stages.finish_timing(timing_job, run)
        ranked = None
        if window is not None:
            ranked = stages.fit_ranking(
                data, tables, window, baselines, cfg, run, show_progress=show_progress
            )
            ranked = stages.fit_ranker(log, data, ranked, timing, cfg, run)
        topn = stages.precompute_top_n(data, tables, ranked, cfg, run)
        manifest = stages.assemble_manifest(log, tables, ranked, timing, cfg, run)
        verdict = stages.gate(
            models, log, data, tables, ranked, topn, manifest, gate or GateConfig(), run,
            force=force, seed=cfg.seed,
        )  # fmt: skip
        with (
            run.step("write and check the model version"),
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="encore-report") as drawing,
        ):
            # The calibration plot is drawn on the core that writing leaves idle.
            written = stages.write_and_verify(
                models,
                data=data,
                tables=tables,
                ranked=ranked,
                topn=topn,
                timing=timing,
                manifest=manifest,
                calibration_plot=drawing.submit(stages.draw_calibration, timing),
                run=run,
                report=lambda bundle, plot: render_report(bundle, plot, seed=cfg.seed),
                purchase_log=purchase_log,
            )
        published = stages.publish_stage(models, written, verdict, do_publish, run)
        stages.retire_old_versions(models, keep, run)
    return TrainResult(
        version=written.path.name,
        path=written.path,
        manifest=written.manifest,
        published=published,
        verdict=verdict,
        warnings=run.warnings,
    )
