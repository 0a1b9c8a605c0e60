"""Ranking quality of the default `encore train` on generated shops.

For each shop preset it runs the real pipeline with its defaults: the list it
serves (the two-stage ranker's when it beats every baseline on the evaluation
window, else that baseline's), the ranker, ALS (its hyperparameters searched
on the window before the evaluation window), and every baseline (popularity,
item-kNN, personal frequency, P-TopFreq, TIFU-KNN) on the same customers and
window; again ALS with ``--no-search``, and, on the very same split, a grid of
``implicit`` ALS fits configured by hand the way its documentation suggests
(BM25-weighted counts, a few factors/regularisation/alpha settings); the best
of that grid *on the evaluation window itself* is the "tuned by hand"
reference, an optimistic bar. Prints nDCG@10, recall@20 and recall@20 of
items bought before / new to the customer for each, the explore-only lists
(every purchase hidden) of the ranker and ALS on new items, and the ratio of
the served list to the best baseline.

Usage::

    python bench/bench_quality.py [--presets demo grocery fashion] [--seed 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from recommender.data.ids import IdIndex  # noqa: E402
from recommender.data.synthetic import generate_shop, write_shop  # noqa: E402
from recommender.data.transactions import load_transactions  # noqa: E402
from recommender.ranking.als import ALSRecommender  # noqa: E402
from training import ranking  # noqa: E402
from training.config import SearchConfig, TrainConfig  # noqa: E402
from training.pipeline import train  # noqa: E402

GRID = {
    "factors": [32, 64, 128],
    "regularization": [0.01, 0.1],
    "alpha": [1.0, 10.0, 40.0],
}


def hand_tuned(split: ranking.Split, n_items: int) -> tuple[dict, dict]:
    """Best implicit ALS of the grid on the evaluation window (optimistic reference)."""
    from implicit.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import bm25_weight

    weighted = bm25_weight(split.counts.tocoo(), K1=100, B=0.8).tocsr().astype(np.float32)
    best, best_cfg = None, None
    for f, reg, a in itertools.product(GRID["factors"], GRID["regularization"], GRID["alpha"]):
        model = AlternatingLeastSquares(
            factors=f,
            regularization=reg,
            alpha=a,
            iterations=15,
            random_state=0,
            calculate_training_loss=False,
        )
        with threadpool_limits(1, "blas"):
            model.fit(weighted, show_progress=False)
        wrapped = ALSRecommender.from_factors(
            np.asarray(model.user_factors),
            np.asarray(model.item_factors),
            regularization=reg,
            alpha=a,
        )
        m = ranking.evaluate(wrapped, split)
        if best is None or m["ndcg@10"] > best["ndcg@10"]:
            best, best_cfg = m, {"factors": f, "regularization": reg, "alpha": a}
    assert best is not None and best_cfg is not None
    return best, best_cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["demo", "grocery", "fashion"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = TrainConfig()
    rows = []
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            shop = generate_shop(preset, seed=args.seed)
            paths = write_shop(shop, Path(tmp) / "shop")
            t0 = time.perf_counter()
            result = train(
                paths["transactions"],
                items_path=paths["items"],
                models_dir=Path(tmp) / "m",
                config=cfg,
                say=lambda _m: None,
            )
            secs = time.perf_counter() - t0
            metrics = result.manifest["metrics"]["ranking"]
            # the same run with the search switched off: the untuned defaults
            plain = train(
                paths["transactions"],
                items_path=paths["items"],
                models_dir=Path(tmp) / "m",
                config=dataclasses.replace(cfg, search=SearchConfig(enabled=False), timing=False),
                say=lambda _m: None,
                do_publish=False,
            ).manifest["metrics"]["ranking"]["als"]
            # rebuild the same split for the hand-tuned reference
            tx = load_transactions(paths["transactions"])
            frame = tx.frame
            customers, crow = IdIndex.encode(frame["customer_id"])
            items, irow = IdIndex.encode(frame["item_id"])
            frame = frame.assign(crow=crow, irow=irow)
            end = pd.Timestamp(result.manifest["as_of"])
            cut = end - pd.Timedelta(days=cfg.eval_days)
            split = ranking.make_split(
                frame,
                frame,
                customers,
                items,
                cut,
                end,
                max_users=cfg.max_eval_customers,
                seed=cfg.seed,
            )
            ref, ref_cfg = hand_tuned(split, len(items))
        served = result.manifest["serving"]["list"]
        print(
            f"\n== {preset}: {len(shop.transactions):,} rows, {split.n_users:,} evaluated "
            f"customers, encore train {secs:.1f}s; serving {served} =="
        )
        print(result.manifest["serving"]["reason"])
        print(
            f"{'model':28s} {'nDCG@10':>8s} {'recall@20':>10s} {'rec@20 repeat':>14s} "
            f"{'rec@20 new':>11s}"
        )

        def line(name: str, m: dict) -> None:
            def f(key: str) -> str:
                v = m.get(key)
                return "-" if v is None else f"{v:.4f}"

            print(
                f"{name:28s} {f('ndcg@10'):>8s} {f('recall@20'):>10s} "
                f"{f('recall@20_repeat'):>14s} {f('recall@20_new'):>11s}"
            )

        line(f"encore default ({served})", metrics[served])
        for name, m in metrics.items():
            line(name, m)
        line("als --no-search", plain)
        line("implicit tuned by hand", ref)
        explore = result.manifest["metrics"].get("ranking_explore") or {}
        for name, m in explore.items():
            line(f"explore-only {name} (new items)", m)
        trials = (result.manifest.get("search") or {}).get("trials", [])
        chosen = result.manifest["config"]["als_chosen"]
        print(f"encore chose (search of {len(trials)} trials on the window before): {chosen}")
        print(f"hand-tuned config: {ref_cfg}")
        importance = result.manifest["metrics"].get("ranker_training", {}).get("importance")
        print(f"ranker's feature importance (share of gain): {importance}")
        baselines = {
            k: v for k, v in metrics.items() if k != "ranker" and not v.get("for_gate_only")
        }
        best = max(baselines, key=lambda k: baselines[k]["ndcg@10"])
        ratios = {
            f"served vs best baseline ({best})": metrics[served]["ndcg@10"]
            / max(baselines[best]["ndcg@10"], 1e-12),
            "served vs implicit tuned by hand": metrics[served]["ndcg@10"]
            / max(ref["ndcg@10"], 1e-12),
        }
        if "ranker" in explore and "als" in explore:
            ratios["explore-only ranker vs ALS"] = explore["ranker"]["ndcg@10"] / max(
                explore["als"]["ndcg@10"], 1e-12
            )
        print("RATIO nDCG@10 " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
        rows.append((preset, ratios))


if __name__ == "__main__":
    main()
