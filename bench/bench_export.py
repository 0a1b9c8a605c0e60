"""Batch export: `encore recommend --all` against the bare matrix products it needs.

Builds a model of random factors (``--customers`` x ``--items`` x ``--factors``,
ten purchases per customer) and times, in the same run:

* reference: every customer's scores as plain BLAS products ``U_block @ Y.T``
  on one thread, in the same blocks of about 16 million scores, nothing else
  (the arithmetic any exact export has to do);
* encore: ``training.export.export_recommendations`` (what ``encore recommend
  --all`` runs) writing top-``k`` excluding purchases to a Parquet file.

It prints the ratio encore / reference and encore's peak memory. Usage::

    python bench/bench_export.py [--customers 100000] [--items 100000] [--factors 64] [-k 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from recommender.data.ids import IdIndex  # noqa: E402
from recommender.ranking.als import ALSRecommender  # noqa: E402
from recommender.store.bundle import Bundle, Catalog  # noqa: E402
from training.export import export_recommendations  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    nc, ni, f = args.customers, args.items, args.factors

    rng = np.random.default_rng(0)
    model = ALSRecommender(factors=f)
    model.user_factors_ = rng.standard_normal((nc, f), dtype=np.float32)
    model.item_factors_ = rng.standard_normal((ni, f), dtype=np.float32)
    rows = np.repeat(np.arange(nc), 10)
    history = sp.csr_matrix(
        (np.ones(rows.size, np.float32), (rows, rng.integers(0, ni, rows.size))), shape=(nc, ni)
    )
    with tempfile.TemporaryDirectory(prefix="encore-bench-") as tmp:
        bundle = Bundle(
            version="bench",
            path=Path(tmp),
            manifest={},
            customers=IdIndex(np.array([f"C{i:07d}" for i in range(nc)])),
            items=IdIndex(np.array([f"I{i:06d}" for i in range(ni)])),
            history=history,
            popularity=rng.random(ni, dtype=np.float32),
            catalog=Catalog.empty(ni),
            als=model,
        )
        block = int(np.clip(16_000_000 // ni, 16, 4096))
        item_t = model.item_factors_.T
        with threadpool_limits(1, "blas"):
            t0 = time.perf_counter()
            for start in range(0, nc, block):
                model.user_factors_[start : start + block] @ item_t
            ref = time.perf_counter() - t0
        print(f"reference: bare scores of {nc:,} x {ni:,} x {f} on one thread: {ref:.1f}s")

        t0 = time.perf_counter()
        stats = export_recommendations(
            bundle, Path(tmp) / "recs.parquet", k=args.k, exclude_purchased=True
        )
        took = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"encore: top-{args.k} for {stats['personalized']:,} customers, "
        f"excluding purchases, written to Parquet: {took:.1f}s"
    )
    print(f"RATIO export / bare scores = {took / ref:.2f} (on {os.cpu_count()} cores)")
    print(f"PEAK MEMORY (whole process, including the factors) = {peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
