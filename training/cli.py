"""The ``encore`` command line: train, models, recommend, next-purchase, due, demo, serve.

Errors the user can fix (a bad file, a bad option, no model) are one line on
stderr and exit code 2; nothing prints a traceback unless ``--debug``.

Exit codes (a scheduler acts on them):

== ===========================================================================
0  done (``train``: the version was published, or written with --no-publish)
1  internal error (a bug; the published version is unchanged)
2  bad input or options, or a model that cannot be trained from this log
3  ``train``: trained and written, but held back by the promotion gate
4  the store is locked by another run (``--wait SECONDS`` to wait for it)
== ===========================================================================
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
from recommender.store.lock import StoreLockedError  # noqa: E402

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_HELD_BACK = 3
EXIT_LOCKED = 4


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


def _non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or a positive number")
    return v


def _probability(text: str) -> float:
    v = _non_negative_float(text)
    if v > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return v


def _value_options(p: argparse.ArgumentParser) -> None:
    """The lifetime-value terms, as the API's query parameters name them."""
    p.add_argument(
        "--clv-horizon-days",
        type=_positive_float,
        default=365.0,
        help="how far ahead lifetime value (clv) counts (default 365 days)",
    )
    p.add_argument(
        "--discount-rate",
        type=_non_negative_float,
        default=0.1,
        help="annual discount rate of lifetime value (default 0.1 = 10%%)",
    )


def _terms(args: argparse.Namespace) -> Any:
    from recommender.answers import ValueTerms

    return ValueTerms(args.clv_horizon_days, args.discount_rate)


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
    t.add_argument(
        "--no-ranker",
        action="store_true",
        help="skip the two-stage ranker: serve ALS's list (or the best baseline's)",
    )
    t.add_argument("--top-n", type=int, default=100, help="picks precomputed per customer")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-publish", action="store_true", help="write the version, keep current")
    t.add_argument(
        "--force",
        action="store_true",
        help="publish even if the promotion gate holds the version back (recorded in it)",
    )
    t.add_argument(
        "--wait",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run's lock on the store (default 0: exit with code 4)",
    )
    t.add_argument(
        "--keep",
        type=_positive_int,
        default=5,
        help="versions kept after publishing (default 5; the current one and the one "
        "before it are always kept)",
    )
    t.add_argument(
        "--gate-metric",
        default="served/ndcg@10",
        help="ranking figure the gate compares, model/metric (default served/ndcg@10: "
        "the served list's, the two-stage ranker's or the baseline that beat it)",
    )
    t.add_argument(
        "--gate-tolerance",
        type=_non_negative_float,
        default=0.05,
        help="relative drop of that figure allowed on the same window (default 0.05)",
    )

    mm = sub.add_parser("models", help="list, show, promote and roll back model versions")
    msub = mm.add_subparsers(dest="models_command", required=True)
    ml = msub.add_parser("list", help="every version: metrics, gate verdict, which is current")
    ml.add_argument("--models-dir", default="models")
    ms = msub.add_parser("show", help="one version's manifest in short")
    ms.add_argument("version")
    ms.add_argument("--models-dir", default="models")
    mp = msub.add_parser("promote", help="make VERSION current (also a held-back one)")
    mp.add_argument("version")
    mp.add_argument("--models-dir", default="models")
    mp.add_argument("--wait", type=_non_negative_float, default=0.0, metavar="SECONDS")
    mr = msub.add_parser(
        "rollback", help="make the version published before the current one current"
    )
    mr.add_argument("--models-dir", default="models")
    mr.add_argument("--wait", type=_non_negative_float, default=0.0, metavar="SECONDS")

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
        action="store_const",
        const=False,
        help="show items a customer already bought wherever the list ranks them",
    )
    bought.add_argument(
        "--exclude-purchased",
        dest="exclude_purchased",
        action="store_const",
        const=True,
        help="hide every item a customer already bought (an explore-only list)",
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
    r.set_defaults(exclude_purchased=None, available_only=None)
    r.add_argument("--out", default="recommendations.csv", help=".csv or .parquet")

    n = sub.add_parser("next-purchase", help="write each customer's next-purchase figures")
    n.add_argument("--models-dir", default="models")
    n.add_argument("--horizon-days", type=_positive_float, default=30.0)
    n.add_argument("--customers", help="file with a customer_id column (default: all)")
    n.add_argument("--out", default="next_purchase.csv", help=".csv or .parquet")
    _value_options(n)

    du = sub.add_parser(
        "due",
        help="customers likely to buy soon, with their top picks (for a campaign)",
        description="Customers whose chance of buying within --within-days is at least "
        "--min-probability (the rows GET /v1/customers/due gives), most likely first, "
        "with the picks the API gives them.",
    )
    du.add_argument("--models-dir", default="models")
    du.add_argument("--within-days", type=_positive_float, default=14.0)
    du.add_argument("--min-probability", type=_probability, default=0.5)
    du.add_argument("-k", type=_positive_int, default=5, help="picks per customer (default 5)")
    du.add_argument("--out", default="due.csv", help=".csv or .parquet")
    du.add_argument(
        "--sort",
        choices=("p_purchase", "expected_spend"),
        default="p_purchase",
        help="most likely first (default) or most expected spend within --within-days first",
    )
    _value_options(du)

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
    g2.add_argument(
        "--weeks-later",
        type=_positive_int,
        help="the same shop this many weeks on: its log plus new orders, new customers, "
        "new items, and recent customers who stopped buying",
    )

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
        ranker=not args.no_ranker,
        als=dataclasses.replace(ALSConfig(), **als_over),
        search=SearchConfig(
            enabled=args.search, time_budget_s=args.search_budget, max_trials=args.search_trials
        ),
    )
    from recommender.gate import GateConfig

    gate = GateConfig(metric=args.gate_metric, tolerance=args.gate_tolerance)
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
        gate=gate,
        force=args.force,
        wait_s=args.wait,
        keep=args.keep,
        say=lambda m: console.print(m, markup=False),
        show_progress=sys.stderr.isatty(),
    )
    print_summary(result, console)
    if result.held_back and not args.no_publish:
        print(
            f"encore train: held back by the promotion gate: {'; '.join(result.verdict.reasons)}"
            if result.verdict is not None
            else "encore train: held back by the promotion gate",
            file=sys.stderr,
        )
        return EXIT_HELD_BACK
    return EXIT_OK


def _ranking_figure(metrics: dict[str, Any], path: str = "served/ndcg@10") -> str:
    """A ranking figure (the served list's by default, named after it)."""
    from recommender.gate import metric_value, served_list

    v = metric_value(metrics, path)
    if v is None:
        return "-"
    return f"{v:.4f} {served_list(metrics)}" if path.startswith("served/") else f"{v:.4f}"


def cmd_models(args: argparse.Namespace) -> int:
    return MODELS_COMMANDS[args.models_command](args)


def cmd_models_list(args: argparse.Namespace) -> int:
    from recommender.answers import as_of_date
    from recommender.store.artifacts import version_summaries

    rows = version_summaries(args.models_dir)
    if not rows:
        raise CLIError(f"no model versions in {args.models_dir}")
    header = ["", "version", "trained at", "as of", "rows", "nDCG@10", "pop.", "RMSE", "gate"]
    table = []
    for r in rows:
        mark = "*" if r["current"] else ("<" if r["rollback_target"] else "")
        timing = (r["metrics"].get("timing") or {}).get("rmse")
        gate = r["gate"] or "-"
        if r["damaged"]:
            gate = "DAMAGED"
        table.append(
            [
                mark,
                r["version"],
                (r["created_at"] or "-")[:19],
                as_of_date(r["as_of"]) or "-",
                f"{r['data']['rows']:,}" if r["data"].get("rows") is not None else "-",
                _ranking_figure(r["metrics"]),
                _ranking_figure(r["metrics"], "popularity/ndcg@10"),
                f"{timing:.3f}" if isinstance(timing, float) else "-",
                gate,
            ]
        )
    widths = [max(len(str(x[i])) for x in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    print("* current   < rollback target (encore models rollback)")
    for r in rows:
        if r["damaged"]:
            print(f"{r['version']}: damaged: {r['damaged']}")
    return EXIT_OK


def cmd_models_show(args: argparse.Namespace) -> int:
    from recommender.answers import as_of_date
    from recommender.store.artifacts import read_manifest, version_summaries

    names = {r["version"]: r for r in version_summaries(args.models_dir)}
    if args.version not in names:
        raise CLIError(f"no version {args.version!r} in {args.models_dir}")
    path = Path(args.models_dir) / args.version
    m = read_manifest(path)
    info = names[args.version]
    state = "current" if info["current"] else "rollback target" if info["rollback_target"] else ""
    print(f"version     {args.version}" + (f" ({state})" if state else ""))
    print(f"trained at  {m.get('created_at')}, as of {as_of_date(m)}")
    d, v = m.get("data") or {}, m.get("validation") or {}
    print(
        f"data        {d.get('rows', 0):,} rows, {d.get('customers', 0):,} customers, "
        f"{d.get('items', 0):,} items, "
        f"{str(d.get('time_min'))[:10]} .. {str(d.get('time_max'))[:10]}"
    )
    dropped = {k: n for k, n in (v.get("dropped") or {}).items() if n}
    print(
        f"validation  {v.get('rows_read', 0):,} read, {v.get('rows_kept', 0):,} kept"
        + "".join(f"; {k}: {n:,}" for k, n in dropped.items())
    )
    for name, fig in ((m.get("metrics") or {}).get("ranking") or {}).items():
        print(
            f"ranking     {name:<20} nDCG@10 {fig.get('ndcg@10', float('nan')):.4f}  "
            f"recall@20 {fig.get('recall@20', float('nan')):.4f}"
        )
    t = (m.get("metrics") or {}).get("timing") or {}
    if t:
        print(
            f"timing      {t.get('model')}: RMSE {t.get('rmse', 0):.3f}, AUC {t.get('auc', 0):.3f}"
        )
    g = m.get("gate")
    if g:
        against = g.get("compared_with") or "none (first version)"
        print(f"gate        {g.get('status')} (against {against}; {g.get('method') or '-'})")
        for c in g.get("checks", []):
            print(f"  {'ok  ' if c.get('ok') else 'FAIL'} {c.get('check')}: {c.get('detail')}")
    else:
        print("gate        - (written before the promotion gate existed)")
    for w in m.get("warnings") or []:
        print(f"warning     {w}")
    if (path / "report.html").is_file():
        print(f"report      {path / 'report.html'}")
    return EXIT_OK


def _switch(args: argparse.Namespace, version: str, how: str) -> int:
    from recommender.store.artifacts import current_version, publish_version
    from recommender.store.bundle import load_bundle
    from recommender.store.lock import StoreLock

    with StoreLock(args.models_dir, wait_s=args.wait, what=f"encore models {how}"):
        before = current_version(args.models_dir)
        load_bundle(args.models_dir, version)  # refuse a damaged version before switching
        publish_version(args.models_dir, version, how)
    print(f"version {version} is now current (was {before or 'none'})")
    return EXIT_OK


def cmd_models_promote(args: argparse.Namespace) -> int:
    from recommender.store.artifacts import list_versions

    if args.version not in list_versions(args.models_dir):
        raise CLIError(f"no complete version {args.version!r} in {args.models_dir}")
    return _switch(args, args.version, "promote")


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from recommender.store.artifacts import rollback_target

    target = rollback_target(args.models_dir)
    if target is None:
        raise CLIError(
            f"nothing to roll back to in {args.models_dir}: no other version was published "
            "before the current one (encore models promote VERSION picks one by name)"
        )
    return _switch(args, target, "rollback")


MODELS_COMMANDS = {
    "list": cmd_models_list,
    "show": cmd_models_show,
    "promote": cmd_models_promote,
    "rollback": cmd_models_rollback,
}


def cmd_due(args: argparse.Namespace) -> int:
    from recommender.store.bundle import load_bundle
    from training.export import check_output_path, export_due

    check_output_path(args.out)
    bundle = load_bundle(args.models_dir)
    stats = export_due(
        bundle,
        args.out,
        within_days=args.within_days,
        min_probability=args.min_probability,
        k=args.k,
        sort=args.sort,
        terms=_terms(args),
    )
    print(
        f"wrote {args.out}: {stats['customers']:,} customers likely to buy within "
        f"{args.within_days:g} days (probability >= {args.min_probability:g}), "
        f"{'most likely' if args.sort == 'p_purchase' else 'most expected spend'} first, "
        f"version {bundle.version}"
    )
    _say_value_note(bundle)
    return EXIT_OK


def cmd_recommend(args: argparse.Namespace) -> int:
    from recommender.store.bundle import load_bundle
    from training.export import check_output_path, export_recommendations, read_customer_list

    check_output_path(args.out)
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
    from training.export import check_output_path, export_next_purchase, read_customer_list

    check_output_path(args.out)
    bundle = load_bundle(args.models_dir)
    ids = read_customer_list(args.customers) if args.customers else None
    stats = export_next_purchase(
        bundle, args.out, horizon_days=args.horizon_days, customer_ids=ids, terms=_terms(args)
    )
    msg = f"wrote {args.out}: {stats['customers']:,} customers, horizon {args.horizon_days:g} days"
    if stats["unknown"]:
        msg += f"; {stats['unknown']:,} ids not known to the model were skipped"
    print(msg)
    _say_value_note(bundle)
    return 0


def _say_value_note(bundle: Any) -> None:
    """Say why the value columns are empty, when they are."""
    from recommender.answers import value_note

    note = value_note(bundle)
    if note:
        print(f"{note}; the value columns are empty")


def _write_demo(
    directory: Path, preset: str, seed: int, weeks_later: int | None = None
) -> dict[str, Path]:
    from recommender.data.synthetic import generate_shop, next_weeks, write_shop

    shop = generate_shop(preset, seed=seed)
    if weeks_later:
        shop = next_weeks(shop, weeks_later, seed=seed + 1)
    return write_shop(shop, directory)


def cmd_generate(args: argparse.Namespace) -> int:
    paths = _write_demo(Path(args.dir), args.preset, args.seed, args.weeks_later)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CLIError(f"--host {host}: cannot resolve it ({exc})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise CLIError(
                f"port {port} on {host} is not free ({exc.strerror}); "
                "pass --port with a free one (checked before training)"
            ) from None


def cmd_demo(args: argparse.Namespace) -> int:
    if not args.no_serve:
        _check_port_free(args.host, args.port)
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
    rc = cmd_train(train_args)
    if rc == EXIT_HELD_BACK and not args.no_serve:
        print("The new version was held back by the gate; serving the current one.")
    elif rc != EXIT_OK:
        return rc
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
    "models": cmd_models,
    "recommend": cmd_recommend,
    "due": cmd_due,
    "next-purchase": cmd_next_purchase,
    "demo": cmd_demo,
    "generate": cmd_generate,
    "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except StoreLockedError as exc:
        if args.debug:
            raise
        print(f"encore {args.command}: locked: {exc}", file=sys.stderr)
        return EXIT_LOCKED
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
        return EXIT_INTERNAL


def run() -> None:
    """The console entry point: exit with :func:`main`'s code."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
