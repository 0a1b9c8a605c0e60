"""Campaign lists: which customers to write to, and what to show them.

A marketer picks a list and narrows it:

* **likely to buy**: customers with a purchase history whose probability of
  buying within the next ``within_days`` is in a range;
* **at risk**: once-regular customers whose probability of being active is
  falling (:class:`AtRiskRule`), most fallen first;

both filtered by the categories a customer bought from and by their
**segment** (:data:`SEGMENTS`), each customer with their top picks (the
picks :class:`~recommender.answers.Answerer` gives them on every surface).
The probabilities are those of :func:`~recommender.answers.timing_table`
(the same model calls), and the probability of being active is read as it
is everywhere (:func:`~recommender.answers.p_active_shown`).

Counting a list is a few vectorised passes over the customers, cached per
window, so the count can be shown before anything is downloaded; picks are
ranked only for the rows asked for, a page or a block of a download at a
time.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from recommender.answers import (
    Answerer,
    AnswerError,
    Rules,
    as_of_date,
    likely_purchase_days,
    p_active_shown,
    purchase_dates,
)

Kind = Literal["likely", "at_risk"]
KINDS: tuple[str, ...] = ("likely", "at_risk")
#: Segments, each customer in exactly one (the first that applies, in this order).
SEGMENTS: tuple[str, ...] = ("new", "one-time", "lapsed", "at risk", "regular")
#: The most customers one download holds.
MAX_DOWNLOAD = 100_000
#: The most picks per customer in a list.
MAX_PICKS = 10
#: The longest window a list can look ahead, in days.
MAX_WINDOW_DAYS = 365


class TooSlow(Exception):
    """A download that could not be written within its time budget.

    Attributes
    ----------
    done, total
        Customers written when the budget ran out, and in the whole download.
    seconds
        Time spent.
    picks
        Picks per customer asked for (what costs the time).
    """

    def __init__(self, done: int, total: int, seconds: float, picks: int) -> None:
        self.done, self.total, self.seconds, self.picks = done, total, seconds, picks
        advice = (
            "download fewer customers (limit), or without picks (picks=0); "
            "`encore due -k` writes a list of any length with picks"
            if picks
            else "download fewer customers (limit)"
        )
        super().__init__(
            f"the list was not written in time: {done:,} of {total:,} customers took "
            f"{seconds:.1f} s; {advice}"
        )


@dataclass(frozen=True)
class AtRiskRule:
    """Who counts as at risk: once regular, and slipping away.

    A customer is at risk when all of these hold:

    Attributes
    ----------
    min_purchase_days
        They bought on at least this many different days (once regular).
    lookback_days
        They bought nothing in the last ``lookback_days``, and their
        probability of being active then (the same history, ``lookback_days``
        less of silence) ...
    was_active
        ... was at least this, ...
    min_drop
        ... and has fallen by at least this since, ...
    lapsed_below
        ... but is not yet under this (below it they count as lapsed).
    new_days
        Customers whose first purchase is this recent are "new" whatever
        their figures.
    """

    min_purchase_days: int = 3
    lookback_days: float = 30.0
    was_active: float = 0.5
    min_drop: float = 0.15
    lapsed_below: float = 0.1
    new_days: float = 30.0


@dataclass(frozen=True)
class CampaignQuery:
    """One campaign list.

    Attributes
    ----------
    kind
        ``"likely"`` (most likely to buy first) or ``"at_risk"`` (most
        fallen probability of being active first).
    within_days
        The window of the probability of buying (1 to :data:`MAX_WINDOW_DAYS`).
    min_probability, max_probability
        Keep customers whose probability of buying within the window is in
        this range.
    categories
        Keep customers who bought from any of these catalogue categories
        (empty: everyone).
    segment
        Keep one segment of :data:`SEGMENTS` (None: all).
    """

    kind: Kind = "likely"
    within_days: float = 30.0
    min_probability: float = 0.0
    max_probability: float = 1.0
    categories: tuple[str, ...] = field(default_factory=tuple)
    segment: str | None = None


#: The columns of a list, as shown and downloaded (picks follow as pick_1 ... pick_k).
COLUMNS = [
    "customer_id",
    "segment",
    "p_purchase",
    "p_active",
    "p_active_before",
    "last_purchase",
    "next_purchase_date",
]


class Campaigns:
    """Campaign lists over one version (see the module docstring).

    Parameters
    ----------
    answerer
        The answering rules of the served version (for categories and picks).
    rule
        Who counts as at risk.
    """

    def __init__(self, answerer: Answerer, rule: AtRiskRule | None = None) -> None:
        self.answerer = answerer
        self.bundle = answerer.bundle
        self.rule = rule or AtRiskRule()
        timing = self.bundle.timing
        if timing is None:
            raise AnswerError(
                "unavailable", "this model version has no next-purchase model, so no campaigns"
            )
        self.timing = timing
        s, u = timing.summary_, float(timing.unit_days)
        self._x, self._tx, self._T = s.x, s.t_x / u, s.T / u
        self._has = np.asarray(s.has_history, dtype=bool)
        self._lock = threading.Lock()
        self._windows: OrderedDict[float, np.ndarray] = OrderedDict()
        self._lists: OrderedDict[CampaignQuery, np.ndarray] = OrderedDict()
        self._state: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -- what every list reads ------------------------------------------------------
    def _model(self) -> Any:
        model = self.timing.model_
        assert model is not None  # a loaded version's timing model is fitted
        return model

    def _activity(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per customer: p_active now (as shown), p_active ``lookback_days`` ago, segment code."""
        with self._lock:
            if self._state is not None:
                return self._state
        r, model = self.rule, self._model()
        u = float(self.timing.unit_days)
        x, tx, T, has = self._x, self._tx, self._T, self._has
        rows = np.arange(x.size)
        now = p_active_shown(self.timing, rows, model.p_alive(x, tx, T))
        quiet = (T - tx) * u >= r.lookback_days  # nothing bought in the lookback
        then = np.full(x.size, np.nan)
        then[quiet] = model.p_alive(x[quiet], tx[quiet], T[quiet] - r.lookback_days / u)
        then = p_active_shown(self.timing, rows, then)
        seg = np.full(x.size, SEGMENTS.index("regular"), dtype=np.int8)
        with np.errstate(invalid="ignore"):  # NaN compares False: unknown is never at risk
            at_risk = (
                (x + 1 >= r.min_purchase_days)
                & quiet
                & (then >= r.was_active)
                & (then - now >= r.min_drop)
                & (now >= r.lapsed_below)
            )
            lapsed = now < r.lapsed_below
        seg[at_risk] = SEGMENTS.index("at risk")
        seg[lapsed] = SEGMENTS.index("lapsed")
        seg[(x == 0) & has] = SEGMENTS.index("one-time")
        seg[has & (T * u <= r.new_days)] = SEGMENTS.index("new")
        state = (now, then, seg)
        with self._lock:
            self._state = state
        return state

    def _p_purchase(self, within_days: float) -> np.ndarray:
        """P(buy within ``within_days``) of every customer, as :func:`timing_table` gives it."""
        key = float(within_days)
        with self._lock:
            if key in self._windows:
                self._windows.move_to_end(key)
                return self._windows[key]
        u = float(self.timing.unit_days)
        p = np.asarray(
            self._model().p_purchase_within(key / u, self._x, self._tx, self._T),
            dtype=np.float64,
        )
        with self._lock:
            self._windows[key] = p
            while len(self._windows) > 4:
                self._windows.popitem(last=False)
        return p

    def check(self, q: CampaignQuery) -> None:
        """Raise :class:`AnswerError` (``"bad_request"``) for a query that cannot be answered."""
        if q.kind not in KINDS:
            raise AnswerError("bad_request", f"kind must be one of {', '.join(KINDS)}")
        if not 1 <= q.within_days <= MAX_WINDOW_DAYS:
            raise AnswerError(
                "bad_request",
                f"the window must be between 1 and {MAX_WINDOW_DAYS} days; got {q.within_days:g}",
            )
        if not 0 <= q.min_probability <= q.max_probability <= 1:
            raise AnswerError(
                "bad_request",
                "probabilities must satisfy 0 <= minimum <= maximum <= 1; "
                f"got {q.min_probability:g} and {q.max_probability:g}",
            )
        if q.segment is not None and q.segment not in SEGMENTS:
            raise AnswerError(
                "bad_request", f"unknown segment {q.segment!r}; one of: {', '.join(SEGMENTS)}"
            )
        if q.kind == "at_risk" and q.segment not in (None, "at risk"):
            raise AnswerError(
                "bad_request",
                f"an at-risk list holds the 'at risk' segment only; not {q.segment!r}",
            )
        self.answerer.check(Rules(categories=list(q.categories) or None))

    def _bought_from(self, categories: Sequence[str]) -> np.ndarray:
        """Which customers bought from any of ``categories``."""
        items = np.zeros(self.bundle.n_items)
        for c in categories:
            items[self.answerer.categories[c]] = 1.0
        return np.asarray(self.bundle.history @ items).ravel() > 0

    # -- lists ------------------------------------------------------------------------
    def select(self, q: CampaignQuery) -> np.ndarray:
        """The customer rows of a list, in its order.

        Raises
        ------
        AnswerError
            ``"bad_request"`` for a query :meth:`check` refuses.
        """
        self.check(q)
        with self._lock:
            if q in self._lists:  # the count, each preview page and the download ask alike
                self._lists.move_to_end(q)
                return self._lists[q]
        now, then, seg = self._activity()
        p = self._p_purchase(q.within_days)
        keep = self._has & (p >= q.min_probability) & (p <= q.max_probability)
        if q.kind == "at_risk" or q.segment is not None:
            keep &= seg == SEGMENTS.index(q.segment or "at risk")
        if q.categories:
            keep &= self._bought_from(q.categories)
        rows = np.flatnonzero(keep)
        if q.kind == "at_risk":
            key = then[rows] - now[rows]  # most fallen first
        else:
            key = p[rows]
        ordered = rows[np.lexsort((rows, -key))]
        ordered.setflags(write=False)  # shared by every caller of the same list
        with self._lock:
            self._lists[q] = ordered
            while len(self._lists) > 8:
                self._lists.popitem(last=False)
        return ordered

    def count(self, q: CampaignQuery) -> int:
        """How many customers the list holds."""
        return int(self.select(q).size)

    def segment_of(self, row: int) -> str | None:
        """The segment of one customer (None without a purchase history)."""
        _, _, seg = self._activity()
        return SEGMENTS[int(seg[row])] if bool(self._has[row]) else None

    def segment_counts(self) -> dict[str, int]:
        """Customers with a history in each segment."""
        _, _, seg = self._activity()
        n = np.bincount(seg[self._has], minlength=len(SEGMENTS))
        return {name: int(n[i]) for i, name in enumerate(SEGMENTS)}

    def table(
        self, q: CampaignQuery, rows: np.ndarray, picks: int, rules: Rules | None = None
    ) -> pd.DataFrame:
        """The list's columns (:data:`COLUMNS`, then ``pick_1`` ... ``pick_<picks>``
        item ids) for ``rows`` of it.

        The picks are those the recommendations API gives each customer under
        ``rules`` (default: the API's defaults).
        """
        if not 0 <= picks <= MAX_PICKS:
            raise AnswerError("bad_request", f"picks must be between 0 and {MAX_PICKS}")
        rows = np.asarray(rows, dtype=np.int64)
        now, then, seg = self._activity()
        s = self.timing.summary_
        as_of = pd.Timestamp(self.bundle.manifest["as_of"])
        last = purchase_dates(as_of, s.last_day[rows] - s.as_of_day + 1.0)
        days = likely_purchase_days(self.timing, rows)
        frame = pd.DataFrame(
            {
                "customer_id": self.bundle.customers.ids_[rows],
                "segment": np.asarray(SEGMENTS, dtype=object)[seg[rows]],
                "p_purchase": np.round(self._p_purchase(q.within_days)[rows], 6),
                "p_active": np.round(now[rows], 6),
                "p_active_before": np.round(then[rows], 6),
                "last_purchase": last,
                "next_purchase_date": purchase_dates(as_of, days),
            },
            columns=COLUMNS,
        )
        if picks:
            ranked = self.answerer.rank_rows(rows, picks, rules or Rules(), pruned=True)
            ids = self.bundle.items.ids_
            for j in range(ranked.items.shape[1]):
                col = ranked.items[:, j]
                frame[f"pick_{j + 1}"] = np.where(col >= 0, ids[np.maximum(col, 0)], "")
        return frame

    def csv(
        self,
        q: CampaignQuery,
        limit: int,
        picks: int,
        *,
        budget_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> str:
        """The first ``limit`` rows of a list as CSV text (header included).

        Picks are ranked a block of customers at a time; when ``budget_s``
        runs out before the last block, :class:`TooSlow` is raised instead of
        answering with part of the list (a file cut short would look whole).

        Raises
        ------
        AnswerError
            ``"bad_request"`` for a query :meth:`check` refuses or a limit
            outside 1 to :data:`MAX_DOWNLOAD`.
        TooSlow
            When ``budget_s`` is spent before the list is written.
        """
        if not 1 <= limit <= MAX_DOWNLOAD:
            raise AnswerError(
                "bad_request", f"a download holds 1 to {MAX_DOWNLOAD:,} customers; got {limit:,}"
            )
        start = clock()
        rows = self.select(q)[:limit]
        # picks cost a ranking per customer: small blocks keep the budget checked often
        block = 500 if picks else 20_000
        out = io.StringIO()
        columns = COLUMNS + [f"pick_{j}" for j in range(1, picks + 1)]
        out.write(",".join(columns) + "\n")
        for at in range(0, rows.size, block):
            if budget_s is not None and at and clock() - start > budget_s:
                raise TooSlow(at, int(rows.size), clock() - start, picks)
            self.table(q, rows[at : at + block], picks).to_csv(out, index=False, header=False)
        return out.getvalue()

    def as_of(self) -> str | None:
        """The day the list's figures are as of."""
        return as_of_date(self.bundle.manifest)


__all__ = [
    "COLUMNS",
    "KINDS",
    "MAX_DOWNLOAD",
    "MAX_PICKS",
    "MAX_WINDOW_DAYS",
    "SEGMENTS",
    "AtRiskRule",
    "TooSlow",
    "CampaignQuery",
    "Campaigns",
]
