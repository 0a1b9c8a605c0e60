"""Ranking metrics on a held-out time window.

Relevance is binary: an item is relevant to a customer if they bought it in the
evaluation window. Rankings are arrays of item rows, best first, ``-1`` padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommender.ranking.base import Recommender, in_sorted


def _hits(ranked: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean ``(n, k)``: is ``ranked[u, j]`` in row ``u`` of ``relevant``."""
    n, _ = ranked.shape
    rel = sp.csr_matrix(relevant)
    n_items = rel.shape[1]
    # one sorted key per (customer, item) pair answers every lookup at once
    rel_rows = np.repeat(np.arange(rel.shape[0], dtype=np.int64), np.diff(rel.indptr))
    keys = np.sort(rel_rows * n_items + rel.indices)
    wanted = np.arange(n, dtype=np.int64)[:, None] * n_items + ranked
    return in_sorted(wanted, keys) & (ranked >= 0)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def ndcg_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Per-customer nDCG@k with binary relevance; NaN where nothing is relevant."""
    ranked = np.asarray(ranked)[:, :k]
    hits = _hits(ranked, relevant)
    disc = _discounts(k)
    dcg = (hits * disc[: hits.shape[1]]).sum(axis=1)
    n_rel = np.diff(relevant.tocsr().indptr)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(n_rel, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, dcg / idcg, np.nan)


def recall_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Per-customer recall@k = relevant items in the top k / relevant items; NaN if none."""
    hits = _hits(np.asarray(ranked)[:, :k], relevant)
    n_rel = np.diff(relevant.tocsr().indptr)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, hits.sum(axis=1) / n_rel, np.nan)


def average_precision_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Per-customer AP@k, normalised by ``min(k, relevant items)``; NaN if none."""
    hits = _hits(np.asarray(ranked)[:, :k], relevant).astype(np.float64)
    cum = np.cumsum(hits, axis=1)
    prec = cum / np.arange(1, hits.shape[1] + 1)
    n_rel = np.diff(relevant.tocsr().indptr)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, (prec * hits).sum(axis=1) / np.minimum(n_rel, k), np.nan)


def catalog_coverage(ranked: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one list."""
    shown = np.unique(ranked[ranked >= 0])
    return float(shown.size / n_items) if n_items else 0.0


def split_relevant(
    relevant: sp.csr_matrix, history: sp.csr_matrix
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split relevant items into repeat items (in the history) and new items."""
    rel = sp.csr_matrix(relevant, copy=True)
    rel.data = np.ones_like(rel.data)
    seen = sp.csr_matrix(history, copy=True)
    seen.data = np.ones_like(seen.data)
    repeat = rel.multiply(seen).tocsr()
    repeat.eliminate_zeros()
    new = (rel - repeat).tocsr()
    new.eliminate_zeros()
    return repeat, new


def evaluate_rankings(
    ranked: np.ndarray,
    relevant: sp.csr_matrix,
    history: sp.csr_matrix,
    n_items: int,
    *,
    k_ndcg: int = 10,
    k_recall: int = 20,
    k_map: int = 10,
) -> dict[str, float | None]:
    """Mean metrics over customers with at least one relevant item.

    ``ranked`` has at least ``max(k)`` columns; ``relevant`` and ``history``
    have one row per ranked customer. A metric no customer defines (recall on
    repeat items when nobody rebuys anything in the window) is None: a JSON
    manifest has no NaN.
    """
    repeat, new = split_relevant(relevant, history)
    has_rel = np.diff(relevant.tocsr().indptr) > 0

    def mean(values: np.ndarray) -> float | None:
        v = values[~np.isnan(values)]
        return float(v.mean()) if v.size else None

    return {
        f"ndcg@{k_ndcg}": mean(ndcg_at_k(ranked, relevant, k_ndcg)),
        f"recall@{k_recall}": mean(recall_at_k(ranked, relevant, k_recall)),
        f"map@{k_map}": mean(average_precision_at_k(ranked, relevant, k_map)),
        f"recall@{k_recall}_repeat": mean(recall_at_k(ranked, repeat, k_recall)),
        f"recall@{k_recall}_new": mean(recall_at_k(ranked, new, k_recall)),
        f"coverage@{k_ndcg}": catalog_coverage(ranked[has_rel, :k_ndcg], n_items),
        "customers": int(has_rel.sum()),
    }


def evaluate_recommender(
    model: Recommender,
    history: sp.csr_matrix,
    relevant: sp.csr_matrix,
    user_rows: np.ndarray,
    *,
    k_ndcg: int = 10,
    k_recall: int = 20,
    k_map: int = 10,
    exclude_seen: bool = False,
    workers: int = 1,
) -> dict[str, Any]:
    """Rank for ``user_rows`` from ``history`` and score against ``relevant``.

    ``workers`` threads rank blocks of customers side by side (see
    :meth:`Recommender.recommend`).
    """
    k = max(k_ndcg, k_recall, k_map)
    ranked, _ = model.recommend(user_rows, history, k=k, exclude_seen=exclude_seen, workers=workers)
    return evaluate_rankings(
        ranked,
        relevant[user_rows],
        history[user_rows],
        model.n_items,
        k_ndcg=k_ndcg,
        k_recall=k_recall,
        k_map=k_map,
    )


def format_table(rows: Sequence[tuple[str, dict[str, Any]]], columns: Sequence[str]) -> str:
    """Plain-text table of metric rows, for logs and the README."""
    header = ["model", *columns]
    body = [[name, *(_fmt(metrics.get(c)) for c in columns)] for name, metrics in rows]
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(str(v).ljust(w) for v, w in zip(header, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v) if v is not None else "-"
