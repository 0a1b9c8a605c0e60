"""How the marketers' console answers on a large shop.

    python bench/bench_console.py [--customers 1000000] [--items 100000] [--rows 5000000]

Generates a log (``generate_interactions``), trains it with ``encore train
--no-search``, then asks the console's endpoints through the real app (in
process, lifespan included) and prints, per request, the first answer (which
builds the index it reads, once per version) and the median of the next ones.
Also prints what writing the dated purchases costs the training run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def timed(fn, n: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    rest = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        rest.append(time.perf_counter() - t0)
    return first, statistics.median(rest)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    from fastapi.testclient import TestClient

    from recommender.data.synthetic import generate_interactions
    from recommender.purchases import purchase_log_bytes
    from serving.app import create_app
    from serving.settings import ServingSettings

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.parquet"
        frame = generate_interactions(args.customers, args.items, args.rows, seed=0)
        frame.to_parquet(log)
        print(f"log: {len(frame):,} rows, {frame['customer_id'].nunique():,} customers, "
              f"{frame['item_id'].nunique():,} items")  # fmt: skip
        # what the purchases file costs, on the log as training holds it
        codes = pd.DataFrame(
            {
                "crow": frame["customer_id"].cat.codes.to_numpy(np.int64),
                "irow": frame["item_id"].cat.codes.to_numpy(np.int64),
                "timestamp": pd.to_datetime(frame["timestamp"]),
                "quantity": np.ones(len(frame)),
                "price": np.full(len(frame), np.nan),
            }
        )
        written: list[bytes] = []
        first, median = timed(lambda: written.append(purchase_log_bytes(codes, args.customers)), 2)
        size = len(written[-1]) / 2**20
        print(f"purchases.npz: {size:.0f} MiB, written in {median:.2f} s (first {first:.2f} s)")
        written.clear()
        from training.cli import main as encore

        t0 = time.perf_counter()
        rc = encore(["train", "--transactions", str(log), "--models-dir", f"{tmp}/models",
                     "--no-search"])  # fmt: skip
        print(f"encore train: exit {rc} in {time.perf_counter() - t0:.1f} s")
        del frame
        from recommender.store.bundle import load_bundle

        bundle = load_bundle(Path(tmp) / "models")
        s = bundle.timing.summary_  # type: ignore[union-attr]
        cid = bundle.customers.id(int(np.argmax(s.x)))  # the most frequent buyer
        item = bundle.items.id(int(np.argmax(np.asarray(bundle.history.getnnz(axis=0)))))
        print(f"{bundle.n_customers:,} customers; asking about {cid} and item {item}")
        del bundle
        app = create_app(ServingSettings(models_dir=Path(tmp) / "models", reload_interval_s=0))
        with TestClient(app) as c:
            asks = {
                "search customers (prefix, 10 a page)": ("/v1/customers", {"q": cid[:-2]}),
                "search items": ("/v1/items", {"q": item[:-2]}),
                "timeline (20 days)": (f"/v1/customers/{cid}/timeline", {}),
                "purchase curve (90 days)": (f"/v1/customers/{cid}/purchase-curve", {}),
                "item buyers (20, the most bought item)": (f"/v1/items/{item}/buyers", {}),
                "item likely buyers": (f"/v1/items/{item}/likely-buyers", {}),
                "campaign count + 20 rows (30 days)": ("/v1/campaigns", {"within_days": 30}),
                "campaign, at risk": ("/v1/campaigns", {"kind": "at_risk"}),
                "campaign, another window (14 days)": ("/v1/campaigns", {"within_days": 14}),
            }
            print(f"{'request':40} {'first (s)':>10} {'then (ms)':>10}")
            for name, (path, params) in asks.items():

                def ask(path: str = path, params: dict = params) -> None:
                    r = c.get(path, params=params)
                    assert r.status_code == 200, r.text

                first, median = timed(ask, args.repeat)
                print(f"{name:40} {first:10.2f} {median * 1000:10.1f}")
            for picks, limit in ((0, 100_000), (3, 100_000), (3, 1_000)):
                t0 = time.perf_counter()
                r = c.get("/v1/campaigns/download", params={"within_days": 30,
                          "min_probability": 0.0, "picks": picks, "limit": limit})  # fmt: skip
                took = time.perf_counter() - t0
                if r.status_code == 200:
                    n = r.text.count("\n") - 1
                    print(f"download {n:,} rows, {picks} picks each: {took:.1f} s, "
                          f"{len(r.content) / 2**20:.1f} MiB")  # fmt: skip
                else:
                    print(f"download {limit:,} rows, {picks} picks each: {r.status_code} after "
                          f"{took:.1f} s: {r.json()['detail']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
