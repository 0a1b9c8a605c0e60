"""What a customer should see, and when they will buy: the one place that decides.

Every surface that answers "what should this customer see" (the API's single,
recent-items and batch routes, and the batch export behind ``encore
recommend``) goes through an :class:`Answerer` built on one loaded
:class:`~recommender.store.bundle.Bundle`, with the business :class:`Rules` of
the question. Every surface that answers "when will they buy" (the API's
next-purchase route and due list, and ``encore next-purchase``) goes through
:func:`timing_table` or :func:`due_table`, so a date has one rule
(:func:`purchase_dates`).

The rules, in the order they apply:

* items outside the asked categories, the excluded items and (by default,
  when the catalogue marks any item unavailable) unavailable items are never
  shown;
* a known customer's past purchases are shown or hidden as
  :attr:`Rules.exclude_purchased` says (by default, as the served list
  ranks them);
* a known customer is ranked by the version's served list (the manifest's
  ``serving``): from the precomputed top-N table when it holds ``k`` allowed
  items; else, for the two-stage ranker, by ranking the customer's
  candidates (:func:`~recommender.ranking.two_stage.score_candidates`) and
  following them with ALS's order of the other allowed items; for ALS (and
  a baseline's table) by exact ALS scores (the pruned exact search of
  :class:`~recommender.ranking.als_search.NormOrderedSearch` for a single
  customer of a large catalogue, under a category filter over that
  category's items only; blocked matrix products otherwise), ties to
  the lower item row;
* customers the model has not seen (and every customer of a version without a
  ranking model) get the popular items allowed to them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommender.ranking.als_search import (
    PRUNE_MIN_ITEMS,
    NormOrderedSearch,
    scan_by_norm,
    select_top,
)
from recommender.ranking.base import in_sorted, scratch_block, top_k, top_k_sparse
from recommender.ranking.two_stage import score_candidates
from recommender.store.bundle import Bundle
from recommender.timing.repurchase import days_text
from recommender.value.clv import lifetime_value

Strategy = Literal["personalized", "folded_in", "popular"]
#: An item is "often bought with" one a customer bought when that one is
#: among its this many closest co-purchases (item-kNN).
CLOSE_NEIGHBOURS = 10
#: A pick is "in a category you often buy" from this share of a customer's
#: purchases on.
OWN_CATEGORY_SHARE = 0.2
#: Served lists that rank a customer's own purchases like any other item.
REPEAT_LISTS = ("ranker", "p_topfreq", "tifu_knn", "personal_frequency")
ErrorKind = Literal["bad_request", "unavailable"]


class AnswerError(Exception):
    """A question this model version cannot answer.

    Parameters
    ----------
    kind
        ``"bad_request"``: the question itself is wrong (an unknown category,
        or categories asked of a model without any). ``"unavailable"``: the
        version lacks the model the question needs (ranking, timing or
        buy-again).
    message
        What went wrong, in words a caller can show as is.
    """

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message


@dataclass(frozen=True)
class Rules:
    """The business rules of a recommendations question.

    Attributes
    ----------
    categories
        Show only items of these catalogue categories (``None`` or empty: all).
        An unknown name is an :class:`AnswerError` of kind ``"bad_request"``.
    exclude_items
        Item ids never to show; ids the model does not know are ignored.
    exclude_purchased
        ``None`` (the default): the served list decides what of a known
        customer's purchases to show again: the two-stage ranker and the
        repeat baselines rank them like any item; ALS and item-kNN lists hide
        them except repurchase items (those the buy-again model expects to be
        bought again). ``True``: hide every purchase (an explore-only list,
        ranked by the ranker when it beat ALS on new items, else by ALS).
        ``False``: hide nothing.
    available_only
        Hide items the catalogue marks unavailable. ``None`` means "yes when
        the catalogue marks any item unavailable".
    """

    categories: Sequence[str] | None = None
    exclude_items: Sequence[str] | None = None
    exclude_purchased: bool | None = None
    available_only: bool | None = None


@dataclass(frozen=True)
class Pick:
    """One recommended item.

    Attributes
    ----------
    item_row
        The item's row in the bundle's item index.
    score
        The ranking score (the ALS score, or the popularity for popular picks).
    reason
        Why it is shown: "due to rebuy", "similar to X", "matches your taste",
        "popular in C" or "popular right now".
    """

    item_row: int
    score: float
    reason: str


@dataclass(frozen=True)
class Answer:
    """The picks for one customer and how they were chosen.

    Attributes
    ----------
    strategy
        ``"personalized"`` (a known customer ranked by the model),
        ``"folded_in"`` (ranked from recent items) or ``"popular"``.
    picks
        Best first; fewer than asked when the rules allow fewer items.
    ignored
        Recent item ids the model does not know (only for recent-item questions).
    """

    strategy: Strategy
    picks: list[Pick]
    ignored: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RankedRows:
    """Picks for many customer rows at once, as arrays (no reasons).

    Attributes
    ----------
    items
        ``(n, k)`` item rows, int32, best first, ``-1`` after the last pick.
    scores
        ``(n, k)`` float32 scores aligned with ``items`` (``-inf`` where none).
    personalized
        ``(n,)`` bool: ranked by the model (else popular items).
    """

    items: np.ndarray
    scores: np.ndarray
    personalized: np.ndarray


class _CategoryBlocks:
    """Item factors laid out category by category, each category's items in
    order of decreasing factor norm, for the pruned search within categories.

    Attributes
    ----------
    rows
        Item rows in that order.
    factors, neg_norms, available
        Their factors (contiguous), negated norms and availability flags.
    spans
        Each category's ``(start, stop)`` in that order.
    place
        Each item's place in that order (``-1`` for items of no category).
    """

    def __init__(
        self, item_factors: np.ndarray, categories: dict[str, np.ndarray], available: np.ndarray
    ) -> None:
        norms = np.sqrt(np.einsum("ij,ij->i", item_factors, item_factors, dtype=np.float64))
        parts, self.spans = [], {}
        start = 0
        for name, rows in categories.items():
            parts.append(rows[np.argsort(-norms[rows], kind="stable")])
            self.spans[name] = (start, start + len(rows))
            start += len(rows)
        self.rows = np.concatenate(parts)
        self.factors = np.ascontiguousarray(item_factors[self.rows])
        self.neg_norms = -norms[self.rows]  # ascending within each category
        self.available = available[self.rows]
        self.place = np.full(len(item_factors), -1, dtype=np.int64)
        self.place[self.rows] = np.arange(len(self.rows))


class Answerer:
    """The answering rules over one bundle, with what they need precomputed once.

    Parameters
    ----------
    bundle
        A loaded version; it is read, never changed.
    due_days
        Horizon of the buy-again probability behind the "due to rebuy" reason.
    prune_min_items
        Catalogues with at least this many items rank a single customer with
        the pruned exact search (default
        :data:`~recommender.ranking.als_search.PRUNE_MIN_ITEMS`).
    prune_first_block
        Items the pruned search scores before it first tries its bound.
    due_once
        Find every customer's due items when the answerer is built (what a
        server wants); False: one customer's when asked (a page about a few).

    Notes
    -----
    With the pruned search and a catalogue with categories, the item factors
    are held a second time, laid out category by category and each category's
    by decreasing norm (25 MB for 100,000 items x 64 factors), so that a
    category filter runs the pruned search over one contiguous block per
    category instead of gathering and scoring all its items on every request.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        due_days: float = 30.0,
        prune_min_items: int | None = None,
        prune_first_block: int = 1024,
        due_once: bool = True,
    ) -> None:
        self.bundle = bundle
        self.due_days = due_days
        cat = bundle.catalog
        self.categories: dict[str, np.ndarray] = {}
        if cat.has_categories:
            frame = pd.DataFrame({"c": cat.category, "i": np.arange(bundle.n_items)})
            for name, grp in frame.groupby("c", sort=True):
                if name:
                    self.categories[str(name)] = grp["i"].to_numpy()
        self.any_unavailable = bool((~cat.available).any())
        self.popular_order = np.argsort(-bundle.popularity, kind="stable")
        # the ranker's candidates are followed by nothing (-inf) in top_k_sparse
        self._no_fill = np.full(bundle.n_items, -np.inf, dtype=np.float32)
        rep = bundle.repurchase
        self.repurchase_items = (
            np.asarray(rep.is_repurchase_item_, dtype=bool)
            if rep is not None
            else np.zeros(bundle.n_items, dtype=bool)
        )
        # The items each customer is due to rebuy, for the "due to rebuy"
        # reason: one vectorised pass per version instead of a buy-again
        # ranking on every request.
        self._due: sp.csr_matrix | None = None
        if rep is not None and due_once:
            self._due = self._due_rows(np.arange(rep.n_customers_))
        self.as_of = pd.Timestamp(bundle.manifest.get("as_of"))
        min_items = PRUNE_MIN_ITEMS if prune_min_items is None else prune_min_items
        als = bundle.als
        self.search: NormOrderedSearch | None = None
        if als is not None and als.item_factors_ is not None and bundle.n_items >= min_items:
            self.search = NormOrderedSearch(als, first_block=prune_first_block)
        # the ranker's stage as one request uses it: its ALS candidates found
        # by the same pruned search (the bundle's own stage is left as loaded)
        self._live_stage = (
            dataclasses.replace(bundle.stage, search=self.search)
            if bundle.stage is not None and self.search is not None and bundle.stage.als is als
            else bundle.stage
        )
        # What a single request needs of the rules, prepared once so that it
        # never allocates a catalogue-sized mask: each item's category as a
        # number, and (with the pruned search) the item factors laid out
        # category by category, each category's in order of decreasing norm,
        # so that a category filter runs the pruned search over its own
        # contiguous block instead of gathering and scoring all its items.
        self._category_number = {name: j for j, name in enumerate(self.categories)}
        self._item_category = np.full(bundle.n_items, -1, dtype=np.int32)
        for name, rows in self.categories.items():
            self._item_category[rows] = self._category_number[name]
        self._category_spans: dict[str, tuple[int, int]] = {}
        self._by_category: _CategoryBlocks | None = None
        if self.search is not None and self.categories:
            assert als is not None and als.item_factors_ is not None
            self._by_category = _CategoryBlocks(
                als.item_factors_, self.categories, np.asarray(cat.available, dtype=bool)
            )
            self._category_spans = self._by_category.spans

    # -- rules -------------------------------------------------------------------
    def label(self, row: int) -> str:
        """How an item is named in a reason: its title, else its id."""
        title = str(self.bundle.catalog.title[row])
        return title or self.bundle.items.id(row)

    def check(self, rules: Rules) -> None:
        """Raise :class:`AnswerError` (``"bad_request"``) for categories that cannot be used."""
        if not rules.categories:
            return
        if not self.categories:
            raise AnswerError(
                "bad_request", "this model has no item categories (train with a catalog)"
            )
        unknown = [c for c in rules.categories if c not in self.categories]
        if unknown:
            known = ", ".join(sorted(self.categories)[:12])
            raise AnswerError(
                "bad_request",
                f"unknown category {unknown[0]!r}; known categories include: {known}",
            )

    def allowed(self, rules: Rules) -> np.ndarray:
        """Items any customer may be shown under ``rules`` (before their own history).

        Raises
        ------
        AnswerError
            For categories that cannot be used (see :meth:`check`).
        """
        self.check(rules)
        if rules.categories:
            mask = np.zeros(self.bundle.n_items, dtype=bool)
            for c in rules.categories:
                mask[self.categories[c]] = True
            if self._available_only(rules):
                mask &= self.bundle.catalog.available
        elif self._available_only(rules):
            mask = np.array(self.bundle.catalog.available, dtype=bool)  # a copy
        else:
            mask = np.ones(self.bundle.n_items, dtype=bool)
        if rules.exclude_items:
            mask[self._excluded(rules)] = False
        return mask

    def _available_only(self, rules: Rules) -> bool:
        """Whether ``rules`` hide the items the catalogue marks unavailable."""
        return self.any_unavailable if rules.available_only is None else rules.available_only

    def _excluded(self, rules: Rules) -> np.ndarray:
        """Item rows of ``rules.exclude_items`` the model knows, sorted (int64)."""
        if not rules.exclude_items:
            return np.empty(0, np.int64)
        rows = [self.bundle.items.row(item) for item in rules.exclude_items]
        return np.sort(np.array([r for r in rows if r is not None], dtype=np.int64))

    def _dropped(self, rules: Rules, hidden: np.ndarray) -> np.ndarray:
        """The excluded items of ``rules`` and the ``hidden`` ones, sorted (int64)."""
        if not rules.exclude_items:
            return np.sort(hidden)
        return np.sort(np.concatenate([self._excluded(rules), hidden]))

    def _admits(self, items: np.ndarray, rules: Rules, hidden: np.ndarray) -> np.ndarray:
        """Which of ``items`` (item rows) ``rules`` allow and ``hidden`` does not hold.

        ``self.allowed(rules)[items]`` with the ``hidden`` rows cleared, without
        the catalogue-sized mask: what one request needs for its table row.
        """
        if self._available_only(rules):
            ok = self.bundle.catalog.available[items]
        else:
            ok = np.ones(len(items), dtype=bool)
        if rules.categories:
            # one flag per category number, and a last (False) one for items without
            wanted = np.zeros(len(self.categories) + 1, dtype=bool)
            wanted[[self._category_number[c] for c in rules.categories]] = True
            ok &= wanted[self._item_category[items]]
        drop = self._dropped(rules, hidden)
        if drop.size:
            ok &= ~in_sorted(items, drop)
        return ok

    def _in_categories(
        self, u: np.ndarray, rules: Rules, hidden: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items of highest score ``y_j . u`` that ``rules`` (with
        categories) allow and ``hidden`` does not hold, best first, ties to the
        lower item row: what :meth:`NormOrderedSearch.top_k` gives over
        ``self.allowed(rules)``, searching only the asked categories' blocks.
        """
        blocks = self._by_category
        assert blocks is not None and self.search is not None
        u = np.ascontiguousarray(u, dtype=np.float32)
        available_only = self._available_only(rules)
        at = blocks.place[self._dropped(rules, hidden)]
        rows_parts, score_parts = [], []
        for name in dict.fromkeys(rules.categories or []):
            start, stop = blocks.spans[name]
            if available_only:
                keep = blocks.available[start:stop].copy()
            else:
                keep = np.ones(stop - start, dtype=bool)
            keep[at[(at >= start) & (at < stop)] - start] = False
            rows, scores = scan_by_norm(
                u,
                blocks.factors[start:stop],
                blocks.neg_norms[start:stop],
                blocks.rows[start:stop],
                keep,
                int(np.count_nonzero(keep)),
                k,
                # half the catalogue's first block: the quickest on 2,500-item categories
                first_block=self.search.first_block // 2,
                in_order=True,
            )
            rows_parts.append(rows)
            score_parts.append(scores)
        if len(rows_parts) == 1:
            return rows_parts[0], score_parts[0]
        return select_top(np.concatenate(rows_parts), np.concatenate(score_parts), k)

    def _search_one(
        self, u: np.ndarray, rules: Rules, hidden: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The pruned search's top ``k`` for one query ``u`` under ``rules``,
        ``hidden`` item rows left out; a category filter scores only its items."""
        assert self.search is not None
        if rules.categories and self._by_category is not None:
            return self._in_categories(u, rules, hidden, k)
        allowed = self.allowed(rules)
        allowed[hidden] = False
        return self.search.top_k(u, allowed, k)

    def history(self, row: int) -> np.ndarray:
        """Item rows a known customer bought."""
        h = self.bundle.history
        return h.indices[h.indptr[row] : h.indptr[row + 1]]

    def _hide(self, rules: Rules) -> Literal["all", "one_off", "none"]:
        """Which purchases ``rules`` hide: all, all but repurchase items, or none."""
        if rules.exclude_purchased is True:
            return "all"
        if rules.exclude_purchased is False or self.bundle.served in REPEAT_LISTS:
            return "none"
        return "one_off"

    def mode(self, rules: Rules) -> Literal["ranker", "als", "popular"]:
        """The list that answers ``rules`` for known customers."""
        explore = rules.exclude_purchased is True
        if explore and self.bundle.explore == "ranker":
            return "ranker"
        if not explore and self.bundle.served == "ranker":
            return "ranker"
        if self.bundle.als is None or (not explore and self.bundle.served == "popularity"):
            return "popular"
        return "als"

    def _table_serves(self, rules: Rules) -> bool:
        """The precomputed table holds the list :meth:`mode` answers with."""
        served = self.bundle.served
        if self.mode(rules) == "ranker":
            return served == "ranker"
        return served == "als" or (served != "ranker" and rules.exclude_purchased is not True)

    def _hidden_one(self, row: int, rules: Rules) -> np.ndarray:
        """The item rows :meth:`_hidden` hides from the one customer ``row``."""
        hide = self._hide(rules)
        if hide == "none":
            return np.empty(0, np.int64)
        items = self.history(row)
        if hide == "one_off":
            items = items[~self.repurchase_items[items]]
        return items.astype(np.int64)

    def _hidden(self, rows: np.ndarray, rules: Rules) -> tuple[np.ndarray, np.ndarray]:
        """Purchases hidden from each of ``rows``: ``(position in rows, item row)`` pairs,
        sorted by position (see :meth:`_hide`)."""
        hide = self._hide(rules)
        if hide == "none" or len(rows) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        h = self.bundle.history
        starts, counts = h.indptr[rows], h.indptr[rows + 1] - h.indptr[rows]
        pos = np.repeat(np.arange(len(rows)), counts)
        offsets = np.cumsum(counts) - counts
        items = h.indices[np.arange(pos.size) - np.repeat(offsets - starts, counts)]
        if hide == "all":
            return pos, items.astype(np.int64)
        keep = ~self.repurchase_items[items]
        return pos[keep], items[keep].astype(np.int64)

    # -- ranking -------------------------------------------------------------------
    def _popular(self, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most popular allowed items (ties to the lower row) and their popularity."""
        order = self.popular_order[allowed[self.popular_order]][:k]
        return order, self.bundle.popularity[order].astype(np.float32)

    def _from_table(
        self, rows: np.ndarray, allowed: np.ndarray, hidden: tuple[np.ndarray, np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Answers the precomputed top-N table already holds.

        Returns ``(answered, items, scores)``: a mask over ``rows`` of those
        whose table row has at least ``k`` allowed items, and the first ``k``
        of them (in table order) for each answered row.
        """
        table, table_scores = self.bundle.topn_items, self.bundle.topn_scores
        none = np.zeros(len(rows), dtype=bool)
        if table is None or table_scores is None or k > table.shape[1]:
            return none, np.empty((0, k), np.int32), np.empty((0, k), np.float32)
        cand = table[rows]
        ok = allowed[cand]  # -1 (no item) reads the last item's flag, then is cleared
        ok &= cand >= 0
        pos, items = hidden
        if pos.size:
            n_items = self.bundle.n_items
            keys = np.sort(pos * n_items + items)
            place = np.arange(len(rows))[:, None] * n_items + cand
            ok &= ~in_sorted(place, keys)
        answered = ok.sum(axis=1) >= k
        if not answered.any():
            return answered, np.empty((0, k), np.int32), np.empty((0, k), np.float32)
        ok = ok[answered]
        ok &= np.cumsum(ok, axis=1) <= k
        return (
            answered,
            cand[answered][ok].reshape(-1, k).astype(np.int32),
            table_scores[rows[answered]][ok].reshape(-1, k).astype(np.float32),
        )

    def _rank_one(self, row: int, rules: Rules, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_rank_known` of one customer with ``pruned``, on 1-d arrays.

        The same rule step by step (the table when it holds ``k`` allowed items,
        else the ranker's candidates or the pruned search or exact scores),
        without the bookkeeping of a block, which would cost a request more than
        its table lookup, and without a catalogue-sized mask where the table or
        the pruned search answers (:meth:`_admits`, :meth:`_search_one`);
        ``tests/test_answers.py`` holds the two paths to the same picks.
        """
        hidden = self._hidden_one(row, rules)
        table, table_scores = self.bundle.topn_items, self.bundle.topn_scores
        if (
            table is not None
            and table_scores is not None
            and k <= table.shape[1]
            and self._table_serves(rules)
        ):
            cand = table[row]
            ok = self._admits(cand, rules, hidden)  # -1 (no item) reads the last item, then
            ok &= cand >= 0  # is cleared
            at = np.flatnonzero(ok)
            if len(at) >= k:
                at = at[:k]
                return cand[at], table_scores[row][at]
        if self.mode(rules) == "ranker":
            pos = np.zeros(hidden.size, dtype=np.int64)
            items, scores = self._rank_candidates(
                np.array([row]), self.allowed(rules), (pos, hidden), k
            )
            return items[0], scores[0]
        als = self.bundle.als
        assert als is not None and als.user_factors_ is not None
        if self.search is not None:
            return self._search_one(als.user_factors_[row], rules, hidden, k)
        allowed = self.allowed(rules)
        allowed[hidden] = False
        scores = als.score(np.array([row]))
        if not allowed.all():
            np.copyto(scores, np.float32(-np.inf), where=~allowed)
        items, top = top_k(scores, k)
        return items[0], top[0]

    def _rank_candidates(
        self,
        rows: np.ndarray,
        allowed: np.ndarray,
        hidden: tuple[np.ndarray, np.ndarray],
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The two-stage ranker's top ``k`` of known customers ``rows`` (one block).

        Each customer's allowed candidates, best ranker score first; when fewer
        than ``k``, the other allowed items follow in ALS's order (with
        scores one below the last ranked candidate, falling by one per place).
        """
        bundle = self.bundle
        assert bundle.ranker is not None and self._live_stage is not None
        n_items = bundle.n_items
        cands, _, scores = score_candidates(self._live_stage, bundle.ranker, rows, num_threads=1)
        m = cands.matrix
        local = np.repeat(np.arange(len(rows)), np.diff(m.indptr))
        keep = allowed[m.indices]
        pos, items = hidden
        if pos.size:
            keys = np.sort(pos * n_items + items)
            keep &= ~in_sorted(local * n_items + m.indices, keys)
        if len(rows) == 1:
            # one customer (a request): their few candidates sorted directly, in
            # top_k_sparse's order (best score first, ties to the lower item)
            top, vals = select_top(m.indices[keep].astype(np.int64), scores[keep], k)
            out_items = np.full((1, k), -1, dtype=np.int32)
            out_scores = np.full((1, k), -np.inf, dtype=np.float32)
            out_items[0, : top.size], out_scores[0, : top.size] = top, vals
        else:
            entries = sp.csr_matrix(
                (scores[keep], (local[keep], m.indices[keep])), shape=(len(rows), n_items)
            )
            out_items, out_scores = top_k_sparse(entries, self._no_fill, k)
        short = np.flatnonzero((out_items < 0).any(axis=1))
        if short.size:
            bounds = np.searchsorted(pos, np.arange(len(rows) + 1))
            for i in short:
                got = out_items[i][out_items[i] >= 0]
                a = allowed.copy()
                a[items[bounds[i] : bounds[i + 1]]] = False
                a[got] = False
                fill, _ = self._fill_order(int(rows[i]), a, k - got.size)
                last = float(out_scores[i, got.size - 1]) if got.size else 0.0
                n = fill.size
                out_items[i, got.size : got.size + n] = fill
                out_scores[i, got.size : got.size + n] = last - 1.0 - np.arange(n)
        return out_items, out_scores

    def _fill_order(self, row: int, allowed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` allowed items of a known customer by ALS (popular without ALS)."""
        als = self.bundle.als
        if k <= 0:
            return np.empty(0, np.int32), np.empty(0, np.float32)
        if als is None or als.user_factors_ is None:
            return self._popular(allowed, k)
        if self.search is not None:
            return self.search.top_k(als.user_factors_[row], allowed, k)
        scores = als.score(np.array([row]))
        np.copyto(scores, np.float32(-np.inf), where=~allowed[None, :])
        items, top = top_k(scores, k)
        keep = items[0] >= 0
        return items[0][keep], top[0][keep]

    def _rank_known(
        self,
        rows: np.ndarray,
        allowed: np.ndarray,
        rules: Rules,
        k: int,
        *,
        pruned: bool,
        scratch: threading.local | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` of known customers ``rows`` under ``rules``: items and scores.

        ``k`` is at most the number of items. Rows the top-N table cannot answer
        are scored exactly: one at a time by the pruned search when ``pruned``
        and the catalogue is large, else by one matrix product for the block.
        """
        out_items = np.full((len(rows), k), -1, dtype=np.int32)
        out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        pos, hidden = self._hidden(rows, rules)
        answered = np.zeros(len(rows), dtype=bool)
        if self._table_serves(rules):
            answered, t_items, t_scores = self._from_table(rows, allowed, (pos, hidden), k)
            out_items[answered], out_scores[answered] = t_items, t_scores
        todo = np.flatnonzero(~answered)
        if todo.size == 0:
            return out_items, out_scores
        if self.mode(rules) == "ranker":
            at = np.full(len(rows), -1, dtype=np.int64)
            at[todo] = np.arange(len(todo))
            keep = at[pos] >= 0
            sub = (at[pos[keep]], hidden[keep])  # still sorted by position
            out_items[todo], out_scores[todo] = self._rank_candidates(rows[todo], allowed, sub, k)
            return out_items, out_scores
        als = self.bundle.als
        assert als is not None and als.user_factors_ is not None
        if pruned and self.search is not None:
            bounds = np.searchsorted(pos, np.arange(len(rows) + 1))  # pos is sorted
            for i in todo:
                a = allowed.copy()
                a[hidden[bounds[i] : bounds[i + 1]]] = False
                it, sc = self.search.top_k(als.user_factors_[rows[i]], a, k)
                out_items[i, : len(it)], out_scores[i, : len(sc)] = it, sc
            return out_items, out_scores
        n_items = self.bundle.n_items
        out = None if scratch is None else scratch_block(scratch, len(todo), n_items)
        scores = als.score(rows[todo], out=out)
        if not allowed.all():
            np.copyto(scores, np.float32(-np.inf), where=~allowed)
        if pos.size:
            at = np.full(len(rows), -1, dtype=np.int64)
            at[todo] = np.arange(len(todo))
            keep = at[pos] >= 0
            scores[at[pos[keep]], hidden[keep]] = -np.inf
        out_items[todo], out_scores[todo] = top_k(scores, k)
        return out_items, out_scores

    def rank_rows(
        self,
        rows: np.ndarray,
        k: int,
        rules: Rules = Rules(),  # noqa: B008 - frozen, so one shared default is safe
        *,
        workers: int = 1,
        batch_size: int | None = None,
        pruned: bool = False,
    ) -> RankedRows:
        """Picks for many customer rows (``-1`` for customers the model has not seen).

        The picks are those :meth:`for_customer` gives each customer, without
        reasons. Known customers are ranked in blocks of ``batch_size`` (default:
        as many as keep a block of scores near 16 million entries), ``workers``
        blocks side by side with BLAS held to one thread each (as
        :meth:`~recommender.ranking.base.Recommender.recommend` does), so memory
        stays bounded however many rows are asked for. With ``pruned``, rows the
        top-N table cannot answer are ranked one by one with the pruned search on
        large catalogues (what a single request does; for at most a few thousand
        customers).

        Parameters
        ----------
        rows
            Customer rows; negative for unknown customers.
        k
            Picks per customer (at most the number of items).
        rules
            The business rules.

        Returns
        -------
        RankedRows
            Items and scores, shape ``(len(rows), min(k, n_items))``.

        Raises
        ------
        AnswerError
            For categories that cannot be used.
        """
        allowed = self.allowed(rules)
        rows = np.asarray(rows, dtype=np.int64)
        k = min(int(k), self.bundle.n_items)
        items = np.full((len(rows), k), -1, dtype=np.int32)
        scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
        known = rows >= 0
        pop_items, pop_scores = self._popular(allowed, k)
        items[~known, : len(pop_items)] = pop_items
        scores[~known, : len(pop_scores)] = pop_scores
        at = np.flatnonzero(known)
        if self.mode(rules) == "popular":
            # popular items for everyone: known customers' hidden purchases left out
            for i in at:
                pos, hidden = self._hidden(rows[i : i + 1], rules)
                a = allowed.copy()
                a[hidden] = False
                it, sc = self._popular(a, k)
                items[i, : len(it)], scores[i, : len(sc)] = it, sc
            return RankedRows(items, scores, np.zeros(len(rows), dtype=bool))
        if batch_size is None:
            batch_size = int(np.clip(16_000_000 // max(self.bundle.n_items, 1), 16, 4096))
        scratch = threading.local()  # per thread, for this call only

        def rank(start: int) -> None:
            block = at[start : start + batch_size]
            it, sc = self._rank_known(
                rows[block], allowed, rules, k, pruned=pruned, scratch=scratch
            )
            items[block], scores[block] = it, sc

        starts = list(range(0, len(at), batch_size))
        if workers > 1 and len(starts) > 1:
            from threadpoolctl import threadpool_limits

            # BLAS threads inside each worker would oversubscribe the cores
            with threadpool_limits(1, "blas"), ThreadPoolExecutor(workers) as pool:
                list(pool.map(rank, starts))
        else:
            for start in starts:
                rank(start)
        return RankedRows(items, scores, known)

    # -- reasons -------------------------------------------------------------------
    def due_items(self, row: int) -> set[int]:
        """Items the buy-again model expects this customer to rebuy (p >= 0.5) soon."""
        due = self._due
        rep = self.bundle.repurchase
        if due is None and rep is not None and 0 <= row < rep.n_customers_:
            due, row = self._due_rows(np.array([row])), 0  # asked one at a time
        if due is None or not 0 <= row < due.shape[0]:
            return set()
        return set(due.indices[due.indptr[row] : due.indptr[row + 1]].tolist())

    def _due_rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """Customers ``rows`` x items: 1 where a rebuy is due (p >= 0.5 within
        ``due_days``), nothing stored elsewhere."""
        rep = self.bundle.repurchase
        assert rep is not None
        due = rep.score_customers(rows, self.due_days)
        due.data = (due.data >= 0.5).astype(np.int8)
        due.eliminate_zeros()
        return due

    def explain(
        self,
        strategy: Strategy,
        items: np.ndarray,
        scores: np.ndarray,
        *,
        basis: np.ndarray | None = None,
        due: set[int] | None = None,
        customer: int | None = None,
    ) -> list[Pick]:
        """Picks with their reasons: the one place a reason is worded.

        Parameters
        ----------
        strategy
            How the items were chosen; popular picks say "popular in C".
        items, scores
            The picks, best first (``-1`` entries are dropped).
        basis
            Items the customer bought or looked at; a model pick is "similar
            to" the one of them closest in factor space.
        due
            Item rows due to be rebought ("due to rebuy" wins over the rest).
        customer
            The known customer the picks are for, when the version has the
            two-stage ranker: an item they bought is explained by their own
            rhythm ("you buy this about every 9 days; last bought 8 days
            ago"), another by the bought item it is most often bought with
            (item-kNN), else by the closest in factor space.
        """
        keep = np.asarray(items) >= 0
        rows = np.asarray(items)[keep].astype(np.int64)
        values: list[float] = np.asarray(scores, dtype=np.float64)[keep].tolist()
        if strategy == "popular":
            out = []
            for r, s in zip(rows.tolist(), values, strict=True):
                cat = str(self.bundle.catalog.category[r])
                reason = f"popular in {cat}" if cat else "popular right now"
                out.append(Pick(r, s, reason))
            return out
        due = due or set()
        als = self.bundle.als
        best: list[int] | None = None
        if als is not None and basis is not None and basis.size and rows.size:
            f = als.item_factors_
            assert f is not None
            norms = als.item_norms()
            sims = (f[rows] @ f[basis].T) / (norms[rows][:, None] * norms[basis][None, :])
            sims[rows[:, None] == basis[None, :]] = -np.inf  # "similar to itself" says nothing
            best = basis[np.argmax(sims, axis=1)].tolist()
        own = self._own_words(customer, rows) if customer is not None else {}
        picks = []
        for j, (r, s) in enumerate(zip(rows.tolist(), values, strict=True)):
            if r in own:
                reason = f"due to rebuy: {own[r]}" if r in due else own[r]
            elif r in due:
                reason = "due to rebuy"
            elif best is not None and best[j] != r:
                reason = f"similar to {self.label(best[j])}"
            else:
                reason = "matches your taste"
            picks.append(Pick(r, s, reason))
        return picks

    def _own_words(self, row: int, items: np.ndarray) -> dict[int, str]:
        """Reasons from the ranker's features for a customer's picks: their own
        purchase rhythm for items they bought, "often bought with X" for items
        item-kNN links to one they bought (empty without the ranker's stage)."""
        stage = self.bundle.stage
        if stage is None or items.size == 0:
            return {}
        snap = stage.snapshot
        if not 0 <= row < snap.n_customers:
            return {}
        out: dict[int, str] = {}
        # the buy-again model's cycle where it has one, so that the picks and
        # the "due to buy again" list on one screen give the same rhythm
        rep = self.bundle.repurchase
        cycles = rep.rhythm(row) if rep is not None else {}
        pos = snap.pair_index(np.full(items.size, row), items)
        for item, p in zip(items.tolist(), pos.tolist(), strict=True):
            if p < 0:
                continue
            since = float(snap.cutoff - snap.pair_last[p])
            gap = float(snap.pair_mean_gap[p])
            if item in cycles:
                gap, since = cycles[item]
            ago = "today" if since < 0.5 else f"{days_text(since)} ago"
            if snap.pair_days[p] >= 2 and np.isfinite(gap):
                every = days_text(max(gap, 1.0))
                out[item] = f"you buy this about every {every}; last bought {ago}"
            else:
                out[item] = f"you bought this once, {ago}"
        knn = stage.knn
        bought = set(snap.indices[snap.indptr[row] : snap.indptr[row + 1]].tolist())
        new = [i for i in items.tolist() if i not in out]
        if knn is not None and knn.similarity_ is not None and bought and new:
            # "often bought with X" only when X is among the item's closest
            # co-purchases: a weak link to anything bought explains nothing
            sim = knn.similarity_
            for item in new:
                lo, hi = sim.indptr[item], sim.indptr[item + 1]
                near, strength = sim.indices[lo:hi], sim.data[lo:hi]
                top = near[np.argsort(-strength, kind="stable")[:CLOSE_NEIGHBOURS]]
                mine = [j for j in top.tolist() if j in bought]
                if mine:
                    out[item] = f"often bought with {self.label(mine[0])}"
        c_lo, c_hi = int(snap.cat_indptr[row]), int(snap.cat_indptr[row + 1])
        shares = dict(
            zip(
                snap.cat_indices[c_lo:c_hi].tolist(),
                snap.cat_share[c_lo:c_hi].tolist(),
                strict=True,
            )
        )
        for item in items.tolist():
            cat = int(snap.item_category[item])
            if item in out or cat < 0 or cat not in shares:
                continue
            name = str(self.bundle.catalog.category[item])
            if shares[cat] >= OWN_CATEGORY_SHARE and name:
                out[item] = f"you often buy {name}"
        return out

    # -- questions -------------------------------------------------------------------
    def _personal(
        self, row: int, items: np.ndarray, scores: np.ndarray, rules: Rules = Rules()
    ) -> Answer:
        picks = self.explain(
            "personalized",
            items,
            scores,
            basis=self.history(row),
            due=self.due_items(row),
            customer=row if self.mode(rules) == "ranker" else None,
        )
        return Answer("personalized", picks)

    def for_customer(
        self,
        customer_id: str | None,
        k: int,
        rules: Rules = Rules(),  # noqa: B008 - frozen, so one shared default is safe
    ) -> Answer:
        """Picks for one customer; unknown (or no) customers get popular items.

        Raises
        ------
        AnswerError
            For categories that cannot be used.
        """
        self.check(rules)
        row = self.bundle.customers.row(customer_id) if customer_id else None
        k = min(int(k), self.bundle.n_items)
        if row is not None and self.mode(rules) != "popular":
            items, scores = self._rank_one(row, rules, k)
            return self._personal(row, items, scores, rules)
        allowed = self.allowed(rules)
        if row is not None:
            allowed[self._hidden_one(row, rules)] = False
        it, sc = self._popular(allowed, k)
        return Answer("popular", self.explain("popular", it, sc))

    def for_recent(
        self,
        recent: Sequence[str],
        k: int,
        rules: Rules = Rules(),  # noqa: B008 - frozen, so one shared default is safe
        *,
        customer_id: str | None = None,
    ) -> Answer:
        """Picks from items just bought or viewed, folded into the ALS model.

        The recent items (with a known customer's history) are folded in by the
        least-squares step a refit would take; with ``exclude_purchased`` the
        recent items themselves are hidden too. Unknown item ids are ignored and
        listed; with none known this is :meth:`for_customer`.

        Raises
        ------
        AnswerError
            For categories that cannot be used.
        """
        self.check(rules)
        ignored: list[str] = []
        recent_rows: list[int] = []
        for item in recent:
            r = self.bundle.items.row(item)
            if r is None:
                ignored.append(item)
            else:
                recent_rows.append(r)
        als = self.bundle.als
        if not recent_rows or als is None:
            a = self.for_customer(customer_id, k, rules)
            return Answer(a.strategy, a.picks, ignored)
        row = self.bundle.customers.row(customer_id) if customer_id else None
        hist = self.history(row) if row is not None else np.empty(0, np.int32)
        bought = np.concatenate([hist, np.array(recent_rows)]).astype(np.int64)
        # counted over the few items bought, not the catalogue
        basis, counts = np.unique(bought, return_counts=True)
        x = als.fold_in(basis, counts.astype(np.float64))
        hidden = np.empty(0, np.int64)
        if rules.exclude_purchased is True:
            hidden = basis
        elif rules.exclude_purchased is None:
            # the recent items too: just seen or bought, nothing to discover there
            hidden = np.concatenate([basis[~self.repurchase_items[basis]], recent_rows])
        k = min(int(k), self.bundle.n_items)
        if self.search is None:
            assert als.item_factors_ is not None
            allowed = self.allowed(rules)
            allowed[hidden] = False
            s = np.where(allowed, als.item_factors_ @ x, np.float32(-np.inf))
            items, top = top_k(s.astype(np.float32, copy=False)[None, :], k)
            items, top = items[0], top[0]
        else:
            items, top = self._search_one(x, rules, hidden, k)
        return Answer("folded_in", self.explain("folded_in", items, top, basis=basis), ignored)

    def for_ids(
        self,
        customer_ids: Sequence[str],
        k: int,
        rules: Rules = Rules(),  # noqa: B008 - frozen, so one shared default is safe
    ) -> list[Answer]:
        """:meth:`for_customer` for each id, in order, ranked together.

        Large catalogues rank each customer with the pruned search instead of a
        customers x items matrix (1,000 x 100,000 scores would be 400 MB).

        Raises
        ------
        AnswerError
            For categories that cannot be used.
        """
        rows = self.bundle.customers.rows(list(customer_ids))
        ranked = self.rank_rows(rows, k, rules, pruned=True)
        return [
            self._personal(int(r), ranked.items[i], ranked.scores[i], rules)
            if ranked.personalized[i]
            else Answer("popular", self.explain("popular", ranked.items[i], ranked.scores[i]))
            for i, r in enumerate(rows)
        ]

    # -- items and timing -------------------------------------------------------------
    def similar(self, item_row: int, k: int) -> list[tuple[int, float]]:
        """Items closest to ``item_row`` in factor space, with their cosine similarity."""
        als = self.bundle.als
        if als is None:
            raise AnswerError(
                "unavailable", "this model version has no ranking model, so no similar items"
            )
        items, sims = als.similar_items(item_row, k)
        return [(int(i), float(s)) for i, s in zip(items, sims, strict=True)]

    def buy_again(self, row: int, within_days: float, k: int) -> list[dict[str, Any]]:
        """The buy-again model's items for a known customer, most likely first."""
        rep = self.bundle.repurchase
        if rep is None:
            raise AnswerError(
                "unavailable",
                "this model version has no buy-again model (no item is rebought often enough)",
            )
        return list(rep.buy_again(row, within_days, k=k))


# -- when will they buy ---------------------------------------------------------------
TIMING_COLUMNS = [
    "customer_id",
    "p_active",
    "expected_purchases",
    "p_purchase",
    "median_days_to_next",
    "next_purchase_date",
    "expected_order_value",
    "expected_spend",
    "clv",
]
VALUE_COLUMNS = ["expected_order_value", "expected_spend", "clv"]
DUE_SORTS = ("p_purchase", "expected_spend")
DueSort = Literal["p_purchase", "expected_spend"]


@dataclass(frozen=True)
class ValueTerms:
    """How lifetime value is counted.

    Attributes
    ----------
    clv_horizon_days
        How far ahead lifetime value counts.
    annual_discount_rate
        The yearly rate future spend is discounted at (0.1: a sale a year from
        now is worth 1/1.1 of one today).
    """

    clv_horizon_days: float = 365.0
    annual_discount_rate: float = 0.1


def value_note(bundle: Bundle) -> str | None:
    """Why a version's value columns are empty (None when they are not)."""
    if bundle.spend is not None:
        return None
    reason = (bundle.manifest.get("metrics") or {}).get("spend", {}).get("skipped")
    if reason:
        return f"no spend figures: {reason}"
    return (
        "no spend figures: this model version has no spend model "
        "(trained from a log without prices, or before spend models)"
    )


def _value_columns(
    bundle: Bundle, rows: np.ndarray, expected_purchases: np.ndarray, terms: ValueTerms
) -> dict[str, np.ndarray]:
    """Expected order value, expected spend in the horizon and discounted
    lifetime value of ``rows`` (NaN without a spend model)."""
    if bundle.spend is None:
        empty = np.full(len(rows), np.nan)
        return {name: empty for name in VALUE_COLUMNS}
    timing = _timing_model(bundle)
    order_value = bundle.spend.expected_order_value(rows)

    def purchases_by(t: float) -> np.ndarray:
        return np.asarray(timing.predict(t, rows)["expected_purchases"], dtype=np.float64)

    clv = lifetime_value(
        purchases_by,
        order_value,
        horizon_days=terms.clv_horizon_days,
        annual_discount_rate=terms.annual_discount_rate,
    )
    return {
        "expected_order_value": order_value,
        "expected_spend": np.asarray(expected_purchases, dtype=np.float64) * order_value,
        "clv": clv,
    }


#: The furthest a next-purchase date is given, in days after the as-of day.
MAX_DATE_DAYS = 365


def as_of_date(as_of: Any) -> str | None:
    """The day a version's answers are "as of": the last day of its log, ``YYYY-MM-DD``.

    This is what "as of" means on every surface (the API, the CLI, the page,
    the exports and ``encore train --as-of``): purchases up to the end of that
    day are counted, and "within N days" means the N days after it. A
    manifest stores the instant the data ends (the midnight after that day);
    this turns it (or a manifest holding it) into the day.
    """
    if isinstance(as_of, dict):
        as_of = as_of.get("as_of")
    if as_of is None or as_of == "":
        return None
    end = pd.Timestamp(as_of)
    day = end.normalize() if end != end.normalize() else end - pd.Timedelta(days=1)
    return str(day.strftime("%Y-%m-%d"))


def purchase_dates(as_of: pd.Timestamp, median_days: np.ndarray) -> np.ndarray:
    """The next-purchase date of each median: ``as_of + ceil(median) days - 1 day``.

    ``as_of`` is the manifest's end of data (the midnight after the last day
    of the log), so a median of one day is the day after the as-of day (see
    :func:`as_of_date`). A median that is not finite has no date: an empty
    string.

    Returns
    -------
    np.ndarray
        ISO dates (``YYYY-MM-DD``) or ``""``, dtype object.
    """
    med = np.asarray(median_days, dtype=np.float64)
    finite = np.isfinite(med)
    dates = np.full(len(med), "", dtype=object)
    if finite.any():
        d = as_of + pd.to_timedelta(np.ceil(med[finite]), unit="D") - pd.Timedelta(days=1)
        dates[finite] = np.asarray(d.strftime("%Y-%m-%d"), dtype=object)
    return dates


def _history_in_units(timing: Any, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    s, u = timing.summary_, float(timing.unit_days)
    return s.x[rows], s.t_x[rows] / u, s.T[rows] / u


def likely_purchase_days(timing: Any, rows: np.ndarray) -> np.ndarray:
    """Days after the as-of day until the customer has more likely bought than not.

    The date rule of every surface: the first whole day ``d`` (1 to
    :data:`MAX_DATE_DAYS`) on which P(at least one purchase within ``d``
    days) reaches one half, that is the median of the time to the next
    purchase, counting the chance the customer has left. It is ``inf`` where
    that chance stays under one half for a year, whether because the customer
    has most likely left or because they buy too rarely. The probability is
    the one the next-purchase figures and the page's plot show, so a date
    never disagrees with them: P(buy within ``d``) >= 0.5 > P(buy within
    ``d - 1``).

    Parameters
    ----------
    timing
        A fitted :class:`~recommender.timing.selection.PurchaseTimingModel`.
    rows
        Customer rows.
    """
    rows = np.asarray(rows, dtype=np.int64)
    model, u = timing.model_, float(timing.unit_days)
    x, t_x, T = _history_in_units(timing, rows)
    out = np.full(len(rows), np.inf)
    if len(rows) == 0:
        return out
    reach = model.p_purchase_within(MAX_DATE_DAYS / u, x, t_x, T) >= 0.5
    at = np.flatnonzero(reach)
    lo = np.zeros(at.size)  # P(buy within lo days) < 1/2 (nothing within 0 days)
    hi = np.full(at.size, float(MAX_DATE_DAYS))  # P(buy within hi days) >= 1/2
    while at.size and (hi - lo > 1).any():
        mid = np.floor((lo + hi) / 2)
        p = model.p_purchase_within(mid / u, x[at], t_x[at], T[at])
        hi, lo = np.where(p >= 0.5, mid, hi), np.where(p >= 0.5, lo, mid)
    out[at] = hi
    return out


def p_active_shown(timing: Any, rows: np.ndarray, p_active: np.ndarray) -> np.ndarray:
    """The probability of being active as every surface shows it: NaN where
    the model cannot tell.

    BG/NBD lets a customer leave only right after a repeat purchase, so it
    gives everyone without one (a single purchase day) ``p_active = 1`` by
    construction, not by evidence: read at face value that is "certainly
    still a customer" for someone who bought once a year ago. Those rows are
    NaN (null in JSON, empty in CSV); MBG/NBD and Pareto/NBD estimate it for
    them and keep their figure.
    """
    out = np.asarray(p_active, dtype=np.float64).copy()
    if timing.model_name_ == "bgnbd":
        s = timing.summary_
        rows = np.asarray(rows, dtype=np.int64)
        out[(s.x[rows] == 0) & s.has_history[rows]] = np.nan
    return out


def _read(timing: Any, rows: np.ndarray, pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A model's predictions for ``rows`` as every surface reads them."""
    return {
        **pred,
        "p_active": p_active_shown(timing, rows, pred["p_active"]),
        "median_days_to_next": likely_purchase_days(timing, rows),
    }


def purchase_curve(bundle: Bundle, row: int, days: Sequence[float] | np.ndarray) -> np.ndarray:
    """P(at least one purchase within ``d`` days) of a known customer for each ``d``.

    The curve the page plots; its value at a horizon is that row's
    ``p_purchase`` in :func:`timing_table`.

    Raises
    ------
    AnswerError
        ``"unavailable"`` when the version has no next-purchase model.
    """
    timing = _timing_model(bundle)
    return np.asarray(timing.p_purchase_curve(np.array([row]), np.asarray(days)))[0]


def one_time_buyers(bundle: Bundle, rows: np.ndarray) -> np.ndarray:
    """Which of ``rows`` bought on a single day only (no repeat purchase yet)."""
    timing = _timing_model(bundle)
    s = timing.summary_
    rows = np.asarray(rows, dtype=np.int64)
    return (s.x[rows] == 0) & s.has_history[rows]


def _pct(p: float) -> str:
    """A probability in whole percent, rounded down, so that a figure under
    one half never reads as 50% beside words that say "less likely than not"."""
    pct = 100.0 * p
    if 0 < pct < 1:
        return "under 1%"
    if 99 < pct < 100:
        return "over 99%"
    return f"{np.floor(pct + 1e-9):.0f}%"


def timing_words(
    bundle: Bundle, row: int, figures: dict[str, Any], horizon_days: float
) -> list[str]:
    """The next-purchase figures of one customer in plain words, for people.

    One sentence each on being a customer, buying within the horizon and the
    likely date, built from the same figures (a row of :func:`timing_table`)
    so they cannot disagree: "stopped buying" is said only of a customer whose
    probability of being active is known and under one half, and a missing
    date is explained by the probability of buying within a year.
    """
    timing = _timing_model(bundle)
    as_of = pd.Timestamp(bundle.manifest["as_of"])
    s = timing.summary_
    raw = figures.get("p_active")
    p_active = float("nan") if raw is None else float(raw)
    known = bool(np.isfinite(p_active))
    first, last = (
        # the summary counts days on the model's clock, whose as_of_day is the manifest's as_of
        (as_of + pd.Timedelta(days=float(day - s.as_of_day))).strftime("%Y-%m-%d")
        for day in (s.first_day[row], s.last_day[row])
    )
    n_days = int(s.x[row]) + 1
    out = []
    if not bool(s.has_history[row]):
        out.append("No purchase in this version's log.")
    elif known:
        out.append(
            f"Bought on {n_days} different days, from {first} to {last}; "
            f"chance they are still a customer: {_pct(p_active)}."
        )
    else:
        out.append(
            f"Bought on one day only ({first}): the model cannot tell from a single "
            "purchase whether they are still a customer."
        )
    out.append(
        f"Chance of buying within the next {horizon_days:g} days: "
        f"{_pct(float(figures['p_purchase']))}."
    )
    date = figures.get("next_purchase_date")
    if date:
        days = int(figures["median_days_to_next"])
        out.append(
            f"More likely than not to have bought by {date} ({days} day{'s' * (days != 1)} "
            "after the as-of day)."
        )
    else:
        year = float(timing.predict(float(MAX_DATE_DAYS), np.array([row]))["p_purchase"][0])
        if known and p_active < 0.5:
            out.append(
                "No likely date: they have most likely stopped buying; the chance of a "
                f"purchase within a year is {_pct(year)}."
            )
        else:
            out.append(
                "No likely date: they buy so rarely that a purchase within a year is less "
                f"likely than not ({_pct(year)}), even if they are still a customer."
            )
    return out


def _timing_frame(
    bundle: Bundle,
    pred: dict[str, np.ndarray],
    value: dict[str, np.ndarray],
    ids: np.ndarray,
    rounded: bool,
) -> pd.DataFrame:
    def figure(x: np.ndarray, decimals: int) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.round(x, decimals) if rounded else x

    med = np.asarray(pred["median_days_to_next"], dtype=np.float64)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "p_active": figure(pred["p_active"], 6),
            "expected_purchases": figure(pred["expected_purchases"], 6),
            "p_purchase": figure(pred["p_purchase"], 6),
            "median_days_to_next": np.where(np.isfinite(med), figure(med, 2), np.nan),
            "next_purchase_date": purchase_dates(pd.Timestamp(bundle.manifest["as_of"]), med),
            # money to the cent
            **{name: figure(value[name], 2) for name in VALUE_COLUMNS},
        },
        columns=TIMING_COLUMNS,
    )


def _timing_model(bundle: Bundle) -> Any:
    if bundle.timing is None:
        raise AnswerError("unavailable", "this model version has no next-purchase model")
    return bundle.timing


def timing_table(
    bundle: Bundle,
    rows: np.ndarray,
    horizon_days: float,
    *,
    customer_ids: np.ndarray | None = None,
    rounded: bool = True,
    terms: ValueTerms = ValueTerms(),  # noqa: B008 - frozen, so one shared default is safe
) -> pd.DataFrame:
    """The next-purchase and value figures of known customers over a horizon.

    Parameters
    ----------
    bundle
        A version with a next-purchase model.
    rows
        Customer rows (all known).
    horizon_days
        The window the probabilities and expected purchases are for.
    customer_ids
        Ids to write (default: the bundle's ids of ``rows``).
    rounded
        Round the figures to 6 decimals and the median and money to 2 (as the
        tables people download are); ``False`` keeps them exact.
    terms
        The horizon and discount rate of lifetime value.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`TIMING_COLUMNS`: customer_id, p_active,
        expected_purchases, p_purchase, median_days_to_next (NaN where none),
        next_purchase_date (ISO date, or ``""`` where the median is not finite;
        see :func:`purchase_dates`), expected_order_value (the spend model's
        expected value of the customer's next order), expected_spend
        (expected purchases in the horizon times that), clv (discounted
        expected spend over ``terms.clv_horizon_days``); the last three NaN
        when the version has no spend model (see :func:`value_note`).

    Raises
    ------
    AnswerError
        ``"unavailable"`` when the version has no next-purchase model.
    """
    timing = _timing_model(bundle)
    rows = np.asarray(rows, dtype=np.int64)
    pred = _read(timing, rows, timing.predict(horizon_days, rows))
    ids = bundle.customers.ids_[rows] if customer_ids is None else np.asarray(customer_ids)
    value = _value_columns(bundle, rows, pred["expected_purchases"], terms)
    return _timing_frame(bundle, pred, value, ids, rounded)


DUE_COLUMNS = [
    "customer_id",
    "p_purchase",
    "p_active",
    "expected_purchases",
    "median_days_to_next",
    "next_purchase_date",
    *VALUE_COLUMNS,
]


def due_table(
    bundle: Bundle,
    within_days: float,
    min_probability: float,
    limit: int,
    *,
    sort: DueSort = "p_purchase",
    terms: ValueTerms = ValueTerms(),  # noqa: B008 - frozen, so one shared default is safe
) -> pd.DataFrame:
    """Customers (with history) whose probability of buying within ``within_days``
    is at least ``min_probability``, at most ``limit``: most likely first, or
    (``sort="expected_spend"``) most expected spend within ``within_days`` first.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`timing_table` (figures rounded as there), in the
        order of :data:`DUE_COLUMNS`: customer_id, p_purchase, p_active,
        expected_purchases, median_days_to_next, next_purchase_date,
        expected_order_value, expected_spend, clv.

    Raises
    ------
    AnswerError
        ``"unavailable"`` when the version has no next-purchase model, or is
        asked to sort by spend without a spend model; ``"bad_request"`` for
        an unknown sort.
    """
    if sort not in DUE_SORTS:
        raise AnswerError("bad_request", f"sort must be one of {', '.join(DUE_SORTS)}")
    timing = _timing_model(bundle)
    p = timing.predict(within_days)
    has = np.asarray(p["has_history"], dtype=bool)
    prob = np.asarray(p["p_purchase"])
    sel = np.flatnonzero(has & (prob >= min_probability))
    if sort == "expected_spend":
        if bundle.spend is None:
            raise AnswerError("unavailable", f"cannot sort by expected_spend: {value_note(bundle)}")
        key = np.asarray(p["expected_purchases"])[sel] * bundle.spend.expected_order_value(sel)
    else:
        key = prob[sel]
    sel = sel[np.argsort(-key, kind="stable")][:limit]
    picked = _read(timing, sel, {name: np.asarray(v)[sel] for name, v in p.items()})
    value = _value_columns(bundle, sel, picked["expected_purchases"], terms)
    table = _timing_frame(bundle, picked, value, bundle.customers.ids_[sel], True)
    return table[DUE_COLUMNS]


def shop_metrics(bundle: Bundle) -> dict[str, Any]:
    """The shop's health the version holds: monthly measures, cohort
    retention, whether the log had prices, and notes.

    Raises
    ------
    AnswerError
        ``"unavailable"`` when the version has none (trained before shop
        metrics, or with the timing models off).
    """
    if bundle.health is None:
        raise AnswerError(
            "unavailable",
            f"model version {bundle.version} has no shop metrics (trained before they were "
            "measured, or with --no-timing); retrain to get them",
        )
    return {"model_version": bundle.version, **bundle.health}


__all__ = [
    "DUE_COLUMNS",
    "DUE_SORTS",
    "TIMING_COLUMNS",
    "VALUE_COLUMNS",
    "Answer",
    "AnswerError",
    "Answerer",
    "Pick",
    "RankedRows",
    "Rules",
    "Strategy",
    "ValueTerms",
    "due_table",
    "purchase_dates",
    "shop_metrics",
    "timing_table",
    "value_note",
]
