"""Seeded samples of customers: the same rows on every run with the same seed."""

from __future__ import annotations

import numpy as np


def seeded_subset(rows: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """At most ``limit`` of ``rows``, drawn without replacement with ``seed``, sorted.

    ``rows`` come back unchanged when there are no more than ``limit`` (or no limit).
    """
    if limit is None or len(rows) <= limit:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))


def seeded_mask(rows: np.ndarray, n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """A boolean mask over ``n`` rows, true on :func:`seeded_subset` of ``rows``."""
    mask = np.zeros(n, dtype=bool)
    mask[seeded_subset(rows, limit, seed)] = True
    return mask
