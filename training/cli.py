"""The ``encore`` command line: train, recommend, next-purchase, demo, serve.

Errors the user can fix (a bad file, a bad option, no model) are one line on
stderr and exit code 2; nothing prints a traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

# implicit parallelises across users itself; BLAS threads on top oversubscribe.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from recommender.data.transactions import (
    DataError,
    parse_column_map,
    parse_event_weights,
)  # noqa: E402
from recommender.store.artifacts import ArtifactError  # noqa: E402

EXIT_USAGE = 2


class CLIError(Exception):
    """A problem the user can fix; printed as one line."""


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="encore",
        description="Recommendations and next-purchase timing from a shop's order history.",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train, evaluate and publish a model version")
    t.add_argument("--transactions", required=True, help="CSV, .csv.gz or Parquet order log")
    t.add_argument("--items", help="optional item catalog (item_id,title,category,price,available)")
    t.add_argument("--columns", help="map columns: customer_id=CustomerID,item_id=StockCode,...")
    t.add_argument("--models-dir", default="models", help="artifact store (default: models)")
    t.add_argument("--as-of", help="train as if this day (YYYY-MM-DD) were today")
    t.add_argument("--strict", action="store_true", help="fail on the first bad row")
    t.add_argument("--event-weights", help="weights per event type: view=0.1,cart=0.5,purchase=1")
    t.add_argument(
        "--time-format", help="strftime pattern for non-ISO times, e.g. %%m/%%d/%%Y %%H:%%M"
    )
    t.add_argument("--eval-days", type=_positive_int, default=28, help="evaluation window (days)")
    t.add_argument(
        "--timing-days",
        type=_positive_float,
        help="window for judging the next-purchase model (days)",
    )
    t.add_argument(
        "--timing-p-days",
        type=_positive_float,
        help="horizon of the judged probability of buying (days)",
    )
    srch = t.add_mutually_exclusive_group()
    srch.add_argument(
        "--search",
        dest="search",
        action="store_true",
        default=None,
        help="search ALS hyperparameters (default: only for logs of at most 1,000,000 rows)",
    )
    srch.add_argument(
        "--no-search", dest="search", action="store_false", help="use the default ALS settings"
    )
    t.add_argument("--search-budget", type=_positive_float, default=120.0, help="seconds")
    t.add_argument("--search-trials", type=_positive_int, default=12)
    t.add_argument("--factors", type=_positive_int)
    t.add_argument(
        "--iterations", type=_positive_int, help="ALS sweeps of the published model (default 15)"
    )
    t.add_argument("--regularization", type=_positive_float)
    t.add_argument("--alpha", type=_positive_float)
    t.add_argument("--weighting", choices=["raw", "log", "bm25", "tfidf"])
    t.add_argument("--half-life-days", type=_positive_float, help="recency decay of order lines")
    t.add_argument("--no-baselines", action="store_true", help="skip the baseline models")
    t.add_argument("--no-timing", action="store_true", help="skip the next-purchase model")
    t.add_argument("--top-n", type=int, default=100, help="picks precomputed per customer")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-publish", action="store_true", help="write the version, keep current")

    r = sub.add_parser(
        "recommend",
        help="write top-k picks as CSV or Parquet",
        description="Write each customer's top-k picks: the ones the API's "
        "/v1/customers/{id}/recommendations gives them under the same rules "
        "(customers the model has not seen get popular items).",
    )
    r.add_argument("--models-dir", default="models")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--customers", help="file with a customer_id column or one id per line")
    g.add_argument("--all", action="store_true", help="every customer the model knows")
    r.add_argument("-k", type=_positive_int, default=10)
    r.add_argument(
        "--category",
        action="append",
        metavar="NAME",
        help="only items of this catalogue category (repeat for several)",
    )
    r.add_argument(
        "--exclude-items", nargs="+", action="extend", metavar="ID", help="item ids never to show"
    )
    bought = r.add_mutually_exclusive_group()
    bought.add_argument(
        "--include-purchased",
        dest="exclude_purchased",
        action="store_false",
        help="also show items a customer already bought (by default they are hidden, "
        "except items people buy again, as the API does)",
    )
    bought.add_argument(
        "--exclude-purchased",
        dest="exclude_purchased",
        action="store_true",
        help="hide items a customer already bought, except repurchase items (the default)",
    )
    avail = r.add_mutually_exclusive_group()
    avail.add_argument(
        "--available-only",
        dest="available_only",
        action="store_const",
        const=True,
        help="hide items the catalogue marks unavailable (the default when it marks any)",
    )
    avail.add_argument(
        "--all-items",
        dest="available_only",
        action="store_const",
        const=False,
        help="show unavailable items too",
    )
    r.set_defaults(exclude_purchased=True, available_only=None)
    r.add_argument("--out", default="recommendations.csv", help=".csv or .parquet")

    n = sub.add_parser("next-purchase", help="write each customer's next-purchase figures")
    n.add_argument("--models-dir", default="models")
    n.add_argument("--horizon-days", type=_positive_float, default=30.0)
    n.add_argument("--customers", help="file with a customer_id column (default: all)")
    n.add_argument("--out", default="next_purchase.csv", help=".csv or .parquet")

    d = sub.add_parser("demo", help="generate the demo shop, train on it, then serve it")
    d.add_argument("--dir", default="demo", help="where the demo shop's files go")
    d.add_argument("--models-dir", default="models")
    d.add_argument("--preset", default="demo", choices=["demo", "grocery", "fashion"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-serve", action="store_true", help="stop after training")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8000)

    g2 = sub.add_parser("generate", help="write a generated shop (transactions.csv, items.csv)")
    g2.add_argument("--dir", required=True)
    g2.add_argument("--preset", default="demo", choices=["demo", "grocery", "fashion"])
    g2.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("serve", help="run the HTTP API on the published version")
    s.add_argument("--models-dir", default="models")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=_positive_int, default=1)
    return p


def _console() -> Any:
    from rich.console import Console

    # wide enough for the metric tables when output goes to a file or CI log
    return Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 140)


def cmd_train(args: argparse.Namespace) -> int:
    from training.config import ALSConfig, SearchConfig, TrainConfig
    from training.pipeline import train
    from training.summary import print_summary

    als_over = {
        k: getattr(args, k)
        for k in ("factors", "iterations", "regularization", "alpha", "weighting", "half_life_days")
        if getattr(args, k) is not None
    }
    cfg = TrainConfig(
        eval_days=args.eval_days,
        timing_horizon_days=args.timing_days,
        timing_p_horizon_days=args.timing_p_days,
        seed=args.seed,
        top_n=max(args.top_n, 0),
        run_baselines=not args.no_baselines,
        timing=not args.no_timing,
        als=dataclasses.replace(ALSConfig(), **als_over),
        search=SearchConfig(
            enabled=args.search, time_budget_s=args.search_budget, max_trials=args.search_trials
        ),
    )
    console = _console()
    result = train(
        args.transactions,
        items_path=args.items,
        columns=parse_column_map(args.columns),
        models_dir=args.models_dir,
        as_of=args.as_of,
        strict=args.strict,
        event_weights=parse_event_weights(args.event_weights),
        time_format=args.time_format,
        config=cfg,
        do_publish=not args.no_publish,
        say=lambda m: console.print(m, markup=False),
        show_progress=sys.stderr.isatty(),
    )
    print_summary(result, console)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from recommender.store.bundle import load_bundle
    from training.export import export_recommendations, read_customer_list

    bundle = load_bundle(args.models_dir)
    ids = None if args.all else read_customer_list(args.customers)
    t0 = time.perf_counter()
    stats = export_recommendations(
        bundle,
        args.out,
        customer_ids=ids,
        k=args.k,
        categories=args.category,
        exclude_items=args.exclude_items,
        exclude_purchased=args.exclude_purchased,
        available_only=args.available_only,
    )
    print(
        f"wrote {args.out}: {stats['personalized']:,} customers personalised, "
        f"{stats['popular']:,} unknown (popular items), k={args.k}, "
        f"version {bundle.version}, {time.perf_counter() - t0:.1f}s"
    )
    return 0


def cmd_next_purchase(args: argparse.Namespace) -> int:
    from recommender.store.bundle import load_bundle
    from training.export import export_next_purchase, read_customer_list

    bundle = load_bundle(args.models_dir)
    ids = read_customer_list(args.customers) if args.customers else None
    stats = export_next_purchase(bundle, args.out, horizon_days=args.horizon_days, customer_ids=ids)
    msg = f"wrote {args.out}: {stats['customers']:,} customers, horizon {args.horizon_days:g} days"
    if stats["unknown"]:
        msg += f"; {stats['unknown']:,} ids not known to the model were skipped"
    print(msg)
    return 0


def _write_demo(directory: Path, preset: str, seed: int) -> dict[str, Path]:
    from recommender.data.synthetic import generate_shop, write_shop

    shop = generate_shop(preset, seed=seed)
    return write_shop(shop, directory)


def cmd_generate(args: argparse.Namespace) -> int:
    paths = _write_demo(Path(args.dir), args.preset, args.seed)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    print(f"Generating the {args.preset} shop (seed {args.seed}) in {directory}/ ...")
    paths = _write_demo(directory, args.preset, args.seed)
    train_args = build_parser().parse_args(
        [
            "train",
            "--transactions",
            str(paths["transactions"]),
            "--items",
            str(paths["items"]),
            "--models-dir",
            args.models_dir,
        ]
    )
    cmd_train(train_args)
    if args.no_serve:
        print(
            f"Model published in {args.models_dir}/. Serve it with: encore serve "
            f"--models-dir {args.models_dir}"
        )
        return 0
    return _exec_serve(args.models_dir, args.host, args.port, 1)


def _exec_serve(models_dir: str, host: str, port: int, workers: int) -> int:
    # The pipeline never imports the app (or FastAPI): the server runs as its
    # own module, replacing this process.
    argv = [
        sys.executable,
        "-m",
        "serving",
        "--models-dir",
        models_dir,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    sys.stdout.flush()
    os.execv(sys.executable, argv)
    return 0  # pragma: no cover - execv does not return


def cmd_serve(args: argparse.Namespace) -> int:
    return _exec_serve(args.models_dir, args.host, args.port, args.workers)


COMMANDS = {
    "train": cmd_train,
    "recommend": cmd_recommend,
    "next-purchase": cmd_next_purchase,
    "demo": cmd_demo,
    "generate": cmd_generate,
    "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (DataError, ArtifactError, CLIError) as exc:
        if args.debug:
            raise
        print(f"encore {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(
            f"encore {args.command}: interrupted; the published model is unchanged", file=sys.stderr
        )
        return 130
    except Exception as exc:  # a bug or a model that failed its checks: still one line
        if args.debug:
            raise
        from training.export import ExportError
        from training.pipeline import TrainingError

        if isinstance(exc, (TrainingError, ExportError)):
            print(f"encore {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(
            f"encore {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback; the published model is unchanged)",
            file=sys.stderr,
        )
        return 1


def run() -> None:
    """The console entry point: exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
