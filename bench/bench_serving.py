"""Serving speed: `recommendations` against a trivial endpoint of the same app, in one run.

Builds a generated shop (default 100,000 items x 64 factors, 200,000
customers), fits ALS on it briefly so the factors have the norms real ALS
factors have (popular items get the large ones), and publishes it twice: with a
precomputed top-100 table, and without one, which is what ``encore train``
publishes at this size (customers x items exceeds ``top_n_max_scores``). Then:

1. in process, one thread: the cost of scoring one customer exactly over every
   item (matrix-vector product plus top-k), and of each engine path;
2. recall@10 against that exact scoring: of the precomputed table, of the
   engine's pruned exact ranking, and of an ``hnswlib`` inner-product index at
   several ``ef`` (for known customers and folded-in vectors), with query time;
3. the real app (``python -m serving``, uvicorn, ``--workers``) driven by
   ``--clients`` keep-alive clients for ``--duration`` seconds per row: first
   closed loop (each client sends its next request when the answer arrives:
   the most the server does), ``GET /healthz`` (trivial JSON, the reference),
   a known customer's recommendations, the same with a category filter, and
   picks from recent items (folded in); then open loop at a third of the
   reference's throughput (Poisson arrivals, latency counted from the scheduled
   send), which is the goal's "a third of the trivial endpoint's throughput
   with p99 under 20 ms". Each row prints requests/s, p50/p99 and the server's
   CPU time per request; RATIO lines compare with the reference of the same
   server in the same run (goals: throughput at least 0.5 of the reference's;
   p99 under 20 ms at a third of its rate). So that a slow answer can be told
   from a slow machine or a slow generator, each row also prints how late the
   generator itself sent (connection free, yet sent after its time), how the
   clients' connections were shared by the workers, the share of the server's
   runnable time spent waiting for a core, and the cores other processes used
   meanwhile. Each row is timed in ``--rounds`` slices taken in
   turn with the other rows, so a neighbour's burst of load falls on the
   reference and the recommendations alike. A "1 client" row (one request at a
   time) gives the latency of an idle server. Two workers serve both versions;
   one worker (the ``--workers`` default also measures it) serves the version
   without a table.

Closed-loop latency obeys Little's law (mean latency = clients / throughput):
with 32 clients, even a trivial endpoint shows p99 well above 20 ms unless it
serves more than 1,600 requests/s, so closed-loop p99 measures the machine, and
the open-loop rows measure latency. The load generator is a minimal asyncio
HTTP/1.1 client in its own process on the same cores; its CPU share and its
lateness are printed.

Usage::

    python bench/bench_serving.py [--items 100000] [--customers 200000] [--duration 6]
                                  [--workers 2 1] [--clients 32] [--skip-recall]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from recommender.data.ids import IdIndex  # noqa: E402
from recommender.data.synthetic import generate_interactions  # noqa: E402
from recommender.ranking.als import ALSRecommender  # noqa: E402
from recommender.ranking.base import top_k  # noqa: E402
from recommender.store.artifacts import publish  # noqa: E402
from recommender.store.bundle import Catalog, load_bundle, save_bundle  # noqa: E402

LOADGEN = r"""
import asyncio, json, random, resource, sys, time
with open(sys.argv[1]) as f:
    cfg = json.load(f)
reqs = [r.encode("latin-1") for r in cfg["requests"]]
host, port, n_conn, rate = cfg["host"], cfg["port"], cfg["clients"], cfg["rate"]
lat, late, bad, busy = [], [], [0], [0]

async def exchange(reader, writer, req):
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    low = head.lower()
    at = low.find(b"\r\ncontent-length:")
    length = int(low[at + 17 : low.find(b"\r\n", at + 2)]) if at >= 0 else 0
    if length:
        await reader.readexactly(length)
    return int(head[9:12])

async def client(i, warm_at, stop_at):
    reader, writer = await asyncio.open_connection(host, port)
    rng = random.Random(i)
    j, n = i, len(reqs)
    # open loop: Poisson sends at rate / n_conn per connection, latency from the
    # scheduled time (a late send counts as waiting); closed loop: back to back
    due = time.perf_counter() + (rng.expovariate(rate / n_conn) if rate else 0.0)
    while True:
        own = None
        if rate:
            # past the end, requests still queued behind a slow server are not sent
            if due >= stop_at or time.perf_counter() >= stop_at:
                break
            wait = due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
                # the connection was free at `due`: any delay in sending is the
                # generator's own (its event loop, its share of the CPU)
                own = time.perf_counter() - due
            t0 = due
            due += rng.expovariate(rate / n_conn)
        else:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
        status = await exchange(reader, writer, reqs[j % n])
        j += n_conn
        t1 = time.perf_counter()
        if t0 >= warm_at and t1 <= stop_at + (1.0 if rate else 0.0):
            lat.append(t1 - t0)
            bad[0] += status != 200
            if own is None:
                busy[0] += rate > 0
            else:
                late.append(own)
    writer.close()

async def main():
    start = time.perf_counter()
    warm_at, stop_at = start + cfg["warmup"], start + cfg["warmup"] + cfg["duration"]
    loop = asyncio.get_running_loop()
    cpu = [None]
    loop.call_at(loop.time() + cfg["warmup"],
                 lambda: cpu.__setitem__(0, resource.getrusage(resource.RUSAGE_SELF)))
    await asyncio.gather(*(client(i, warm_at, stop_at) for i in range(n_conn)))
    r1, r0 = resource.getrusage(resource.RUSAGE_SELF), cpu[0]
    used = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(json.dumps({"lat_ms": [round(x * 1e3, 3) for x in lat], "bad": bad[0],
                      "late_ms": [round(x * 1e3, 3) for x in late], "busy": busy[0],
                      "loadgen_cpu_s": used}))

asyncio.run(main())
"""


# -- the shop ------------------------------------------------------------------------------
def build_shop(args: argparse.Namespace, models: Path) -> dict:
    """Fit, save and publish the two versions; return what the later steps need."""
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    frame = generate_interactions(args.customers, args.items, args.interactions, args.seed)
    cust = frame["customer_id"].cat.codes.to_numpy().astype(np.int64)
    item = frame["item_id"].cat.codes.to_numpy().astype(np.int64)
    day = (frame["timestamp"] - frame["timestamp"].min()).dt.total_seconds().to_numpy() / 86400
    # Some rebuys on a cycle, so the buy-again model has something to say ("due to rebuy").
    rebuy = rng.random(len(cust)) < 0.15
    gap = rng.gamma(4.0, 30.0 / 4.0, size=int(rebuy.sum()))
    cust = np.concatenate([cust, cust[rebuy]])
    item = np.concatenate([item, item[rebuy]])
    day = np.concatenate([day, day[rebuy] + gap])
    as_of_day = float(np.quantile(day, 0.999))
    keep = day <= as_of_day
    cust, item, day = cust[keep], item[keep], day[keep]
    customers = IdIndex(frame["customer_id"].cat.categories.to_numpy())
    items = IdIndex(frame["item_id"].cat.categories.to_numpy())
    del frame
    n_c, n_i = len(customers), len(items)
    history = sp.csr_matrix(
        (np.ones(len(cust), np.float32), (cust, item)), shape=(n_c, n_i), dtype=np.float32
    )
    history.sum_duplicates()
    print(
        f"shop: {n_c:,} customers x {n_i:,} items, {len(cust):,} purchase lines "
        f"({history.nnz:,} distinct pairs), generated in {time.perf_counter() - t0:.1f}s"
    )

    t0 = time.perf_counter()
    weighted = history.copy()
    weighted.data = np.log1p(weighted.data)
    als = ALSRecommender(factors=args.factors, iterations=args.als_iterations).fit(weighted)
    print(
        f"ALS: {args.factors} factors, {args.als_iterations} sweeps "
        f"in {time.perf_counter() - t0:.1f}s"
    )

    repurchase = None
    t0 = time.perf_counter()
    try:
        from recommender.timing.repurchase import RepurchaseModel

        repurchase = RepurchaseModel().fit(cust, item, day, as_of_day, n_c, n_i)
        n_rep = int(repurchase.is_repurchase_item_.sum())
        print(f"buy-again: {n_rep:,} repurchase items, fitted in {time.perf_counter() - t0:.1f}s")
    except Exception as exc:  # the bench measures serving; it can do without this part
        print(f"buy-again model skipped ({type(exc).__name__}: {exc})")

    cat_of = rng.integers(args.categories, size=n_i)
    catalog = Catalog(
        title=np.array([f"Item {i}" for i in range(n_i)]),
        category=np.array([f"Category {c:02d}" for c in cat_of]),
        price=np.round(rng.lognormal(2.5, 0.6, size=n_i), 2),
        available=rng.random(n_i) > 0.02,
    )
    popularity = np.bincount(item, minlength=n_i).astype(np.float32)

    # The customers the clients ask for: random buyers.
    buyers = np.flatnonzero(np.diff(history.indptr) > 0)
    probes = np.sort(rng.choice(buyers, size=min(args.probes, len(buyers)), replace=False))
    # The top-100 table as training writes it (exact, purchases included), for the
    # probed customers only; other rows are -1, which serving answers by scoring.
    t0 = time.perf_counter()
    p_items, p_scores = als.recommend(probes, history, k=100)
    topn_items = np.full((n_c, 100), -1, np.int32)
    topn_scores = np.full((n_c, 100), -np.inf, np.float32)
    topn_items[probes], topn_scores[probes] = p_items, p_scores
    each = (time.perf_counter() - t0) / len(probes)
    print(
        f"top-100 table: computed for the {len(probes):,} probed customers "
        f"({each * 1e3:.2f} ms each; all {n_c:,} would add {each * n_c / 60:.1f} min to training)"
    )

    t0 = time.perf_counter()
    common = {
        "customers": customers,
        "items": items,
        "history": history,
        "popularity": popularity,
        "catalog": catalog,
        "manifest": {"as_of": "2026-01-01T00:00:00+00:00", "config": {"bench": "serving"}},
        "als": als,
        "repurchase": repurchase,
    }
    dirs = {}
    for name, topn in (("table", (topn_items, topn_scores)), ("no table", None)):
        d = models / name.replace(" ", "-")
        path = save_bundle(d, topn=topn, **common)
        publish(d, path.name)
        dirs[name] = d
    print(f"saved and published both versions in {time.perf_counter() - t0:.1f}s")
    return {"dirs": dirs, "probes": probes}


# -- in process ----------------------------------------------------------------------------
def median_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def recent_items(rng: np.random.Generator, popularity: np.ndarray, n: int) -> np.ndarray:
    """Item rows someone just looked at: drawn in proportion to popularity."""
    p = (popularity + 1.0) / (popularity + 1.0).sum()
    return rng.choice(len(p), size=n, p=p)


def in_process(shop: dict, args: argparse.Namespace) -> dict:
    from recommender.answers import Answerer, Rules

    bundles = {name: load_bundle(d) for name, d in shop["dirs"].items()}
    b = bundles["table"]
    engines = {
        "table": Answerer(b),
        "pruned": Answerer(bundles["no table"]),
        "full scan": Answerer(bundles["no table"], prune_min_items=2**62),  # the old path
    }
    als = b.als
    assert als is not None and als.user_factors_ is not None and als.item_factors_ is not None
    rng = np.random.default_rng(args.seed + 1)
    rows = rng.choice(shop["probes"], size=400)
    ids = [b.customers.id(int(r)) for r in rows]
    cats = sorted(engines["table"].categories)
    recent = [[b.items.id(int(j)) for j in recent_items(rng, b.popularity, 3)] for _ in range(400)]
    f = Rules()
    out: dict[str, float] = {}
    with threadpool_limits(1):
        als.score(rows[:2])  # warm up
        out["matvec"] = median_ms(lambda i: als.score(rows[i : i + 1]), 400)
        scores = [als.score(rows[i : i + 1]) for i in range(50)]
        out["top_k"] = median_ms(lambda i: top_k(scores[i % 50], 10), 400)
        block = als.user_factors_[rows[:32]]
        out["matmul32"] = median_ms(lambda i: block @ als.item_factors_.T, 40) / 32
        for name, e in engines.items():
            out[f"known {name}"] = median_ms(lambda i, e=e: e.for_customer(ids[i], 10, f), 400)
            out[f"category {name}"] = median_ms(
                lambda i, e=e: e.for_customer(ids[i], 10, Rules([cats[i % len(cats)]])), 400
            )
            n = 400 if name != "full scan" else 100
            out[f"folded {name}"] = median_ms(lambda i, e=e: e.for_recent(recent[i], 10, f), n)
        # fold-in alone: the least-squares step, without ranking
        rec_rows = [np.array([b.items.row(x) for x in r]) for r in recent]
        out["fold_in"] = median_ms(lambda i: als.fold_in(rec_rows[i]), 100)
    # Share of the catalogue the pruned ranking scores: items whose |y| |u| reaches the
    # 10th best score (computed here from the factors, not from the engine).
    y64 = als.item_factors_.astype(np.float64)
    norms = np.sort(np.linalg.norm(y64, axis=1))
    shares = []
    for r in rows[:200]:
        u = als.user_factors_[r].astype(np.float64)
        kth = np.partition(y64 @ u, len(norms) - 10)[len(norms) - 10]
        shares.append(1 - np.searchsorted(norms, kth / np.linalg.norm(u)) / len(norms))
    n_i, d = als.item_factors_.shape
    print(f"\n== in process, one thread, {n_i:,} items x {d} factors, k=10 (median ms) ==")
    print(f"exact scores over every item (matrix-vector product)  {out['matvec']:7.3f}")
    print(f"top-10 of those scores (recommender.base.top_k)        {out['top_k']:7.3f}")
    print(f"  the same product for 32 customers at once, per one   {out['matmul32']:7.3f}")
    print(f"fold-in of 3 recent items (ALSRecommender.fold_in)     {out['fold_in']:7.3f}")
    print(
        f"pruned ranking scores {np.median(shares):.1%} of the items for the median customer "
        f"(p99 {np.quantile(shares, 0.99):.1%})"
    )
    print(f"{'Answerer.for_customer':<26}{'table':>10}{'pruned':>10}{'full scan':>11}")
    labels = {
        "known": "known customer",
        "category": "+ category filter",
        "folded": "3 recent items (folded)",
    }
    for what, label in labels.items():
        cells = "".join(
            f"{out[f'{what} {name}']:>{w}.3f}"
            for name, w in (("table", 10), ("pruned", 10), ("full scan", 11))
        )
        print(f"{label:<26}{cells}")
    print(
        "(table: the version with a top-N table; pruned: without one, this engine; "
        "full scan: without one, scoring every item as before)"
    )
    return {"engines": engines, "stats": out}


# -- recall --------------------------------------------------------------------------------
def exact_top(als: ALSRecommender, q: np.ndarray, k: int, banned: list[np.ndarray]) -> np.ndarray:
    s = (q @ als.item_factors_.T).astype(np.float32)
    for j, bn in enumerate(banned):
        s[j, bn] = -np.inf
    return top_k(s, k)[0]


def recall(a: np.ndarray, b: np.ndarray) -> float:
    hits = sum(len(set(x[x >= 0]) & set(y[y >= 0])) for x, y in zip(a, b, strict=True))
    return hits / max(sum(int((y >= 0).sum()) for y in b), 1)


def recall_study(shop: dict, ctx: dict, args: argparse.Namespace) -> None:
    import hnswlib

    from recommender.answers import Rules

    engines = ctx["engines"]
    e = engines["table"]
    b = e.bundle
    als = b.als
    assert als is not None and als.user_factors_ is not None and als.item_factors_ is not None
    k = 10
    rng = np.random.default_rng(args.seed + 2)
    rows = rng.choice(shop["probes"], size=min(1000, len(shop["probes"])), replace=False)
    print(f"\n== recall@{k} against exact scoring of every item, {len(rows)} known customers ==")
    banned = []
    for r in rows:
        allowed = e.allowed(Rules())
        hist = e.history(int(r))
        allowed[hist[~e.repurchase_items[hist]]] = False
        banned.append(np.flatnonzero(~allowed))
    truth = exact_top(als, als.user_factors_[rows], k, banned)

    def served(engine) -> np.ndarray:
        out = []
        for r in rows:
            cid = engine.bundle.customers.id(int(r))
            picks = [p.item_row for p in engine.for_customer(cid, k).picks]
            out.append(picks + [-1] * (k - len(picks)))
        return np.array(out)

    print(f"precomputed top-N table, as served        recall {recall(served(e), truth):.3f}")
    pruned, full = served(engines["pruned"]), served(engines["full scan"])
    same = float(np.mean([np.array_equal(x, y) for x, y in zip(pruned, full, strict=True)]))
    print(
        f"pruned exact ranking (no table)           recall {recall(pruned, truth):.3f}; "
        f"same list as the full scan for {same:.1%} of customers"
    )

    y = als.item_factors_
    t0 = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=y.shape[1])
    index.init_index(
        max_elements=len(y), M=args.hnsw_m, ef_construction=args.hnsw_efc, random_seed=0
    )
    index.set_num_threads(2)
    index.add_items(y, np.arange(len(y)))
    build = time.perf_counter() - t0
    index.set_num_threads(1)
    print(
        f"hnswlib 'ip' index: M={args.hnsw_m}, ef_construction={args.hnsw_efc}, built in "
        f"{build:.1f}s on 2 threads (unfiltered top-{k}; filters would need over-fetching)"
    )
    known = als.user_factors_[rows]
    folded = []
    for r in rows[:300]:
        h = e.history_items(int(r))
        picked = np.concatenate([h, recent_items(rng, b.popularity, 3)]).astype(np.int64)
        counts = np.bincount(picked, minlength=b.n_items)
        nz = np.flatnonzero(counts)
        folded.append(als.fold_in(nz, counts[nz].astype(np.float64)))
    folded_q = np.array(folded, dtype=np.float32)
    none = [np.empty(0, np.int64)]
    truth_known = exact_top(als, known, k, none * len(known))
    truth_fold = exact_top(als, folded_q, k, none * len(folded_q))
    with threadpool_limits(1):
        exact_ms = median_ms(lambda i: top_k(known[i : i + 1] @ y.T, k), 200)
    print(f"{'':>10}{'known: recall':>15}{'ms/query':>10}{'folded-in: recall':>19}{'ms/query':>10}")
    print(f"{'exact':>10}{1.0:>15.3f}{exact_ms:>10.3f}{1.0:>19.3f}{exact_ms:>10.3f}")
    for ef in args.ef:
        index.set_ef(max(ef, k))
        res: list[float] = []
        for q, t in ((known, truth_known), (folded_q, truth_fold)):
            labels = np.array([index.knn_query(v, k=k)[0][0] for v in q]).astype(np.int64)
            res += [recall(labels, t), median_ms(lambda i, q=q: index.knn_query(q[i], k=k), len(q))]
        print(f"{'ef=' + str(ef):>10}{res[0]:>15.3f}{res[1]:>10.3f}{res[2]:>19.3f}{res[3]:>10.3f}")


# -- the server under load -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> dict[int, list[str]]:
    """``/proc/<pid>/stat`` fields of ``pid`` and its descendants."""
    stats: dict[int, list[str]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stats[int(p.name)] = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
    tree, todo = {}, [pid]
    while todo:
        q = todo.pop()
        if q in stats:
            tree[q] = stats[q]
            todo += [c for c, f in stats.items() if int(f[1]) == q]
    return tree


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    return sum((int(f[11]) + int(f[12])) / tick for f in process_tree(pid).values())


def tree_sched(pid: int) -> dict[str, tuple[float, float]]:
    """Seconds each thread of ``pid`` and its descendants ran and waited for a core
    (``/proc/<pid>/task/<tid>/schedstat``), by thread."""
    out = {}
    for p in process_tree(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                f = Path(f"/proc/{p}/task/{t}/schedstat").read_text().split()
            except OSError:
                continue
            out[t] = (int(f[0]) / 1e9, int(f[1]) / 1e9)
    return out


def waited_share(before: dict[str, tuple[float, float]], after: dict) -> float:
    """Share of the threads' runnable time between two :func:`tree_sched` samples
    spent waiting for a core (threads that ended meanwhile are left out)."""
    ran = waited = 0.0
    for t, (r1, w1) in after.items():
        r0, w0 = before.get(t, (0.0, 0.0))
        ran, waited = ran + r1 - r0, waited + w1 - w0
    return waited / max(ran + waited, 1e-9)


def machine_busy() -> float:
    """CPU seconds every process on the machine has used since boot (``/proc/stat``)."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def tree_rss(pid: int) -> float:
    """Resident memory (bytes) of ``pid`` and its descendants."""
    page = os.sysconf("SC_PAGE_SIZE")
    return sum(int(f[21]) * page for f in process_tree(pid).values())


def worker_connections(server: Server) -> list[int]:
    """Established connections to the server's port held by each of its processes
    (those holding none are left out): how evenly the workers share the clients."""
    port = f":{server.port:04X}"
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[1].endswith(port) and f[3] == "01":  # local port, ESTABLISHED
                inodes.add(f[9])
    counts = []
    for pid in process_tree(server.proc.pid):
        held = 0
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed meanwhile
                continue
            held += link.startswith("socket:[") and link[8:-1] in inodes
        if held:
            counts.append(held)
    return counts


class Server:
    """``python -m serving`` in a subprocess, ready when every worker has loaded."""

    def __init__(self, models_dir: Path, workers: int) -> None:
        self.port = free_port()
        # BLAS threads are left to the app to pin (serving/__main__.py and create_app).
        env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
        # hot-reload polling stays on as `encore serve` runs it (a poll costs ~15 us)
        env["PYTHONPATH"] = str(ROOT)
        self.log = tempfile.TemporaryFile()
        cmd = [
            sys.executable, "-m", "serving", "--models-dir", str(models_dir),
            "--port", str(self.port), "--workers", str(workers), "--log-level", "warning",
        ]  # fmt: skip
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self.log, stderr=self.log)
        while True:
            if self.proc.poll() is not None or time.perf_counter() - t0 > 300:
                self.log.seek(0)
                raise SystemExit("server did not start:\n" + self.log.read().decode()[-3000:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.25)
        # /readyz is answered by the first worker to load; the others are still
        # reading and hashing the version until the server's CPU goes quiet.
        last = tree_cpu(self.proc.pid)
        while time.perf_counter() - t0 < 300:
            time.sleep(0.5)
            now = tree_cpu(self.proc.pid)
            if now - last < 0.05:
                break
            last = now
        self.ready_s = time.perf_counter() - t0
        self.rss = tree_rss(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def get(path: str) -> str:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n"


def post(path: str, body: dict) -> str:
    data = json.dumps(body)
    return (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data.encode())}\r\n\r\n{data}"
    )


def check(port: int, request: str) -> None:
    """One request through urllib; the bench stops if it is not a 200."""
    method, path, _ = request.split(" ", 2)
    body = request.split("\r\n\r\n", 1)[1].encode() or None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status != 200:
            raise SystemExit(f"{method} {path}: status {r.status}")


def drive(
    server: Server,
    requests: list[str],
    args: argparse.Namespace,
    rate: float,
    clients: int | None = None,
    duration: float | None = None,
) -> dict:
    """One load-generator run: raw latencies (ms), errors, and both sides' CPU seconds."""
    duration = duration or args.duration
    cfg = {
        "host": "127.0.0.1",
        "port": server.port,
        "clients": clients or args.clients,
        "warmup": args.warmup,
        "duration": duration,
        "rate": rate,
        "requests": requests,
    }
    cpu0, busy0, t0 = tree_cpu(server.proc.pid), machine_busy(), time.perf_counter()
    sched0, kids0 = tree_sched(server.proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    proc = subprocess.Popen(
        [sys.executable, "-c", LOADGEN, f.name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the clients connect first thing; count each worker's share during the warm-up
    time.sleep(min(args.warmup * 0.6, 0.3))
    spread = worker_connections(server)
    out, err = proc.communicate(timeout=args.warmup + duration + 300)
    os.unlink(f.name)
    cpu1, busy1, t1 = tree_cpu(server.proc.pid), machine_busy(), time.perf_counter()
    sched1, kids1 = tree_sched(server.proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit("load generator failed:\n" + err[-3000:])
    res = json.loads(out.strip().splitlines()[-1])
    # The server's CPU during the timed window: the run's share (warm-up excluded).
    res["server_cpu_s"] = (cpu1 - cpu0) * duration / (args.warmup + duration)
    res["spread"] = spread
    # what the rest of the machine used meanwhile (other processes, not the server
    # or this generator), in cores, and the server's share of its runnable time
    # spent waiting for a core: high when the cores were full, whoever filled them
    gen = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    res["others"] = max(busy1 - busy0 - (cpu1 - cpu0) - gen, 0.0) / (t1 - t0)
    res["waited"] = waited_share(sched0, sched1)
    res["duration"] = duration
    return res


def summarise(parts: list[dict]) -> dict:
    """Merge the slices of one endpoint into requests/s, p50, p99, CPU per request,
    the generator's own lateness and the workers' shares of the connections."""
    lat = np.sort(np.concatenate([np.asarray(p["lat_ms"], dtype=float) for p in parts]))
    late = np.concatenate([np.asarray(p["late_ms"], dtype=float) for p in parts])
    seconds = sum(p["duration"] for p in parts)
    n = max(len(lat), 1)
    # the slice whose connections were spread least evenly over the workers
    spreads = [sorted(p["spread"]) for p in parts if p["spread"]]
    return {
        "rps": len(lat) / seconds,
        "p50": float(np.quantile(lat, 0.50)) if len(lat) else float("nan"),
        "p99": float(np.quantile(lat, 0.99)) if len(lat) else float("nan"),
        "cpu_ms": sum(p["server_cpu_s"] for p in parts) * 1e3 / n,
        "loadgen": sum(p["loadgen_cpu_s"] for p in parts) / seconds,
        "late_p99": float(np.quantile(late, 0.99)) if len(late) else float("nan"),
        "busy": sum(p["busy"] for p in parts) / n,
        "spread": min(spreads, key=lambda c: c[0] / max(sum(c), 1)) if spreads else [],
        "others": float(np.mean([p["others"] for p in parts])),
        "waited": float(np.mean([p["waited"] for p in parts])),
        "bad": sum(p["bad"] for p in parts),
    }


def interleaved(
    server: Server, plan: dict[str, list[str]], args: argparse.Namespace, rate: float
) -> dict[str, dict]:
    """Every endpoint in ``args.rounds`` short slices, taken in turn, so that the
    machine's changing load falls on the reference and the others alike."""
    parts: dict[str, list[dict]] = {name: [] for name in plan}
    for _ in range(args.rounds):
        for name, requests in plan.items():
            parts[name].append(
                drive(server, requests, args, rate, duration=args.duration / args.rounds)
            )
    return {name: summarise(p) for name, p in parts.items()}


def row(r: dict) -> str:
    late = "" if np.isnan(r["late_p99"]) else f"{r['late_p99']:.1f}"
    spread = "/".join(str(c) for c in r["spread"]) or "-"
    return (
        f"{r['rps']:>7.0f}{r['p50']:>8.1f}{r['p99']:>8.1f}{r['cpu_ms']:>11.2f}"
        f"{r['loadgen']:>8.0%}{late:>10}{spread:>9}{r['waited']:>8.0%}{r['others']:>8.2f}"
        f"{r['bad']:>7}"
    )


def load_test(shop: dict, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed + 3)
    b = load_bundle(shop["dirs"]["no table"], verify_hashes=False)
    cats = sorted({str(c) for c in b.catalog.category})
    ids = [b.customers.id(int(r)) for r in rng.choice(shop["probes"], size=4000)]
    url = "/v1/customers/{}/recommendations?k=10"
    scenarios = {
        "healthz": [get("/healthz")],
        "known": [get(url.format(c)) for c in ids],
        "known+category": [
            get(url.format(c) + f"&category={quote(cats[i % len(cats)])}")
            for i, c in enumerate(ids)
        ],
        "folded-in": [
            post(
                "/v1/recommendations",
                {"recent_items": [b.items.id(int(j)) for j in recent_items(rng, b.popularity, 3)]},
            )
            for _ in range(4000)
        ],
    }
    plan = {
        "table": ["healthz", "known", "known+category", "folded-in"],
        "no table": ["healthz", "known"],
    }
    print(
        f"\n== HTTP, {b.n_items:,} items: {args.clients} keep-alive clients, {args.duration:g}s "
        f"per row in {args.rounds} slices taken in turn with the other rows "
        f"(each after {args.warmup:g}s untimed) =="
    )
    print(
        "closed: clients send back to back (the most the server does); open: Poisson arrivals "
        "at a third of healthz's closed-loop rate, healthz included as the latency reference."
        "\nCPU ms/req: the server's CPU time per "
        "answered request; loadgen: the load generator's share of one core (same 2 cores);"
        "\nlate p99: how late the generator itself sent (open loop, connection free at the "
        "scheduled time: its event loop or its CPU share, not the server);"
        "\nconns: the clients' connections held by each worker (the least even slice);"
        "\nwaited: the server's share of its runnable time spent waiting for a core; "
        "others: cores used meanwhile by other processes on the machine."
    )
    print(
        "1 client: one request at a time on one connection, the latency of an idle server."
        f"\nmachine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
        "before the HTTP runs (others' processes count)"
    )
    for workers in args.workers:
        for version, names in plan.items():
            if workers == 1 and version == "table":
                continue  # one worker: the default version only, to compare with two
            server = Server(shop["dirs"][version], workers)
            try:
                for name in names:
                    check(server.port, scenarios[name][0])
                print(
                    f"\n-- {workers} worker(s), version {version}: ready in {server.ready_s:.0f}s, "
                    f"{server.rss / 2**20:,.0f} MiB resident --"
                )
                print(
                    f"{'':<9}{'endpoint':<16}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}"
                    f"{'CPU ms/req':>11}{'loadgen':>8}{'late p99':>10}{'conns':>9}{'waited':>8}"
                    f"{'others':>8}{'errors':>7}"
                )
                # One client, one request at a time: the latency of an idle server.
                one = summarise([drive(server, scenarios["healthz"], args, 0.0, 1, 2.0)])
                print(f"{'1 client':<9}{'healthz':<16}" + row(one))
                chosen = {name: scenarios[name] for name in names}
                closed = interleaved(server, chosen, args, 0.0)
                rate = closed["healthz"]["rps"] / 3  # the open loop's offered rate
                opened = interleaved(server, chosen, args, rate)
                for mode, results in (("closed", closed), ("open", opened)):
                    h = results["healthz"]
                    for name, r in results.items():
                        print(f"{mode:<9}{name:<16}" + row(r))
                        if name == "healthz":
                            continue
                        tag = f"{name} [{version}, {workers} worker(s)]"
                        if mode == "closed":
                            ratio = r["rps"] / h["rps"]
                            print(
                                f"RATIO {tag} / healthz: throughput {ratio:.2f} (goal >= 0.5: "
                                f"{'met' if ratio >= 0.5 else 'NOT met'}), CPU per request "
                                f"{r['cpu_ms'] / h['cpu_ms']:.2f}"
                            )
                        else:
                            ok = r["p99"] < 20 and r["rps"] >= 0.9 * rate
                            print(
                                f"RATIO {tag} at {rate:.0f} req/s (a third of healthz's): served "
                                f"{r['rps'] / rate:.2f} of it, p99 {r['p99']:.1f} ms "
                                f"(goal < 20: {'met' if ok else 'NOT met'}), "
                                f"p99 / healthz's p99 at that rate {r['p99'] / h['p99']:.1f}"
                            )
            finally:
                server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--als-iterations", type=int, default=5)
    ap.add_argument("--categories", type=int, default=40)
    ap.add_argument("--probes", type=int, default=5000, help="customers the clients ask for")
    ap.add_argument("--duration", type=float, default=6.0, help="seconds timed per row")
    ap.add_argument("--rounds", type=int, default=3, help="slices per row, taken in turn")
    ap.add_argument("--warmup", type=float, default=0.5, help="untimed seconds per slice")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument(
        "--workers", type=int, nargs="+", default=[2, 1], help="1 runs the no-table version only"
    )
    ap.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--hnsw-efc", type=int, default=100)
    ap.add_argument("--skip-recall", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="encore-bench-serving-") as tmp:
        shop = build_shop(args, Path(tmp))
        ctx = in_process(shop, args)
        if not args.skip_recall:
            recall_study(shop, ctx, args)
        del ctx
        load_test(shop, args)
    print(f"\n(whole run {time.perf_counter() - t_start:.0f}s)")


if __name__ == "__main__":
    main()
