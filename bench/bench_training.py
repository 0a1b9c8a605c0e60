"""Training overhead: the whole `encore train` against a bare `implicit` fit.

Both run in the same invocation, each in its own subprocess (so peak memory is
each one's own), on the same generated log:

* reference: build the same weighted matrix, then time only
  ``implicit.als.AlternatingLeastSquares(<same configuration>).fit(matrix)``;
* encore: ``python -m training train`` end to end (load and check the file,
  split, fit, evaluate ALS and the baselines, refit, timing models, top-N,
  write and verify the version), without search.

It prints the ratio encore / reference (goal: at most 1.5) and peak memory
(goal: under 4 GiB). Usage::

    python bench/bench_training.py [--interactions 5000000] [--customers 500000] [--items 50000]
                                   [--train-args=--no-timing]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

REFERENCE = r"""
import json, sys, time
import numpy as np, pandas as pd
from threadpoolctl import threadpool_limits
from implicit.als import AlternatingLeastSquares
from recommender.data import IdIndex
from recommender.interactions import apply_weighting, build_matrix
from training.config import ALSConfig
path = sys.argv[1]
cfg = ALSConfig()
frame = pd.read_parquet(path)
frame["weight"] = 1.0
m = apply_weighting(build_matrix(frame, IdIndex.from_values(frame["customer_id"]),
                                 IdIndex.from_values(frame["item_id"])), cfg.weighting)
model = AlternatingLeastSquares(factors=cfg.factors, regularization=cfg.regularization,
                                alpha=cfg.alpha, iterations=cfg.iterations, random_state=0,
                                calculate_training_loss=False)
with threadpool_limits(1, "blas"):
    t0 = time.perf_counter()
    model.fit(m, show_progress=False)
    fit_s = time.perf_counter() - t0
print(json.dumps({"fit_s": fit_s, "nnz": int(m.nnz), "shape": list(m.shape)}))
"""


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall time, peak RSS (bytes) and stdout of one subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the max over all children so far (KiB on Linux)
    return wall, max(peak, before) * 1024, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interactions", type=int, default=5_000_000)
    ap.add_argument("--customers", type=int, default=500_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-args",
        default="",
        help='extra `encore train` options, e.g. "--no-timing" (the ALS part alone)',
    )
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from recommender.synthetic import generate_interactions

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="encore-bench-") as tmp:
        data = Path(tmp) / "log.parquet"
        t0 = time.perf_counter()
        frame = generate_interactions(args.customers, args.items, args.interactions, args.seed)
        frame.to_parquet(data, index=False)
        print(
            f"generated {len(frame):,} rows in {time.perf_counter() - t0:.1f}s -> {data.name} "
            f"({data.stat().st_size / 2**20:.0f} MiB)"
        )
        del frame

        ref_wall, ref_peak, out = run([sys.executable, "-c", REFERENCE, str(data)], env)
        ref = json.loads(out.strip().splitlines()[-1])
        print(
            f"reference: implicit fit {ref['fit_s']:.1f}s on {ref['shape'][0]:,} x "
            f"{ref['shape'][1]:,}, nnz {ref['nnz']:,} (process {ref_wall:.1f}s, "
            f"peak {ref_peak / 2**30:.2f} GiB)"
        )
        # The encore run must report its own peak, not the reference's: run it
        # through a fresh Python that measures only its own child.
        probe = (
            "import resource, subprocess, sys, time, json; t=time.perf_counter(); "
            "p=subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "w=time.perf_counter()-t; "
            "print(p.stdout[-4000:], file=sys.stderr) if p.returncode else None; "
            "print(json.dumps({'rc': p.returncode, 'wall': w, 'peak': "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024, "
            "'out': p.stdout[-6000:]}))"
        )
        cmd = [
            sys.executable,
            "-c",
            probe,
            sys.executable,
            "-m",
            "training",
            "train",
            "--transactions",
            str(data),
            "--models-dir",
            str(Path(tmp) / "models"),
            "--top-n",
            "100",
            "--no-search",
            *args.train_args.split(),
        ]
        _, _, out = run(cmd, env)
        res = json.loads(out.strip().splitlines()[-1])
        # the reference again after encore: load from others on a shared machine
        # drifts over minutes, so the ratio uses the mean of the two reference fits
        _, _, out2 = run([sys.executable, "-c", REFERENCE, str(data)], env)
        ref_after = json.loads(out2.strip().splitlines()[-1])["fit_s"]
        print(f"reference again after encore: implicit fit {ref_after:.1f}s")
        ref_fit = (ref["fit_s"] + ref_after) / 2.0
        if res["rc"] != 0:
            raise SystemExit(f"encore train failed:\n{res['out']}")
        # the steps, and the own time of the models fitted alongside ALS
        steps = [
            ln.strip()
            for ln in res["out"].splitlines()
            if ln.startswith("[done]") or "alongside the steps above" in ln
        ]
        print("encore train steps:\n  " + "\n  ".join(steps))
        ratio = res["wall"] / ref_fit
        extra = f", {args.train_args}" if args.train_args else ""
        print(
            f"encore train (whole run, no search{extra}): {res['wall']:.1f}s, "
            f"peak {res['peak'] / 2**30:.2f} GiB"
        )
        print(
            f"RATIO encore_train / bare_implicit_fit (mean of {ref['fit_s']:.1f}s and "
            f"{ref_after:.1f}s) = {ratio:.2f}  (goal <= 1.5)"
        )
        print(f"PEAK MEMORY encore_train = {res['peak'] / 2**30:.2f} GiB  (goal < 4)")


if __name__ == "__main__":
    main()
