"""The promotion gate's rules on figures alone, and re-scoring through the id indexes."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.gate import Candidate, GateConfig, judge, rescore
from recommender.ranking.als import ALSRecommender


def manifest(ndcg: float, pop: float = 0.1, rows: int = 1000, customers: int = 100, **kw) -> dict:
    return {
        "metrics": {
            "ranking": {"als": {"ndcg@10": ndcg}, "popularity": {"ndcg@10": pop}},
            "ranking_window": {"start": "2025-12-04", "end": "2026-01-01"},
            "timing": {"rmse": kw.get("rmse", 0.9), "horizon_days": 28.0},
        },
        "data": {
            "rows": rows,
            "customers": customers,
            "time_min": "2025-01-01T00:00:00",
            "time_max": kw.get("time_max", "2025-12-31T00:00:00"),
        },
        "validation": {"rows_read": rows, "dropped": {"duplicate": kw.get("dups", 0)}},
    }


def candidate(m: dict, **kw) -> Candidate:
    return Candidate(metrics=m["metrics"], data=m["data"], validation=m["validation"], **kw)


def test_a_like_for_like_candidate_passes_and_a_worse_one_is_held_back():
    current = manifest(0.40)
    assert judge(candidate(manifest(0.39)), current).passed
    v = judge(candidate(manifest(0.30)), current)
    assert not v.passed and v.status == "held back"
    assert any("worse than the served version" in r for r in v.reasons)
    forced = judge(candidate(manifest(0.30)), current, force=True)
    assert forced.status == "forced" and forced.publishable


def test_the_metric_is_configurable():
    m = manifest(0.40)
    m["metrics"]["ranking"]["two_stage"] = {"ndcg@10": 0.05}
    v = judge(candidate(m), None, GateConfig(metric="two_stage/ndcg@10"))
    assert not v.passed and "two_stage/ndcg@10 0.0500 vs popularity" in v.reasons[0]


def test_collapsed_picks_and_non_finite_figures_fail_the_sanity_checks():
    m = manifest(0.40)
    same = np.tile(np.arange(10), (50, 1))  # everybody gets the same ten items
    v = judge(candidate(m, top_items=same, top_scores=np.ones((50, 10)), n_items=400), None)
    assert any("collapsed" in r for r in v.reasons)
    m["metrics"]["timing"]["rmse"] = float("nan")
    assert any("non-finite" in r for r in judge(candidate(m), None).reasons)


def test_timing_error_is_compared_only_over_the_same_horizon():
    assert not judge(candidate(manifest(0.4, rmse=1.2)), manifest(0.4, rmse=0.9)).passed
    other = manifest(0.4, rmse=1.2)
    other["metrics"]["timing"]["horizon_days"] = 7.0
    assert judge(candidate(other), manifest(0.4, rmse=0.9)).passed


def test_a_noisy_rescored_drop_is_not_held_back_but_a_clear_one_is():
    current = manifest(0.40)
    noisy = {"candidate": 0.35, "current": 0.40, "std_error": 0.03, "customers": 40}
    assert judge(candidate(manifest(0.35), rescored=noisy), current).passed
    clear = {**noisy, "std_error": 0.001}
    assert not judge(candidate(manifest(0.35), rescored=clear), current).passed


def als(user: np.ndarray, item: np.ndarray) -> ALSRecommender:
    return ALSRecommender.from_factors(
        user.astype(np.float32), item.astype(np.float32), regularization=0.1, alpha=1.0
    )


def test_rescore_maps_customers_and_items_through_the_id_indexes():
    rng = np.random.default_rng(0)
    n_c, n_i, f = 80, 30, 6
    uf, itf = rng.normal(size=(n_c, f)), rng.normal(size=(n_i, f))
    cids = np.array([f"c{i}" for i in range(n_c)])
    iids = np.array([f"i{i}" for i in range(n_i)])
    relevant = sp.random(n_c, n_i, density=0.1, random_state=1, format="csr")
    relevant.data[:] = 1.0
    # the current version: other row orders, five customers and items fewer, two items more
    pc, pi = rng.permutation(n_c - 5), rng.permutation(n_i - 5)
    cur_iids = np.concatenate([iids[pi], ["new-a", "new-b"]])
    cur_itf = np.vstack([itf[pi], rng.normal(size=(2, f))])
    out = rescore(
        als(uf, itf),
        IdIndex(cids),
        IdIndex(iids),
        relevant,
        als(uf[pc], cur_itf),
        IdIndex(cids[pc]),
        IdIndex(cur_iids),
        "als/ndcg@10",
        min_customers=10,
    )
    assert out is not None and out["items"] == n_i - 5
    # the same factors under other ids and rows: the same figure, customer for customer
    assert out["candidate"] == out["current"] and out["std_error"] == 0.0
    shuffled = rescore(
        als(uf, itf[rng.permutation(n_i)]),
        IdIndex(cids),
        IdIndex(iids),
        relevant,
        als(uf[pc], cur_itf),
        IdIndex(cids[pc]),
        IdIndex(cur_iids),
        "als/ndcg@10",
        min_customers=10,
    )
    assert shuffled is not None and shuffled["candidate"] != shuffled["current"]
