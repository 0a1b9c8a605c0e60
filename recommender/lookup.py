"""Find a customer or an item by what someone types: a paginated prefix search.

Text is matched on a folded form (Unicode NFKC, then case folding), so
``"zoë"`` finds ``"Zoë-17"`` whether the accent was typed as one character or
two, and ``"straße"`` finds ``"STRASSE-1"``. The folded keys are sorted once,
and every query is two binary searches plus the page it returns, so a million
ids answer in microseconds and the browser is never sent more than a page.

Customers are found by the start of their id; items by the start of their id
or of any word of their title (``"coff"`` finds "Organic Coffee Beans").
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

#: The most matches one page returns.
MAX_PAGE = 100
#: The furthest a page may start into the matches.
MAX_OFFSET = 10_000
_WORD_START = re.compile(r"(?<!\w)\w", re.UNICODE)


def fold(text: str) -> str:
    """The form keys and queries are compared in."""
    return unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True)
class Matches:
    """One page of the rows whose keys start with a query.

    Attributes
    ----------
    total
        How many rows match in all.
    rows
        This page's rows: those whose id is the query as typed first, then in
        the order of their first matching key.
    """

    total: int
    rows: np.ndarray


class PrefixSearch:
    """Prefix search over keys that each name a row (see the module docstring).

    Parameters
    ----------
    ids
        The ids of the rows; a match of the query typed exactly leads its page.
    keys
        ``(text, row)`` pairs; a row may have several (its id, its title's words).
    """

    def __init__(self, ids: np.ndarray, keys: Iterable[tuple[str, int]]) -> None:
        pairs = sorted((fold(text), row) for text, row in keys)
        self._keys = [k for k, _ in pairs]
        self._rows = np.asarray([r for _, r in pairs], dtype=np.int64)
        self._ids = np.asarray(ids)
        self._unique = len(set(self._rows.tolist())) == len(self._rows)

    @classmethod
    def of_ids(cls, ids: np.ndarray) -> PrefixSearch:
        """Search by the start of an id."""
        return cls(ids, ((str(s), i) for i, s in enumerate(ids)))

    @classmethod
    def of_items(cls, ids: np.ndarray, titles: np.ndarray) -> PrefixSearch:
        """Search by the start of an item's id or of any word of its title."""

        def keys() -> Iterable[tuple[str, int]]:
            for i, (item_id, title) in enumerate(zip(ids, titles, strict=True)):
                yield str(item_id), i
                text = str(title)
                for m in _WORD_START.finditer(text):
                    yield text[m.start() :], i

        return cls(ids, keys())

    def search(self, query: str, *, offset: int = 0, limit: int = 20) -> Matches:
        """The rows with a key starting with ``query`` (folded), a page of at most ``limit``.

        Raises
        ------
        ValueError
            For an empty query, an offset outside 0 to :data:`MAX_OFFSET` or
            a limit outside 1 to :data:`MAX_PAGE`.
        """
        typed = query.strip()
        q = fold(typed)
        if not q:
            raise ValueError("type at least one character")
        if not 0 <= offset <= MAX_OFFSET or not 1 <= limit <= MAX_PAGE:
            raise ValueError(
                f"offset must be between 0 and {MAX_OFFSET:,} and limit between 1 and {MAX_PAGE}"
            )
        lo = bisect.bisect_left(self._keys, q)
        # every key with the prefix q sorts before q + the highest code point
        hi = bisect.bisect_left(self._keys, q + "\U0010ffff", lo)
        rows = self._rows[lo:hi]
        if self._unique:
            total = rows.size
            # keys equal to the query sort first; of those the id typed exactly leads
            same = bisect.bisect_right(self._keys, q, lo, hi) - lo
            head = rows[:same]
            exact = self._ids[head] == typed
            page = np.r_[head[exact], head[~exact], rows[same : offset + limit]]
        else:
            _, first = np.unique(rows, return_index=True)
            rows = rows[np.sort(first)]  # each row once, at its first matching key
            total = rows.size
            exact = self._ids[rows[: offset + limit]] == typed
            page = np.r_[rows[: offset + limit][exact], rows[: offset + limit][~exact]]
        return Matches(total=int(total), rows=page[offset : offset + limit])


__all__ = ["MAX_OFFSET", "MAX_PAGE", "Matches", "PrefixSearch", "fold"]
