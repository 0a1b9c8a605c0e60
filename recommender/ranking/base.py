"""The interface every ranking model shares, and blocked top-k selection."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

from recommender.errors import NotFittedError


class Recommender(ABC):
    """A model that scores every item for a customer from a customer x item matrix.

    Subclasses implement :meth:`fit` and :meth:`score`; :meth:`recommend`
    turns scores into top-k lists in blocks of customers, so that a million
    customers never need a million-row dense matrix at once.
    """

    #: Short name used in reports.
    name: str = "recommender"

    @abstractmethod
    def fit(self, user_items: sp.csr_matrix) -> Recommender:
        """Learn from a customer x item matrix (rows customers, columns items)."""

    @abstractmethod
    def score(self, user_rows: np.ndarray, user_items: sp.csr_matrix) -> np.ndarray:
        """Dense scores, shape ``(len(user_rows), n_items)``, float32.

        ``user_items`` is the full matrix of histories (rows indexed by
        ``user_rows``); models that need the history read it from there.
        """

    @property
    @abstractmethod
    def n_items(self) -> int:
        """Number of items the model scores."""

    def _check_fitted(self, *attrs: str) -> None:
        for attr in attrs:
            if getattr(self, attr, None) is None:
                raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")

    def recommend(
        self,
        user_rows: np.ndarray,
        user_items: sp.csr_matrix,
        k: int = 10,
        *,
        exclude_seen: bool = False,
        batch_size: int | None = None,
        workers: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item rows and scores for each customer row.

        Returns two arrays of shape ``(len(user_rows), k)``: item rows (int32,
        ``-1`` where fewer than ``k`` items are eligible) and scores (float32).
        Customers are scored in blocks of ``batch_size`` (default: as many as
        keep one block of scores near 16 million entries).

        With ``workers`` above 1, that many threads rank blocks side by side
        with BLAS held to one thread each; the blocks are the same, so the lists
        are those one worker with single-threaded BLAS gives.
        """
        user_rows = np.asarray(user_rows, dtype=np.int64)
        k = int(min(k, self.n_items))
        if batch_size is None:
            batch_size = int(np.clip(16_000_000 // max(self.n_items, 1), 16, 4096))
        out_items = np.full((len(user_rows), k), -1, dtype=np.int32)
        out_scores = np.full((len(user_rows), k), -np.inf, dtype=np.float32)
        scratch = threading.local()  # per thread, for this call only

        def rank(start: int, block: np.ndarray) -> None:
            items, top = self._rank_block(block, user_items, k, exclude_seen, scratch)
            out_items[start : start + len(block)] = items
            out_scores[start : start + len(block)] = top

        blocks = list(iter_blocks(user_rows, batch_size))
        if workers > 1 and len(blocks) > 1:
            from threadpoolctl import threadpool_limits

            # BLAS threads inside each worker would oversubscribe the cores,
            # and a matrix product split across threads rounds differently
            with threadpool_limits(1, "blas"), ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda b: rank(*b), blocks))
        else:
            for start, block in blocks:
                rank(start, block)
        return out_items, out_scores

    def _rank_block(
        self,
        rows: np.ndarray,
        user_items: sp.csr_matrix,
        k: int,
        exclude_seen: bool,
        scratch: threading.local,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items and scores of one block of customers, from dense scores.

        Models whose scores are mostly one shared value override this with a
        sparse path that must give the same lists. ``scratch`` is the calling
        thread's own, for buffers reused from block to block (see
        :func:`scratch_block`).
        """
        scores = self._dense_scores(rows, user_items, scratch)
        if exclude_seen:
            mask_seen(scores, user_items, rows)
        return top_k(scores, k)

    def _dense_scores(
        self, rows: np.ndarray, user_items: sp.csr_matrix, scratch: threading.local
    ) -> np.ndarray:
        """:meth:`score` for the dense path; a model may write into a
        :func:`scratch_block` instead of a new array."""
        return self.score(rows, user_items)


def scratch_block(scratch: threading.local, n_rows: int, n_cols: int) -> np.ndarray:
    """A float32 ``(n_rows, n_cols)`` block, reused by the calling thread.

    A fresh block of dense scores pays the first touch of every page, which a
    recommend over millions of customers would pay once per block; a block
    reused per thread pays it once.
    """
    buf = getattr(scratch, "scores", None)
    if buf is None or buf.shape[0] < n_rows or buf.shape[1] != n_cols:
        buf = scratch.scores = np.empty((n_rows, n_cols), dtype=np.float32)
    return buf[:n_rows]


def iter_blocks(rows: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(offset, rows[offset:offset + batch_size])``."""
    for start in range(0, len(rows), batch_size):
        yield start, rows[start : start + batch_size]


def mask_seen(scores: np.ndarray, user_items: sp.csr_matrix, rows: np.ndarray) -> None:
    """Set the scores of items in each customer's history to ``-inf`` in place."""
    sub = user_items[rows]
    r, c = sub.nonzero()
    scores[r, c] = -np.inf


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``k``, best first, ties broken by the lower item row.

    ``-inf`` entries (masked items) come back as item ``-1``.

    A full ``argpartition`` of every row touches every score again; instead
    each row gets a threshold that at least ``k`` of its scores reach (the
    ``k``-th largest of the maxima of groups of up to 32 columns spread across
    the row), so only a few dozen candidates per row are
    sorted. Rows with many ties above the threshold fall back to an exact
    partition.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k <= 0 or n_rows == 0:
        return _no_items(n_rows, k)
    # candidates cost about k * group, the threshold n_cols / group
    group = int(np.clip(np.sqrt(n_cols / k), 1, 32))
    n_groups = n_cols // group
    limit = 8 * k + 64  # more candidates than this: many ties at the threshold
    if n_groups >= 2 * k:
        # group g holds the columns g, g + n_groups, g + 2 n_groups, ...: the
        # maxima down a (group, n_groups) view run at memory speed, where
        # maxima over runs of adjacent columns cost three times as much
        body = group * n_groups
        maxima = scores[:, :body].reshape(n_rows, group, n_groups).max(axis=1)
        thresh = np.partition(maxima, n_groups - k, axis=1)[:, n_groups - k]
        # every score that reaches the threshold lies in a group whose maximum
        # reaches it or in the tail past the last group: look only there
        # (flatnonzero and divmod: nonzero on a 2-d mask is several times slower)
        g_rows, g_idx = np.divmod(np.flatnonzero(maxima >= thresh[:, None]), n_groups)
        crowded_rows = np.bincount(g_rows, minlength=n_rows) > limit // 4
        pick = ~crowded_rows[g_rows]
        g_rows, g_idx = g_rows[pick], g_idx[pick]
        members = n_groups * np.arange(group)
        in_group = scores.reshape(-1)[(g_rows * n_cols + g_idx)[:, None] + members]
        line, j = np.divmod(np.flatnonzero(in_group >= thresh[g_rows, None]), group)
        rows, cols = g_rows[line], g_idx[line] + members[j]
        if body < n_cols:
            open_rows = np.flatnonzero(~crowded_rows)
            t_rows, t_cols = np.nonzero(scores[open_rows, body:] >= thresh[open_rows, None])
            rows = np.concatenate([rows, open_rows[t_rows]])
            cols = np.concatenate([cols, body + t_cols])
        crowded_rows |= np.bincount(rows, minlength=n_rows) > limit
        crowded = np.flatnonzero(crowded_rows)
        if crowded.size:
            keep = ~crowded_rows[rows]
            rows, cols = rows[keep], cols[keep]
    else:
        thresh = np.partition(scores, n_cols - k, axis=1)[:, n_cols - k]
        mask = scores >= thresh[:, None]
        crowded = np.flatnonzero(mask.sum(axis=1) > limit)
        mask[crowded] = False
        rows, cols = np.nonzero(mask)
    if crowded.size:
        sel_rows, sel_cols = np.nonzero(_tie_selection(scores[crowded], thresh[crowded], k))
        rows = np.concatenate([rows, crowded[sel_rows]])
        cols = np.concatenate([cols, sel_cols])
    return _rank_candidates(rows, cols, scores[rows, cols], n_rows, k)


def _rank_candidates(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of candidate entries per row, best first, ties to the lower column.

    ``(rows[i], cols[i])`` holds ``values[i]``; each pair appears at most once.
    Returns item rows (int32, ``-1`` where a row has fewer than ``k``
    candidates or where the value is not finite) and values (float32,
    ``-inf`` where there is no candidate), shape ``(n_rows, k)``.
    """
    order = np.argsort(rows, kind="stable")
    rows, cols, values = rows[order], cols[order], values[order]
    counts = np.bincount(rows, minlength=n_rows)
    width = max(int(counts.max(initial=0)), k)
    pos = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    # one padded row per customer: a sort along rows of a 2-d array beats a
    # lexsort of the flat candidates
    vals = np.full((n_rows, width), -np.inf, dtype=np.float32)
    items = np.zeros((n_rows, width), dtype=np.int64)
    vals[rows, pos] = values
    items[rows, pos] = cols
    best = np.lexsort((items, -vals), axis=1)[:, :k]
    top = np.take_along_axis(vals, best, axis=1)
    picked = np.take_along_axis(items, best, axis=1).astype(np.int32)
    picked[~np.isfinite(top)] = -1
    return picked, top


def top_k_sparse(
    entries: sp.csr_matrix,
    fill: np.ndarray,
    k: int,
    *,
    exclude: sp.csr_matrix | None = None,
    fill_order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_k` of rows that hold ``fill`` except where ``entries`` stores a value.

    Gives the items and scores of ``top_k(dense, k)``, where every row of
    ``dense`` is ``fill``, overwritten by each value ``entries`` stores (an
    explicit zero included) and by ``-inf`` wherever ``exclude`` is nonzero,
    without building ``dense``: a row costs its stored values and about ``k``
    items of ``fill`` instead of the whole catalog.

    Parameters
    ----------
    entries
        Rows x items, each position stored at most once (as sparse products
        and row selections give; call ``sum_duplicates`` otherwise).
    fill
        Score of every item a row does not store, the same for all rows.
    k
        Length of each list.
    exclude
        Rows x items; nonzero positions are left out (``exclude_seen``).
    fill_order
        ``np.argsort(-fill, kind="stable")``, if the caller keeps it.
    """
    entries = sp.csr_matrix(entries, dtype=np.float32)
    n_rows, n_cols = entries.shape
    k = min(k, n_cols)
    if k <= 0 or n_rows == 0:
        return _no_items(n_rows, k)
    fill = np.asarray(fill, dtype=np.float32)
    counts = np.diff(entries.indptr)
    rows = np.repeat(np.arange(n_rows), counts)
    cols = entries.indices.astype(np.int64)
    vals = entries.data
    taken_rows, taken_cols = rows, cols  # positions the fill does not reach
    if exclude is not None:
        ex_rows, ex_cols = sp.csr_matrix(exclude).nonzero()
        keep = ~in_sorted(rows * n_cols + cols, np.sort(ex_rows * n_cols + ex_cols))
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        counts = np.bincount(rows, minlength=n_rows)
        taken_rows = np.concatenate([taken_rows, ex_rows])
        taken_cols = np.concatenate([taken_cols, ex_cols])
    floor = _kth_floor(rows, vals, counts, k)
    keep = vals >= floor[rows]  # the rest cannot make a list
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    # a row whose floor beats every fill value takes nothing from the fill, and
    # no row does from a fill of -inf (its items would come back as -1): the
    # fill's order, a sort of the whole catalog, is then not needed
    fill_max = float(fill.max(initial=-np.inf))
    needs_fill = ~(floor > fill_max) & (fill_max > -np.inf)
    f_rows = f_cols = np.empty(0, dtype=np.int64)
    if needs_fill.any():
        if fill_order is None:
            fill_order = np.argsort(-fill, kind="stable")
        wanted = needs_fill[taken_rows]
        f_rows, f_cols = _first_untaken(
            taken_rows[wanted], taken_cols[wanted], needs_fill, fill_order, k
        )
    return _rank_candidates(
        np.concatenate([rows, f_rows]),
        np.concatenate([cols, f_cols]),
        np.concatenate([vals, fill[f_cols]]),
        n_rows,
        k,
    )


def _kth_floor(rows: np.ndarray, vals: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """Per row, a value that at least ``k`` of its ``vals`` reach (``-inf`` if none).

    ``rows`` are grouped, ``counts[r]`` entries for row ``r``. Each row's values
    are laid out in lines of a common width (a long row takes several) and
    every line's ``k``-th best comes from the dense :func:`top_k`; the best of
    a row's lines is the floor, close to its own ``k``-th best value.
    """
    floor = np.full(len(counts), -np.inf, dtype=np.float32)
    if counts.max(initial=0) <= k:
        return floor
    width = max(2 * k, int(counts.mean()) + 1)
    n_lines = -(-counts // width)
    first = np.cumsum(n_lines) - n_lines
    packed = np.full(int(n_lines.sum()) * width, -np.inf, dtype=np.float32)
    shift = first * width - (np.cumsum(counts) - counts)
    packed[np.arange(rows.size) + np.repeat(shift, counts)] = vals
    line_kth = top_k(packed.reshape(-1, width), k)[1][:, k - 1]
    np.maximum.at(floor, np.repeat(np.arange(len(counts)), n_lines), line_kth)
    return floor


def _first_untaken(
    taken_rows: np.ndarray,
    taken_cols: np.ndarray,
    wanted: np.ndarray,
    order: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each ``wanted`` row, the first ``k`` items of ``order`` it has not taken.

    Returns ``(rows, items)``. A row's taken items sorted by their place in
    ``order``, q_0 < q_1 < ..., have q_i - i untaken items before them, so the
    m of them with q_i - i < k come before its k-th untaken item, and the
    first k + m places of ``order`` hold exactly the k it gets.
    """
    n_rows, n_cols = len(wanted), len(order)
    place = np.empty(n_cols, dtype=np.int64)
    place[order] = np.arange(n_cols)
    taken_place = place[taken_cols]
    # only places below k + (the row's taken items) can matter; few are
    near = taken_place < k + np.bincount(taken_rows, minlength=n_rows)[taken_rows]
    taken = np.sort(taken_rows[near] * n_cols + taken_place[near])
    taken = taken[np.diff(taken, prepend=-1) != 0]  # a stored item may be excluded too
    t_rows, t_place = np.divmod(taken, n_cols)
    t_count = np.bincount(t_rows, minlength=n_rows)
    i = np.arange(taken.size) - np.repeat(np.cumsum(t_count) - t_count, t_count)
    window = np.minimum(k + np.bincount(t_rows[t_place - i < k], minlength=n_rows), n_cols)
    window[~wanted] = 0
    rows = np.repeat(np.arange(n_rows), window)
    places = np.arange(rows.size) - np.repeat(np.cumsum(window) - window, window)
    free = ~in_sorted(rows * n_cols + places, taken)
    return rows[free], order[places[free]]


def in_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask: is each of ``values`` in ``sorted_keys`` (ascending).

    ``np.isin`` deduplicates both sides first, which costs far more here.
    """
    if sorted_keys.size == 0:
        return np.zeros(np.shape(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.size - 1)
    return sorted_keys[pos] == values


def _no_items(n_rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = max(k, 0)
    return np.full((n_rows, k), -1, np.int32), np.full((n_rows, k), -np.inf, np.float32)


def _tie_selection(sub: np.ndarray, thresh: np.ndarray, k: int) -> np.ndarray:
    """Exactly the top ``k`` of each row of ``sub`` as a mask, ties to the lower column.

    For rows where many entries tie at the threshold (e.g. the zeros of a
    sparse score row): keep those above the exact ``k``-th value and, of the
    ties at it, only the lowest columns needed to make ``k``.
    """
    n_cols = sub.shape[1]
    exact = thresh.copy()
    # the threshold is the exact k-th value unless k entries lie above it
    over = np.flatnonzero((sub > exact[:, None]).sum(axis=1) >= k)
    if over.size:
        exact[over] = np.partition(sub[over], n_cols - k, axis=1)[:, n_cols - k]
    above = sub > exact[:, None]
    room = k - above.sum(axis=1)
    # the lowest tied columns usually lie near the start of the row: count
    # ties in a leading slice, and go through whole rows only where needed
    head = min(n_cols, max(4 * k, 2048))
    tied = sub[:, :head] == exact[:, None]
    seen = np.cumsum(tied, axis=1, dtype=np.int32)
    above[:, :head] |= tied & (seen <= room[:, None])
    short = np.flatnonzero(seen[:, -1] < room)
    if short.size:
        tied = sub[short] == exact[short, None]
        seen = np.cumsum(tied, axis=1, dtype=np.int32)
        above[short] |= tied & (seen <= room[short, None])
    return above
