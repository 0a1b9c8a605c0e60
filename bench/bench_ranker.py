"""The two-stage ranker (candidates + LambdaMART) beside every baseline (issue #17).

For each preset, runs :func:`recommender.ranking.two_stage.evaluate_two_stage`:
the ranker is trained as of ``t0 = end - 56 days`` on labels from the next 28
days and judged as of ``t1 = end - 28`` on the last 28 days, against
popularity, personal frequency, P-TopFreq, TIFU-KNN, ALS and item-kNN fitted
on the same lines and judged on the same customers. Prints nDCG@10 and
recall@10/@20 (all, repeat, new items), the candidates' recall, the
explore-only comparison with ALS, feature importances (gain) and times.

``--predict`` times the serving path on one customer: candidates, features
and LightGBM's predict on ~300 rows. ``--version DIR`` times a trained
version's whole answers (reasons included) and its ranking per customer.
``--scale`` times every part on a generated 5-million-line log of 500,000
customers, with peak memory.

Usage::

    python bench/bench_ranker.py [--presets demo grocery fashion] [--label binary|days]
                                 [--predict] [--scale] [--version DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from recommender.data.ids import IdIndex  # noqa: E402
from recommender.data.interactions import apply_weighting  # noqa: E402
from recommender.data.sampling import seeded_subset  # noqa: E402
from recommender.data.synthetic import generate_interactions, generate_shop  # noqa: E402
from recommender.ranking.als import ALSRecommender  # noqa: E402
from recommender.ranking.candidates import CandidateConfig  # noqa: E402
from recommender.ranking.features import FEATURES, PurchaseLines  # noqa: E402
from recommender.ranking.ltr import LTRRanker  # noqa: E402
from recommender.ranking.metrics import format_table  # noqa: E402
from recommender.ranking.two_stage import (  # noqa: E402
    StageModels,
    TwoStageConfig,
    build_training_set,
    evaluate_two_stage,
    fit_stage,
    judged_customers,
    rank_customers,
    train_ranker,
    window_labels,
)

WINDOW = 28
COLUMNS = [
    "ndcg@10",
    "recall@10",
    "recall@20",
    "recall@20_repeat",
    "recall@20_new",
    "customers",
]


def preset_lines(preset: str, seed: int) -> PurchaseLines:
    shop = generate_shop(preset, seed=seed)
    frame = shop.transactions
    customers, _ = IdIndex.encode(frame["customer_id"])
    items, _ = IdIndex.encode(frame["item_id"])
    return PurchaseLines.from_frame(frame, customers, items, catalog=shop.catalog)


def bench_preset(preset: str, seed: int, config: TwoStageConfig) -> None:
    lines = preset_lines(preset, seed)
    end = int(lines.days.max()) + 1
    t = time.perf_counter()
    report = evaluate_two_stage(lines, end - WINDOW, config)
    total = time.perf_counter() - t
    j = report.judgement
    print(
        f"\n== {preset}: {len(lines):,} lines, {lines.n_customers:,} customers, "
        f"{lines.n_items:,} items; trained on {report.train_customers:,} customers "
        f"({report.train_rows:,} rows), {report.ranker.best_iteration_} trees; "
        f"label={config.label} =="
    )
    print(format_table(list(j.metrics.items()), COLUMNS))
    best = j.metrics[j.best_baseline]["ndcg@10"]
    ours = j.metrics["ranker"]["ndcg@10"]
    print(
        f"best baseline {j.best_baseline} {best:.4f}; ranker {ours:.4f} "
        f"({100 * (ours / best - 1):+.1f}%); serve: {j.serve}"
    )
    c = j.candidates
    print(
        f"candidates: {c['candidates_per_customer']:.0f} per customer, recall "
        f"{_pct(c['candidate_recall_all'])} (repeat {_pct(c['candidate_recall_repeat'])}, "
        f"new {_pct(c['candidate_recall_new'])})"
    )
    print("explore-only (history excluded), judged on new items:")
    print(format_table(list(j.explore.items()), ["ndcg@10", "recall@10", "recall@20"]))
    gains = report.ranker.feature_importance("gain")
    total_gain = sum(gains.values()) or 1.0
    print(
        "gain: "
        + ", ".join(f"{k} {100 * v / total_gain:.1f}%" for k, v in list(gains.items())[:12])
    )
    secs = ", ".join(f"{k} {v:.2f}" for k, v in report.seconds.items())
    print(f"seconds: {secs}; total {total:.2f}")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def time_serving(stage: StageModels, ranker: Any, rows: np.ndarray, repeats: int = 200) -> None:
    """Median times of the one-customer path: candidates, features, predict."""
    cand_t, feat_t, pred1_t, pred2_t, sizes = [], [], [], [], []
    for r in np.resize(rows, repeats):
        one = np.array([r])
        t = time.perf_counter()
        cands = stage.candidates(one)
        t1 = time.perf_counter()
        x = stage.features(cands)
        t2 = time.perf_counter()
        ranker.predict(x, num_threads=1)
        t3 = time.perf_counter()
        ranker.predict(x, num_threads=2)
        t4 = time.perf_counter()
        cand_t.append(t1 - t)
        feat_t.append(t2 - t1)
        pred1_t.append(t3 - t2)
        pred2_t.append(t4 - t3)
        sizes.append(x.shape[0])
    x300 = np.resize(stage.features(stage.candidates(rows[:5])), (300, x.shape[1]))
    p300 = []
    for _ in range(repeats):
        t = time.perf_counter()
        ranker.predict(x300, num_threads=1)
        p300.append(time.perf_counter() - t)

    def ms(v: list[float]) -> str:
        return f"{1000 * float(np.median(v)):.3f} ms"

    print(
        f"one customer ({np.median(sizes):.0f} candidates, median of {repeats}): "
        f"candidates {ms(cand_t)}, features {ms(feat_t)}, predict 1 thread {ms(pred1_t)}, "
        f"predict 2 threads {ms(pred2_t)}; predict on 300 rows, 1 thread {ms(p300)} "
        f"({ranker.best_iteration_} trees)"
    )
    # the goal's case: about 300 candidates a customer (the counts raised,
    # since few customers of a generated shop reach 300 with the defaults),
    # the whole ranking of one of them (candidates, features, predict)
    more = CandidateConfig(n_history=150, n_als=250, n_knn=250, n_popular=100)
    stage = dataclasses.replace(stage, config=dataclasses.replace(stage.config, candidates=more))
    counts = stage.candidates(rows).group_sizes()
    near = rows[np.argsort(np.abs(counts - 300), kind="stable")[:50]]
    whole, n_cands = [], []
    for r in np.resize(near, repeats):
        one = np.array([r])
        t = time.perf_counter()
        cands = stage.candidates(one)
        ranker.predict(stage.features(cands), num_threads=1)
        whole.append(time.perf_counter() - t)
        n_cands.append(len(cands))
    print(
        f"one customer with {np.median(n_cands):.0f} candidates ({np.min(n_cands)}-"
        f"{np.max(n_cands)}), median of {repeats}: candidates + features + predict "
        f"{ms(whole)} (goal: at most 2 ms)"
    )


def bench_predict(seed: int, config: TwoStageConfig) -> None:
    lines = preset_lines("grocery", seed)
    end = int(lines.days.max()) + 1
    ranker, _, stage, _ = train_ranker(lines, end - WINDOW, config)
    print("\n== serving path on grocery ==")
    rows = np.flatnonzero(stage.snapshot.cust_baskets > 0)
    time_serving(stage, ranker, rows)
    # early stopping kept few trees here; a shop with more to learn keeps more
    x = stage.features(stage.candidates(rows[:2000]))
    for n_trees in (100, 300):
        big = LTRRanker(FEATURES, n_estimators=n_trees, seed=seed)
        big.fit(x, (np.arange(x.shape[0]) % 7 == 0).astype(np.int32), _groups(stage, rows[:2000]))
        x300 = x[:300]
        times = []
        for _ in range(200):
            t = time.perf_counter()
            big.predict(x300, num_threads=1)
            times.append(time.perf_counter() - t)
        print(
            f"predict on 300 rows, 1 thread, {big.best_iteration_} trees: "
            f"{1000 * float(np.median(times)):.3f} ms (median of 200)"
        )


def _groups(stage: StageModels, rows: np.ndarray) -> np.ndarray:
    return stage.candidates(rows).group_sizes()


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_scale(seed: int, config: TwoStageConfig, n_lines: int = 5_000_000) -> None:
    """Every part of the two-stage model on 5 million lines of 500,000 customers
    (10 lines per customer, 100 per item at other sizes)."""
    n_c, n_i = n_lines // 10, n_lines // 100
    t = time.perf_counter()
    frame = generate_interactions(n_c, n_i, n_lines, seed=seed)
    lines = PurchaseLines(
        frame["customer_id"].cat.codes.to_numpy().astype(np.int64),
        frame["item_id"].cat.codes.to_numpy().astype(np.int64),
        frame["timestamp"].to_numpy(dtype="datetime64[D]").astype(np.int64),
        n_c,
        n_i,
        quantity=frame["quantity"].to_numpy(),
        price=frame["price"].to_numpy(),
        # the generated log has no catalog: 100 arbitrary categories exercise
        # the category source and features at this size
        item_category=np.random.default_rng(seed).integers(100, size=n_i),
    )
    del frame
    print(f"\n== scale: {n_lines:,} lines, {n_c:,} customers, {n_i:,} items ==")
    print(f"generate {time.perf_counter() - t:.1f} s; peak {peak_gib():.2f} GiB")
    end = int(lines.days.max()) + 1
    t1 = end - WINDOW

    t = time.perf_counter()
    counts = lines.before(t1).line_matrix()
    bare = ALSRecommender(num_threads=config.fit_threads).fit(apply_weighting(counts, "bm25"))
    bare_s = time.perf_counter() - t
    del bare, counts
    print(f"bare ALS fit (matrix + bm25 + fit) {bare_s:.1f} s")

    t = time.perf_counter()
    stage = fit_stage(lines, t1, config)
    stage_s = time.perf_counter() - t
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in stage.seconds.items())
    print(f"stage as of t1: {stage_s:.1f} s ({parts}); peak {peak_gib():.2f} GiB")

    # the steps of train_ranker (one window), timed one by one
    labels = window_labels(lines, t1, end)
    customers = seeded_subset(
        judged_customers(stage, labels, None, config.seed), config.max_train_customers, 0
    )
    held = np.random.default_rng(config.seed).random(lines.n_customers)[customers] < 0.2
    t = time.perf_counter()
    train = build_training_set(stage, customers[~held], labels)
    valid = build_training_set(stage, customers[held], labels)
    build_s = time.perf_counter() - t
    print(
        f"training set: {customers.size:,} customers drawn, {train.groups.size:,} + "
        f"{valid.groups.size:,} held out with a candidate bought ({train.labels.size:,} + "
        f"{valid.labels.size:,} rows): {build_s:.1f} s; peak {peak_gib():.2f} GiB"
    )
    t = time.perf_counter()
    ranker = LTRRanker(FEATURES, num_threads=config.num_threads, seed=config.seed)
    ranker.fit(
        train.features,
        train.labels,
        train.groups,
        valid=(valid.features, valid.labels, valid.groups),
    )
    lgb_s = time.perf_counter() - t
    train_s = build_s + lgb_s
    print(
        f"LightGBM lambdarank: {lgb_s:.1f} s, {ranker.best_iteration_} trees "
        f"(valid nDCG@10 {ranker.valid_ndcg_:.4f}); peak {peak_gib():.2f} GiB"
    )
    ranker_part = (
        stage.seconds.get("snapshot", 0.0)
        + stage.seconds.get("item_knn", 0.0)
        + stage.seconds.get("repurchase", 0.0)
        + train_s
    )
    print(
        f"ranker part (snapshot + item-kNN + repurchase + training set + LightGBM) "
        f"{ranker_part:.1f} s = {ranker_part / bare_s:.2f}x a bare ALS fit"
    )

    block = np.flatnonzero(stage.snapshot.cust_baskets > 0)[:20_000]
    t = time.perf_counter()
    rank_customers(stage, ranker, block, 10)
    rank_s = time.perf_counter() - t
    print(
        f"rank {block.size:,} customers in blocks of {config.block_size}: {rank_s:.1f} s "
        f"(~{rank_s * n_c / block.size / 60:.1f} min for all {n_c:,}); peak {peak_gib():.2f} GiB"
    )
    gains = ranker.feature_importance("gain")
    total_gain = sum(gains.values()) or 1.0
    print(
        "gain: "
        + ", ".join(f"{k} {100 * v / total_gain:.1f}%" for k, v in list(gains.items())[:10])
    )
    time_serving(stage, ranker, block, repeats=100)
    print(f"peak memory {peak_gib():.2f} GiB")


def bench_version(path: str, seed: int, repeats: int = 500) -> None:
    """A trained version's answers as serving gives them, in process: the whole
    answer of random known customers (the table or a live ranking, reasons
    included), and the ranking alone at the default and at about 300 candidates."""
    from recommender.answers import Answerer, Rules
    from recommender.store.bundle import load_bundle_dir

    bundle = load_bundle_dir(Path(path), verify_hashes=False)
    answerer = Answerer(bundle)
    table = "precomputed" if bundle.topn_items is not None else "none"
    print(
        f"\n== version {Path(path).name}: {bundle.n_customers:,} customers x "
        f"{bundle.n_items:,} items, served list {bundle.served}, table {table} =="
    )
    rng = np.random.default_rng(seed)
    ids = [bundle.customers.id(int(r)) for r in rng.integers(0, bundle.n_customers, repeats)]
    for cid in ids[:50]:  # the lazy caches
        answerer.for_customer(cid, 10, Rules())
    times = []
    for cid in ids:
        t = time.perf_counter()
        answerer.for_customer(cid, 10, Rules())
        times.append(time.perf_counter() - t)
    print(
        f"whole answer, k=10, one thread: median {1000 * float(np.median(times)):.2f} ms, "
        f"p90 {1000 * float(np.percentile(times, 90)):.2f} ms ({repeats} customers)"
    )
    if bundle.stage is not None and bundle.ranker is not None:
        rows = rng.integers(0, bundle.n_customers, 2000)
        # the stage as the answerer ranks one customer with it
        stage = dataclasses.replace(bundle.stage, search=answerer.search)
        time_serving(stage, bundle.ranker, rows, repeats=200)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="*", default=["demo", "grocery", "fashion"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=3, help="most training label windows")
    ap.add_argument("--label", choices=["days", "binary"], default="binary")
    ap.add_argument("--threads", type=int, default=1, help="LightGBM threads")
    ap.add_argument("--predict", action="store_true", help="time the one-customer path")
    ap.add_argument("--scale", action="store_true", help="time every part on 5M lines")
    ap.add_argument("--scale-lines", type=int, default=5_000_000, help="lines of --scale")
    ap.add_argument("--version", help="time a trained version's answers (its directory)")
    args = ap.parse_args()
    config = TwoStageConfig(
        window_days=WINDOW,
        label=args.label,
        seed=args.seed,
        num_threads=args.threads,
        train_windows=args.windows,
    )
    for preset in args.presets:
        bench_preset(preset, args.seed, config)
    if args.predict:
        bench_predict(args.seed, config)
    if args.scale:
        bench_scale(args.seed, config, args.scale_lines)
    if args.version:
        bench_version(args.version, args.seed)


if __name__ == "__main__":
    main()
