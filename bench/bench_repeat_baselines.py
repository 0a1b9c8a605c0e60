"""Repeat-purchase baselines beside ALS on the generated shops.

For each preset, holds out the last 28 days (as ``encore train`` does) and
prints nDCG@10 and recall@20 (all, repeat and new items) of popularity,
personal frequency, P-TopFreq, TIFU-KNN (published defaults) and ALS with
:class:`training.config.ALSConfig` defaults, with each model's fit time
(building the baskets counts towards the fit of the basket models).
With ``--scale``, also times fitting P-TopFreq on a 5-million-line log.

Usage::

    python bench/bench_repeat_baselines.py [--presets demo grocery fashion] [--seed 0] [--scale]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from recommender.data.ids import IdIndex  # noqa: E402
from recommender.data.synthetic import generate_interactions, generate_shop  # noqa: E402
from recommender.ranking.base import Recommender  # noqa: E402
from recommender.ranking.baselines import (  # noqa: E402
    PersonalFrequencyRecommender,
    PopularityRecommender,
)
from recommender.ranking.metrics import format_table  # noqa: E402
from recommender.ranking.repeat_baselines import (  # noqa: E402
    Baskets,
    PTopFreqRecommender,
    TIFUKNNRecommender,
)
from training import ranking  # noqa: E402
from training.config import ALSConfig  # noqa: E402

EVAL_DAYS = 28
COLUMNS = ["ndcg@10", "recall@20", "recall@20_repeat", "recall@20_new", "fit_s"]


def shop_split(preset: str, seed: int) -> tuple[ranking.Split, IdIndex, IdIndex, int]:
    """The last ``EVAL_DAYS`` days held out, on every evaluated customer."""
    frame = generate_shop(preset, seed=seed).transactions
    customers, crow = IdIndex.encode(frame["customer_id"])
    items, irow = IdIndex.encode(frame["item_id"])
    frame = frame.assign(crow=crow, irow=irow)
    end = frame["timestamp"].max().normalize() + pd.Timedelta(days=1)
    cut = end - pd.Timedelta(days=EVAL_DAYS)
    split = ranking.make_split(frame, frame, customers, items, cut, end)
    return split, customers, items, len(frame)


def fitters(
    split: ranking.Split, customers: IdIndex, items: IdIndex, seed: int
) -> dict[str, Callable[[], Recommender]]:
    def baskets() -> Baskets:
        return Baskets.from_frame(split.train, customers, items)

    def als() -> Recommender:
        cfg = ALSConfig()
        matrix = ranking.weighted_matrix(
            split.train, customers, items, cfg, split.cutoff, counts=split.counts
        )
        return ranking.fit_als(matrix, cfg, seed, iterations=cfg.history_iterations)

    return {
        "popularity": lambda: PopularityRecommender().fit(split.counts),
        "personal_frequency": lambda: PersonalFrequencyRecommender().fit(split.counts),
        "p_topfreq": lambda: PTopFreqRecommender().fit(split.counts, baskets=baskets()),
        "tifu_knn": lambda: TIFUKNNRecommender().fit(split.counts, baskets=baskets()),
        "als (defaults)": als,
    }


def bench_preset(preset: str, seed: int) -> None:
    split, customers, items, n_rows = shop_split(preset, seed)
    print(
        f"\n== {preset}: {n_rows:,} rows, {len(customers):,} customers, {len(items):,} items, "
        f"{split.n_users:,} evaluated customers, last {EVAL_DAYS} days held out =="
    )
    rows: list[tuple[str, dict[str, Any]]] = []
    for name, fit in fitters(split, customers, items, seed).items():
        t0 = time.perf_counter()
        model = fit()
        fit_s = time.perf_counter() - t0
        metrics = ranking.evaluate(model, split)
        metrics["fit_s"] = round(fit_s, 3)
        rows.append((name, metrics))
    print(format_table(rows, COLUMNS))


def bench_scale(seed: int) -> None:
    """P-TopFreq's fit on 5 million order lines of 500,000 customers."""
    n_c, n_i, n_lines = 500_000, 50_000, 5_000_000
    frame = generate_interactions(n_c, n_i, n_lines, seed=seed)
    c = frame["customer_id"].cat.codes.to_numpy()
    i = frame["item_id"].cat.codes.to_numpy()
    days = frame["timestamp"].to_numpy(dtype="datetime64[D]").astype(np.int64)
    t0 = time.perf_counter()
    baskets = Baskets.from_lines(c, i, days, n_c, n_i)
    t1 = time.perf_counter()
    model = PTopFreqRecommender().fit(baskets=baskets)
    t2 = time.perf_counter()
    ranked, _ = model.recommend(np.arange(n_c), model.scores_, k=10, workers=2)
    t3 = time.perf_counter()
    assert (ranked >= 0).all()
    print(
        f"\n== scale: {n_lines:,} lines, {n_c:,} customers, {n_i:,} items ==\n"
        f"baskets {t1 - t0:.2f} s, P-TopFreq fit {t2 - t1:.2f} s, "
        f"top-10 for every customer {t3 - t2:.2f} s (2 threads)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["demo", "grocery", "fashion"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", action="store_true", help="time P-TopFreq on 5M lines too")
    args = ap.parse_args()
    for preset in args.presets:
        bench_preset(preset, args.seed)
    if args.scale:
        bench_scale(args.seed)


if __name__ == "__main__":
    main()
