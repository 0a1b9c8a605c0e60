"""Answers from one loaded bundle: picks with reasons, buy-again, timing, similar items.

An :class:`Engine` wraps one immutable :class:`recommender.bundle.Bundle` and
the lookup tables built from it once at load time; a request holds on to the
engine it started with, so a hot swap never changes a model mid-request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from recommender.ranking.base import top_k
from recommender.store.bundle import Bundle

#: Catalogues with at least this many items are ranked by the pruned exact search
#: of :meth:`Engine._best_items`; below it scoring every item costs a quarter of a
#: millisecond or less, and small catalogues keep exactly the scores they always had.
PRUNE_MIN_ITEMS = 20_000


def _select(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of candidate ``rows`` by score, best first, ties to the lower row."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        rows, scores = rows[keep], scores[keep]
    best = np.lexsort((rows, -scores))[:k]
    return rows[best], scores[best]


class EngineError(Exception):
    """A request this version cannot answer; ``status`` is the HTTP status to use."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Filters:
    """Business rules of a recommendations request."""

    categories: list[str] | None = None
    exclude_items: list[str] | None = None
    exclude_purchased: bool = True
    available_only: bool | None = None


@dataclass
class Pick:
    item_row: int
    score: float
    reason: str


class Engine:
    """Precomputed tables over a bundle and the queries the API answers."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        due_days: float = 30.0,
        prune_min_items: int | None = None,
        prune_first_block: int = 1024,
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
        rep = bundle.repurchase
        self.repurchase_items = (
            np.asarray(rep.is_repurchase_item_, dtype=bool)
            if rep is not None
            else np.zeros(bundle.n_items, dtype=bool)
        )
        self.as_of = pd.Timestamp(bundle.manifest.get("as_of"))
        # Items by decreasing factor norm, for the pruned exact ranking (_best_items).
        min_items = PRUNE_MIN_ITEMS if prune_min_items is None else prune_min_items
        self.prune_first_block = prune_first_block
        self._by_norm: np.ndarray | None = None
        als = bundle.als
        if als is not None and als.item_factors_ is not None and bundle.n_items >= min_items:
            y = als.item_factors_
            norms = np.sqrt(np.einsum("ij,ij->i", y, y, dtype=np.float64))
            self._by_norm = np.argsort(-norms, kind="stable")
            self._factors_by_norm = np.ascontiguousarray(y[self._by_norm])
            self._neg_norms_by_norm = -norms[self._by_norm]  # ascending, for searchsorted

    # -- ids ----------------------------------------------------------------
    def customer_row(self, customer_id: str) -> int | None:
        return self.bundle.customers.row(customer_id)

    def item_row(self, item_id: str) -> int | None:
        return self.bundle.items.row(item_id)

    def item_info(self, row: int) -> dict[str, Any]:
        c = self.bundle.catalog
        price = float(c.price[row])
        return {
            "item_id": self.bundle.items.id(row),
            "title": str(c.title[row]) or None,
            "category": str(c.category[row]) or None,
            "price": price if np.isfinite(price) else None,
            "available": bool(c.available[row]),
        }

    def label(self, row: int) -> str:
        title = str(self.bundle.catalog.title[row])
        return title or self.bundle.items.id(row)

    # -- filters -------------------------------------------------------------
    def check_categories(self, categories: list[str] | None) -> None:
        if not categories:
            return
        if not self.categories:
            raise EngineError(400, "this model has no item categories (train with a catalog)")
        unknown = [c for c in categories if c not in self.categories]
        if unknown:
            known = ", ".join(sorted(self.categories)[:12])
            raise EngineError(
                400, f"unknown category {unknown[0]!r}; known categories include: {known}"
            )

    def allowed_mask(self, f: Filters) -> np.ndarray:
        """Items any customer may be shown under ``f`` (before per-customer rules)."""
        n = self.bundle.n_items
        mask = np.ones(n, dtype=bool)
        if f.categories:
            self.check_categories(f.categories)
            mask[:] = False
            for c in f.categories:
                mask[self.categories[c]] = True
        available_only = self.any_unavailable if f.available_only is None else f.available_only
        if available_only:
            mask &= self.bundle.catalog.available
        for item in f.exclude_items or []:
            row = self.item_row(item)
            if row is not None:
                mask[row] = False
        return mask

    def history_items(self, row: int) -> np.ndarray:
        h = self.bundle.history
        return h.indices[h.indptr[row] : h.indptr[row + 1]]

    def purchased_excluded(self, items: np.ndarray) -> np.ndarray:
        """Of a history, the items to hide: all but repurchase items."""
        return items[~self.repurchase_items[items]]

    # -- recommendations -------------------------------------------------------
    def popular(self, k: int, allowed: np.ndarray, f: Filters) -> list[Pick]:
        order = self.popular_order[allowed[self.popular_order]][:k]
        picks = []
        for r in order:
            cat = str(self.bundle.catalog.category[r])
            reason = f"popular in {cat}" if cat else "popular right now"
            picks.append(Pick(int(r), float(self.bundle.popularity[r]), reason))
        return picks

    def _rank(
        self, scores: np.ndarray, allowed: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        s = np.where(allowed, scores, np.float32(-np.inf)).astype(np.float32, copy=False)
        items, top = top_k(s[None, :], k)
        keep = items[0] >= 0
        return items[0][keep], top[0][keep]

    def _best_items(
        self, u: np.ndarray, allowed: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` allowed items of highest score ``y_j . u``, best first (exact).

        Scoring every item reads the whole factor matrix (25 MB for 100,000
        items x 64 factors, a few ms of memory traffic per request). Instead:
        when few items are allowed (a category filter), only those are scored;
        otherwise items are scored in order of decreasing factor norm and the
        scan stops once no remaining item can reach the k-th best allowed score
        found, since ``y_j . u <= |y_j| |u|`` (Cauchy-Schwarz). ALS gives popular
        items the large norms, so a few percent of the catalogue is scored. The
        answer is the one scoring everything gives: the same items, ties to the
        lower item row, scores equal up to float32 rounding of the dot products.
        """
        als = self.bundle.als
        assert als is not None and als.item_factors_ is not None
        assert self._by_norm is not None
        u = np.ascontiguousarray(u, dtype=np.float32)
        n = self.bundle.n_items
        n_allowed = int(np.count_nonzero(allowed))
        if n_allowed * 8 <= n:
            rows = np.flatnonzero(allowed)
            return _select(rows, np.take(als.item_factors_, rows, axis=0) @ u, k)
        order, y, neg_norms = self._by_norm, self._factors_by_norm, self._neg_norms_by_norm
        # |u| (float64) with a margin far above the float32 rounding of a 64-term
        # dot product (about 4e-6 relative), so the bound never cuts a real candidate.
        u_norm = float(np.sqrt(np.dot(u.astype(np.float64), u.astype(np.float64)))) * (1 + 1e-4)
        rows_parts: list[np.ndarray] = []
        score_parts: list[np.ndarray] = []
        have = 0
        start, stop = 0, min(n, max(self.prune_first_block, 4 * k))
        while True:
            r = order[start:stop]
            s = y[start:stop] @ u
            ok = allowed[r]
            rows_parts.append(r[ok])
            score_parts.append(s[ok])
            have += len(rows_parts[-1])
            start = stop
            if start >= n or have == n_allowed:
                break
            if have < k:
                stop = min(n, 4 * start)
                continue
            scores = np.concatenate(score_parts)
            kth = float(np.partition(scores, len(scores) - k)[len(scores) - k])
            if kth <= 0.0 or u_norm == 0.0:
                stop = n  # a bound |y||u| >= 0 cannot rule out any item
                continue
            # items that can still reach the k-th best: |y_j| * |u| >= kth
            stop = int(np.searchsorted(neg_norms, -kth / u_norm, side="right"))
            if stop <= start:
                break
        return _select(np.concatenate(rows_parts), np.concatenate(score_parts), k)

    def _reasons(
        self, picks: np.ndarray, scores: np.ndarray, basis: np.ndarray, due: set[int]
    ) -> list[Pick]:
        out = []
        als = self.bundle.als
        if als is not None and basis.size:
            f = als.item_factors_
            assert f is not None
            norms = als.item_norms()
            sims = (f[picks] @ f[basis].T) / (norms[picks][:, None] * norms[basis][None, :])
            sims[picks[:, None] == basis[None, :]] = -np.inf  # "similar to itself" says nothing
            best = basis[np.argmax(sims, axis=1)]
        else:
            best = None
        for j, (r, s) in enumerate(zip(picks, scores, strict=True)):
            if int(r) in due:
                reason = "due to rebuy"
            elif best is not None and best[j] != r:
                reason = f"similar to {self.label(int(best[j]))}"
            else:
                reason = "matches your taste"
            out.append(Pick(int(r), float(s), reason))
        return out

    def due_items(self, row: int) -> set[int]:
        rep = self.bundle.repurchase
        if rep is None:
            return set()
        return {
            int(d["item_row"])
            for d in rep.buy_again(row, self.due_days, k=50)
            if d["probability"] >= 0.5
        }

    def recommend_known(self, row: int, k: int, f: Filters) -> list[Pick]:
        als = self.bundle.als
        assert als is not None
        allowed = self.allowed_mask(f)
        hist = self.history_items(row)
        if f.exclude_purchased:
            allowed = allowed.copy()
            allowed[self.purchased_excluded(hist)] = False
        topn = self.bundle.topn_items
        if topn is not None:
            cand = topn[row]
            cand = cand[cand >= 0]
            ok = cand[allowed[cand]]
            if len(ok) >= k:
                scores = self.bundle.topn_scores
                assert scores is not None
                pos = np.flatnonzero(cand >= 0)[allowed[cand]][:k]
                return self._reasons(ok[:k], scores[row][pos], hist, self.due_items(row))
        if self._by_norm is None:
            items, scores = self._rank(als.score(np.array([row]))[0], allowed, k)
        else:
            assert als.user_factors_ is not None
            items, scores = self._best_items(als.user_factors_[row], allowed, k)
        return self._reasons(items, scores, hist, self.due_items(row))

    def recommend_folded(
        self, item_rows: np.ndarray, k: int, f: Filters, recent: np.ndarray | None = None
    ) -> list[Pick]:
        als = self.bundle.als
        assert als is not None
        counts = np.bincount(item_rows, minlength=self.bundle.n_items)
        rows = np.flatnonzero(counts)
        x = als.fold_in(rows, counts[rows].astype(np.float64))
        allowed = self.allowed_mask(f)
        if f.exclude_purchased:
            allowed = allowed.copy()
            allowed[self.purchased_excluded(rows)] = False
            if recent is not None:
                allowed[recent] = False  # just seen or bought: nothing to discover there
        if self._by_norm is None:
            items, top = self._rank(als.item_factors_ @ x, allowed, k)
        else:
            items, top = self._best_items(x, allowed, k)
        return self._reasons(items, top, rows, set())

    def recommend(
        self, customer_id: str | None, recent: list[str] | None, k: int, f: Filters
    ) -> tuple[str, list[Pick], list[str]]:
        """(strategy, picks, ignored recent item ids)."""
        self.check_categories(f.categories)
        ignored: list[str] = []
        recent_rows: list[int] = []
        for item in recent or []:
            r = self.item_row(item)
            if r is None:
                ignored.append(item)
            else:
                recent_rows.append(r)
        row = self.customer_row(customer_id) if customer_id else None
        if self.bundle.als is not None:
            if recent_rows:
                hist = self.history_items(row) if row is not None else np.empty(0, np.int32)
                rows = np.concatenate([hist, np.array(recent_rows)]).astype(np.int64)
                recent_arr = np.array(recent_rows, dtype=np.int64)
                return "folded_in", self.recommend_folded(rows, k, f, recent_arr), ignored
            if row is not None:
                return "personalized", self.recommend_known(row, k, f), ignored
        allowed = self.allowed_mask(f)
        if row is not None and f.exclude_purchased:
            allowed = allowed.copy()
            allowed[self.purchased_excluded(self.history_items(row))] = False
        return "popular", self.popular(k, allowed, f), ignored

    def recommend_batch(
        self, customer_ids: list[str], k: int, f: Filters
    ) -> list[tuple[str, list[Pick]]]:
        """Known customers are scored exactly; the rest get popular items.

        Small catalogues score all known customers in one matrix product; large
        ones rank each by the pruned search, which never holds a customers x items
        matrix (1,000 x 100,000 scores would be 400 MB per request).
        """
        self.check_categories(f.categories)
        allowed = self.allowed_mask(f)
        rows = self.bundle.customers.rows(customer_ids)
        known = np.flatnonzero(rows >= 0) if self.bundle.als is not None else np.empty(0, int)
        out: list[tuple[str, list[Pick]] | None] = [None] * len(customer_ids)
        if known.size:
            als = self.bundle.als
            assert als is not None and als.user_factors_ is not None
            scores = als.score(rows[known]) if self._by_norm is None else None
            for j, i in enumerate(known):
                row = int(rows[i])
                a = allowed
                hist = self.history_items(row)
                if f.exclude_purchased:
                    a = allowed.copy()
                    a[self.purchased_excluded(hist)] = False
                if scores is None:
                    items, top = self._best_items(als.user_factors_[row], a, k)
                else:
                    items, top = self._rank(scores[j], a, k)
                out[i] = ("personalized", self._reasons(items, top, hist, self.due_items(row)))
        for i, r in enumerate(rows):
            if out[i] is None:
                a = allowed
                if r >= 0 and f.exclude_purchased:
                    a = allowed.copy()
                    a[self.purchased_excluded(self.history_items(int(r)))] = False
                out[i] = ("popular", self.popular(k, a, f))
        return [o for o in out if o is not None]

    # -- items --------------------------------------------------------------------
    def similar(self, item_row: int, k: int) -> list[tuple[int, float]]:
        als = self.bundle.als
        if als is None:
            raise EngineError(409, "this model version has no ranking model, so no similar items")
        items, sims = als.similar_items(item_row, k)
        return [(int(i), float(s)) for i, s in zip(items, sims, strict=True)]

    # -- timing -------------------------------------------------------------------
    def buy_again(self, row: int, within_days: float, k: int) -> list[dict[str, Any]]:
        rep = self.bundle.repurchase
        if rep is None:
            raise EngineError(
                409, "this model version has no buy-again model (no item is rebought often enough)"
            )
        return list(rep.buy_again(row, within_days, k=k))

    def next_purchase(self, row: int, horizon_days: float) -> dict[str, Any]:
        timing = self.bundle.timing
        if timing is None:
            raise EngineError(409, "this model version has no next-purchase model")
        p = timing.predict(horizon_days, np.array([row]))
        med = float(p["median_days_to_next"][0])
        out: dict[str, Any] = {
            "p_active": float(p["p_active"][0]),
            "expected_purchases": float(p["expected_purchases"][0]),
            "p_purchase": float(p["p_purchase"][0]),
            "median_days_to_next": med if np.isfinite(med) else None,
            "next_purchase_date": None,
            "note": None,
        }
        if np.isfinite(med):
            date = self.as_of + pd.Timedelta(days=float(np.ceil(med))) - pd.Timedelta(days=1)
            out["next_purchase_date"] = date.date().isoformat()
        else:
            out["note"] = (
                "no date: this customer has most likely stopped buying, or the next purchase "
                "is more than a year away"
            )
        return out

    def due_customers(self, within_days: float, min_probability: float, limit: int) -> pd.DataFrame:
        timing = self.bundle.timing
        if timing is None:
            raise EngineError(409, "this model version has no next-purchase model")
        p = timing.predict(within_days)
        has = np.asarray(p["has_history"], dtype=bool)
        prob = np.asarray(p["p_purchase"])
        sel = np.flatnonzero(has & (prob >= min_probability))
        sel = sel[np.argsort(-prob[sel], kind="stable")][:limit]
        med = np.asarray(p["median_days_to_next"])[sel]
        dates = [
            (self.as_of + pd.Timedelta(days=float(np.ceil(m))) - pd.Timedelta(days=1))
            .date()
            .isoformat()
            if np.isfinite(m)
            else ""
            for m in med
        ]
        return pd.DataFrame(
            {
                "customer_id": self.bundle.customers.ids_[sel],
                "p_purchase": np.round(prob[sel], 6),
                "p_active": np.round(np.asarray(p["p_active"])[sel], 6),
                "expected_purchases": np.round(np.asarray(p["expected_purchases"])[sel], 6),
                "median_days_to_next": np.where(np.isfinite(med), np.round(med, 2), np.nan),
                "next_purchase_date": dates,
            }
        )
