"""The id index: external customer and item ids and the matrix rows they name."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


class IdIndex:
    """A fixed mapping between external ids (text) and matrix rows.

    The index is saved with the factors it indexes and never rebuilt at serving
    time, so a row always means the same customer or item.
    """

    def __init__(self, ids: Sequence[str] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=str)
        if arr.ndim != 1:
            raise ValueError("ids must be one-dimensional")
        self.ids_ = arr
        self._index = pd.Index(arr)
        if not self._index.is_unique:
            raise ValueError("ids must be unique")

    @classmethod
    def from_values(cls, values: Sequence[str] | np.ndarray | pd.Series) -> IdIndex:
        """Index the distinct values, in sorted order (deterministic)."""
        return cls.encode(values)[0]

    @classmethod
    def encode(cls, values: Sequence[str] | np.ndarray | pd.Series) -> tuple[IdIndex, np.ndarray]:
        """Index the distinct values (sorted) and return each value's row too."""
        if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
            # A checked log's id columns: only the (few) categories are text.
            cat_codes = values.cat.codes.to_numpy()
            if (cat_codes >= 0).all():
                names = np.asarray(values.cat.categories, dtype=str)
                used = np.zeros(len(names), dtype=bool)
                used[cat_codes] = True
                order = np.flatnonzero(used)[np.argsort(names[used], kind="stable")]
                remap = np.full(len(names), -1, dtype=np.int64)
                remap[order] = np.arange(len(order))
                return cls(names[order]), remap[cat_codes]
        codes, uniques = pd.factorize(pd.Series(values, dtype="str"), sort=True)
        return cls(np.asarray(uniques, dtype=str)), codes.astype(np.int64)

    def __len__(self) -> int:
        return int(self.ids_.shape[0])

    def __contains__(self, external_id: object) -> bool:
        return external_id in self._index

    def rows(self, ids: Sequence[str] | np.ndarray | pd.Series) -> np.ndarray:
        """Rows of ``ids`` (int64), ``-1`` for ids not in the index."""
        return np.asarray(self._index.get_indexer(np.asarray(ids, dtype=str)), dtype=np.int64)

    def row(self, external_id: str) -> int | None:
        """Row of one id, or None when unknown."""
        try:
            loc = self._index.get_loc(external_id)
        except KeyError:
            return None
        return int(loc) if isinstance(loc, (int, np.integer)) else None

    def id(self, row: int) -> str:
        return str(self.ids_[row])
