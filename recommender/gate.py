"""The promotion gate: is a freshly trained version fit to replace the served one?

Nobody watches a scheduled retraining run, so before a version is published
it is judged against the published one, and held back (written, listed, not
served) when it is worse beyond a tolerance or when the data it was trained on
looks broken. This module holds the rules; it knows nothing of the command
line, HTTP or the training pipeline, which hands it figures and models.

The checks, each with the reason it exists:

* **ranking against popularity** (always, also for a store's first version):
  the served list must beat the popularity list on the same window; a log
  whose item ids were scrambled has no signal and ranks below it;
* **ranking against the current version** on the same held-out weeks: both
  models re-scored on the purchases after the current version's day
  (customers and items both know; the candidate warm-started on the log up
  to that day, so neither has seen them and both have seen the same span),
  or, when that is impossible, the stored figures (a looser tolerance when
  the windows differ);
* **timing error against the current version** (RMSE of purchases per
  customer, stored figures);
* **sanity** of the candidate: finite figures, picks not collapsed onto a
  handful of items, every active customer gets picks;
* **the data against the previous version's**: far fewer rows or customers,
  a much shorter or older time range, or a jump in exact duplicates is what a
  broken export looks like.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.data.ids import IdIndex
from recommender.ranking.als import ALSRecommender
from recommender.ranking.base import top_k
from recommender.ranking.metrics import average_precision_at_k, ndcg_at_k, recall_at_k


@dataclass
class GateConfig:
    """Thresholds of the promotion gate (``encore train`` options in brackets)."""

    metric: str = "served/ndcg@10"
    """The ranking figure judged, as ``model/metric`` in the manifest's
    ``metrics.ranking``; the model ``served`` is the list the version serves
    (``metrics.serving.list``: the two-stage ranker's, or the list that beat
    it; ALS's in versions from before the ranker)."""
    tolerance: float = 0.05
    """Largest relative drop of ``metric`` allowed against the current version
    judged on the same customers and weeks (a 0.393 nDCG may fall to 0.373):
    about twice the sampling noise of a few hundred judged customers."""
    stored_tolerance: float = 0.15
    """Largest relative drop when only the stored figures can be compared,
    which come from different windows (the week-to-week drift of one model on
    the generated shops stays well within it)."""
    timing_tolerance: float = 0.15
    """Largest relative rise of the timing model's RMSE against the current
    version's stored figure (different windows, so a loose bound)."""
    min_popularity_lift: float = 0.0
    """The served list must beat popularity's ``metric`` by more than this
    share (0: strictly better)."""
    min_distinct_items: int = 20
    """The active customers' top-``k`` lists together must show at least this
    many distinct items (or every item of a smaller catalogue): one popularity
    list shows ``k``."""
    max_top_item_share: float = 0.9
    """At most this share of active customers may have the same item in
    their top-``k`` (collapsed picks)."""
    min_rows_ratio: float = 0.8
    """Rows kept, customers and days covered must be at least this share of
    the previous version's: the log is cumulative, so it shrinks only when
    the export is cut short."""
    max_duplicate_jump: float = 0.001
    """Exact duplicates beyond the previous version's rate may be at most this
    share of the rows read (one day duplicated in a year's log is 0.27%)."""
    min_rescore_customers: int = 30
    """Fewer judged customers than this and the stored figures are compared."""
    noise_z: float = 2.0
    """A re-scored drop beyond ``tolerance`` holds a version back only when it
    exceeds this many standard errors of the paired per-customer difference
    (a few dozen customers give a noisy mean)."""


@dataclass
class Candidate:
    """What the gate needs to know of the version just trained."""

    metrics: dict[str, Any]
    data: dict[str, Any]
    validation: dict[str, Any]
    top_items: np.ndarray | None = None
    """``(active customers, k)`` item rows of the served lists (``-1`` for none)."""
    top_scores: np.ndarray | None = None
    n_items: int = 0
    rescored: dict[str, Any] | None = None
    """Both models re-scored on the same window (see :func:`rescore`), if possible."""
    rescore_note: str | None = None
    """Why no re-scoring was possible (for the verdict)."""


@dataclass
class Verdict:
    """The gate's decision, with every check's figures, for the manifest."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    compared_with: str | None = None
    method: str | None = None
    forced: bool = False

    @property
    def status(self) -> str:
        if self.passed:
            return "passed"
        return "forced" if self.forced else "held back"

    @property
    def publishable(self) -> bool:
        return self.passed or self.forced

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


def served_list(metrics: dict[str, Any]) -> str:
    """The list a version serves, by its metrics (``als`` before the ranker)."""
    return str((metrics.get("serving") or {}).get("list") or "als")


def metric_value(metrics: dict[str, Any], path: str) -> float | None:
    """``metrics['ranking'][model][metric]`` for ``path`` = ``model/metric``
    (``served/...``: the served list's)."""
    model, _, name = path.partition("/")
    if model == "served":
        model = served_list(metrics)
    v = (metrics.get("ranking") or {}).get(model, {}).get(name)
    return float(v) if isinstance(v, int | float) else None


def _floats(x: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _floats(v, f"{path}/{k}" if path else str(k))
    elif isinstance(x, list | tuple):
        for i, v in enumerate(x):
            yield from _floats(v, f"{path}[{i}]")
    elif isinstance(x, float):
        yield path, x


def _days(data: dict[str, Any]) -> float | None:
    try:
        return (pd.Timestamp(data["time_max"]) - pd.Timestamp(data["time_min"])).total_seconds() / (
            86400.0
        )
    except (KeyError, TypeError, ValueError):
        return None


class _Checks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.reasons: list[str] = []

    def add(self, name: str, ok: bool, detail: str, **figures: Any) -> None:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail, **figures})
        if not ok:
            self.reasons.append(detail)


def judge(
    candidate: Candidate,
    current: dict[str, Any] | None,
    cfg: GateConfig | None = None,
    *,
    current_version: str | None = None,
    force: bool = False,
) -> Verdict:
    """Judge ``candidate`` against the current version's manifest (None: a first version).

    Returns
    -------
    Verdict
        ``passed`` when every check holds; ``reasons`` say in words what looks
        wrong. ``force`` marks a version published whatever the verdict.
    """
    cfg = cfg or GateConfig()
    c = _Checks()
    _sanity(candidate, cfg, c)
    _ranking(candidate, current, cfg, c)
    _timing(candidate, current, cfg, c)
    if current is not None:
        _data(candidate, current, cfg, c)
    method = None
    if candidate.rescored is not None:
        method = candidate.rescored.get("method")
    elif current is not None:
        method = "stored figures" + (
            f" ({candidate.rescore_note})" if candidate.rescore_note else ""
        )
    return Verdict(
        passed=not c.reasons,
        reasons=c.reasons,
        checks=c.items,
        compared_with=current_version if current is not None else None,
        method=method,
        forced=force and bool(c.reasons),
    )


def _sanity(cand: Candidate, cfg: GateConfig, c: _Checks) -> None:
    bad = [p for p, v in _floats(cand.metrics) if not math.isfinite(v)]
    c.add(
        "finite figures",
        not bad,
        "every figure is finite" if not bad else f"non-finite figures: {', '.join(bad[:5])}",
    )
    top = cand.top_items
    if top is None or top.size == 0 or cand.n_items == 0:
        return
    k = top.shape[1]
    valid = top >= 0
    without = int((~valid.any(axis=1)).sum())
    c.add(
        "every active customer gets picks",
        without == 0,
        f"{without:,} of {len(top):,} active customers get no picks"
        if without
        else f"all {len(top):,} active customers get picks",
        customers=len(top),
        without_picks=without,
    )
    if cand.top_scores is not None:
        finite = np.isfinite(cand.top_scores[valid]).all()
        c.add(
            "finite scores",
            bool(finite),
            "every pick's score is finite" if finite else "picks have NaN or infinite scores",
        )
    shown = top[valid]
    distinct = int(np.unique(shown).size)
    need = min(cfg.min_distinct_items, cand.n_items)
    c.add(
        "picks not collapsed",
        distinct >= need,
        f"the top-{k} lists show {distinct} distinct items"
        + ("" if distinct >= need else f", fewer than {need}: the picks collapsed"),
        distinct_items=distinct,
        coverage=round(distinct / cand.n_items, 4),
    )
    if shown.size:
        per_item = np.bincount(shown, minlength=cand.n_items)
        share = float(per_item.max() / len(top))
        c.add(
            "most recommended item",
            share <= cfg.max_top_item_share,
            f"the most recommended item is in {share:.0%} of the top-{k} lists"
            + (
                ""
                if share <= cfg.max_top_item_share
                else f" (at most {cfg.max_top_item_share:.0%}): the picks collapsed"
            ),
            top_item_share=round(share, 4),
        )


def _ranking(cand: Candidate, current: dict[str, Any] | None, cfg: GateConfig, c: _Checks) -> None:
    name = cfg.metric
    mine = metric_value(cand.metrics, name)
    theirs = metric_value(current.get("metrics", {}), name) if current else None
    if mine is None:
        if theirs is not None:
            c.add(
                "ranking model",
                False,
                f"the new version has no {name} (its ranking model was not trained or "
                f"judged: see the run's warnings); the current version has {theirs:.4f}",
            )
        elif cand.n_items >= 2:
            # items to rank, but no judged list: nothing shows it beats popularity
            c.add(
                "ranking model",
                False,
                f"the new version has no {name}: its ranking model was not trained or judged "
                "(see the run's warnings), so nothing shows it beats popularity",
            )
        elif not (cand.metrics.get("timing") or {}).get("rmse"):
            c.add(
                "anything judged",
                False,
                "the new version has neither a judged ranking model nor a judged "
                "next-purchase model: nothing was learnt that could be checked",
            )
        return
    pop = metric_value(cand.metrics, f"popularity/{name.partition('/')[2]}")
    if pop is not None:
        need = pop * (1 + cfg.min_popularity_lift)
        ok = mine > need
        c.add(
            "beats popularity",
            ok,
            f"{name} {mine:.4f} vs popularity {pop:.4f} on the same window"
            + (
                ""
                if ok
                else ": below popularity, so the log carries no usable signal "
                "(item ids scrambled or mismatched?)"
            ),
            candidate=mine,
            popularity=pop,
        )
    if current is None:
        return
    r = cand.rescored
    se = 0.0
    if r is not None and r.get("candidate") is not None and r.get("current") is not None:
        a, b, tol = float(r["candidate"]), float(r["current"]), cfg.tolerance
        se = float(r.get("std_error") or 0.0)
        how = (
            f"re-scored on {r['customers']:,} customers of the same weeks, standard error {se:.4f}"
        )
    elif theirs is not None:
        a, b = mine, theirs
        same = cand.metrics.get("ranking_window") == current.get("metrics", {}).get(
            "ranking_window"
        )
        tol = cfg.tolerance if same else cfg.stored_tolerance
        how = "stored figures, " + ("same window" if same else "different windows")
    else:
        return
    # Held back only when the drop beyond the tolerance is larger than the
    # noise of the paired comparison (two standard errors), not by chance.
    ok = (b * (1 - tol)) - a <= cfg.noise_z * se
    c.add(
        "ranking vs current",
        ok,
        f"{name} {a:.4f} vs current {b:.4f} ({how}; tolerance {tol:.0%})"
        + ("" if ok else f": {1 - a / b:.0%} worse than the served version"),
        candidate=a,
        current=b,
        tolerance=tol,
        std_error=se,
    )


def _timing(cand: Candidate, current: dict[str, Any] | None, cfg: GateConfig, c: _Checks) -> None:
    mine = (cand.metrics.get("timing") or {}).get("rmse")
    theirs = ((current or {}).get("metrics", {}).get("timing") or {}).get("rmse")
    if theirs is None:
        return
    if mine is None:
        c.add(
            "timing model",
            False,
            f"the new version has no judged next-purchase model; the current one has "
            f"RMSE {theirs:.3f}",
        )
        return
    span = (cand.metrics.get("timing") or {}).get("horizon_days")
    their_span = ((current or {}).get("metrics", {}).get("timing") or {}).get("horizon_days")
    if span != their_span:
        # an error over 7 days and one over 28 are not the same quantity
        c.add(
            "timing vs current",
            True,
            f"next-purchase RMSE {mine:.3f} over {span} days, current {theirs:.3f} over "
            f"{their_span} days: different horizons, not compared",
        )
        return
    ok = mine <= theirs * (1 + cfg.timing_tolerance)
    c.add(
        "timing vs current",
        ok,
        f"next-purchase RMSE {mine:.3f} vs current {theirs:.3f} (stored figures; tolerance "
        f"{cfg.timing_tolerance:.0%})" + ("" if ok else ": the timing model got worse"),
        candidate=mine,
        current=theirs,
        tolerance=cfg.timing_tolerance,
    )


def _data(cand: Candidate, current: dict[str, Any], cfg: GateConfig, c: _Checks) -> None:
    new, old = cand.data or {}, current.get("data") or {}
    r = cfg.min_rows_ratio
    for key, what in (("rows", "rows"), ("customers", "customers")):
        a, b = new.get(key), old.get(key)
        if not a or not b:
            continue
        ok = a >= r * b
        c.add(
            f"{key} vs previous",
            ok,
            f"{a:,} {what}, {a / b:.0%} of the previous version's {b:,}"
            + (
                ""
                if ok
                else f": far fewer {what} than last time (is the export cut short, or "
                f"{'customers missing' if key == 'customers' else 'rows missing'}?)"
            ),
            candidate=a,
            previous=b,
        )
    a_days, b_days = _days(new), _days(old)
    if a_days is not None and b_days:
        ok = a_days >= r * b_days
        c.add(
            "time range vs previous",
            ok,
            f"the log covers {a_days:.0f} days, the previous {b_days:.0f}"
            + ("" if ok else ": the log is far shorter than the last one"),
            candidate_days=round(a_days, 1),
            previous_days=round(b_days, 1),
        )
    if new.get("time_max") and old.get("time_max"):
        a_end, b_end = pd.Timestamp(new["time_max"]), pd.Timestamp(old["time_max"])
        ok = a_end >= b_end - pd.Timedelta(days=1)  # a day's slack: the last order's hour varies
        c.add(
            "log end vs previous",
            ok,
            f"the log ends {a_end.date()}, the previous one {b_end.date()}"
            + ("" if ok else ": the log ends before the last one did (an old export?)"),
        )
    nv, ov = cand.validation or {}, current.get("validation") or {}
    read, prev_read = nv.get("rows_read"), ov.get("rows_read")
    dup = (nv.get("dropped") or {}).get("duplicate")
    prev_dup = (ov.get("dropped") or {}).get("duplicate")
    if read and prev_read and dup is not None and prev_dup is not None:
        expected = prev_dup * read / prev_read
        excess = dup - expected
        limit = max(cfg.max_duplicate_jump * read, 1.0)
        ok = excess <= limit
        c.add(
            "duplicates vs previous",
            ok,
            f"{dup:,} exact duplicate rows ({dup / read:.2%} of rows read; previous "
            f"{prev_dup / prev_read:.2%})"
            + ("" if ok else ": duplicates jumped, part of the log was exported twice"),
            candidate=dup,
            previous=prev_dup,
        )


# ------------------------------------------------------------------- re-scoring


def _top_among(model: ALSRecommender, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` positions into ``cols`` for customer ``rows`` by ALS score."""
    assert model.user_factors_ is not None and model.item_factors_ is not None
    items = model.item_factors_[cols]
    k = min(k, len(cols))
    out = np.empty((len(rows), k), dtype=np.int64)
    for s in range(0, len(rows), 2048):
        out[s : s + 2048] = top_k(model.user_factors_[rows[s : s + 2048]] @ items.T, k)[0]
    return out


_PER_CUSTOMER = {"ndcg": ndcg_at_k, "recall": recall_at_k, "map": average_precision_at_k}


#: A served list as the gate re-scores it: ``(customer rows, item rows to rank
#: among, k) -> (n, k)`` positions into those item rows, ``-1`` where none.
Lists = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def _lists_of(model: ALSRecommender | Lists) -> Lists:
    if isinstance(model, ALSRecommender):
        return lambda rows, cols, k: _top_among(model, rows, cols, k)
    return model


def rescore(
    candidate: ALSRecommender | Lists,
    customers: IdIndex,
    items: IdIndex,
    relevant: sp.csr_matrix,
    current: ALSRecommender | Lists,
    current_customers: IdIndex,
    current_items: IdIndex,
    metric: str,
    *,
    min_customers: int = 30,
) -> dict[str, Any] | None:
    """Score both models on the same customers, items and purchases.

    A model is an ALS model (ranked by its scores) or a function giving a
    served list's picks (:data:`Lists`). ``candidate`` should have been
    fitted on the same span of the log as ``current`` (the pipeline
    warm-starts its judged model up to the current version's day), and
    ``relevant`` (on the candidate's indexes) should hold only purchases
    neither was trained on. Customers and items are mapped
    through the id indexes; both models rank only the items both know, for
    the customers both know who buy such an item in the window.

    Returns
    -------
    dict or None
        ``candidate``, ``current`` (mean ``metric``), ``std_error`` of their
        paired per-customer difference, ``customers``, ``items``; None when
        fewer than ``min_customers`` can be judged or ``metric`` is not
        ``ndcg@k``, ``recall@k`` or ``map@k``.
    """
    name = metric.partition("/")[2] or metric
    kind, _, k_text = name.partition("@")
    if kind not in _PER_CUSTOMER or not k_text.isdigit():
        return None
    k = int(k_text)
    item_map = current_items.rows(items.ids_)
    cols = np.flatnonzero(item_map >= 0)
    if len(cols) < 2:
        return None
    cust_map = current_customers.rows(customers.ids_)
    rel = relevant.tocsr()[:, cols]
    users = np.flatnonzero((cust_map >= 0) & (np.diff(rel.indptr) > 0))
    if len(users) < min_customers:
        return None
    rel_u = rel[users]
    per = {}
    for who, model, rows, icols in (
        ("candidate", candidate, users, cols),
        ("current", current, cust_map[users], item_map[cols]),
    ):
        per[who] = _PER_CUSTOMER[kind](_lists_of(model)(rows, icols, k), rel_u, k)
    diff = per["candidate"] - per["current"]
    return {
        "candidate": float(per["candidate"].mean()),
        "current": float(per["current"].mean()),
        "std_error": float(diff.std(ddof=1) / np.sqrt(len(diff))),
        "customers": int(len(users)),
        "items": int(len(cols)),
        "metric": name,
    }
