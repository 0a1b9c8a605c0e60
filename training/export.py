"""Batch exports from a published version: recommendations and next-purchase tables.

Both write in blocks of customers, so a million customers never need more than
one block of scores in memory, and both answer through :mod:`recommender.answers`,
so a customer gets the picks and dates the API gives them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recommender.answers import (
    TIMING_COLUMNS,
    Answerer,
    AnswerError,
    DueSort,
    Rules,
    ValueTerms,
    due_table,
    timing_table,
)
from recommender.data.transactions import DataError, read_table
from recommender.store.bundle import Bundle
from training.ranking import ranking_workers


class ExportError(RuntimeError):
    """The export cannot be made from this version."""


#: File name endings an export can be written as.
OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")


def check_output_path(out: str | Path) -> Path:
    """Refuse an output the export could not write, before any work is done.

    Raises
    ------
    ExportError
        The folder does not exist, or the extension is neither CSV nor Parquet.
    """
    path = Path(out)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ExportError(
            f"--out {out}: unknown file type {path.suffix or '(no extension)'!r}; "
            "write .csv or .parquet"
        )
    if not path.parent.is_dir():
        raise ExportError(f"--out {out}: folder {path.parent} does not exist; create it first")
    return path


def read_customer_list(path: str | Path) -> np.ndarray:
    """Customer ids from a file: a ``customer_id`` column, or one id per line."""
    path = Path(path)
    frame, _ = read_table(path, what="customer list")
    if "customer_id" in frame.columns:
        ids = frame["customer_id"]
    elif len(frame.columns) == 1:
        # a headerless list: the header row is itself an id
        ids = pd.concat([pd.Series([frame.columns[0]]), frame.iloc[:, 0]], ignore_index=True)
    else:
        raise DataError(f"{path}: expected a customer_id column or one id per line")
    return ids.astype(str).str.strip().to_numpy()


class _TableWriter:
    """Append blocks to a CSV or Parquet file chosen by extension."""

    def __init__(self, out: str | Path) -> None:
        self.out = check_output_path(out)
        self.parquet = self.out.suffix.lower() in (".parquet", ".pq")
        self.writer: pq.ParquetWriter | None = None
        self.tmp = self.out.with_name(self.out.name + ".partial")
        self.first = True

    def write(self, frame: pd.DataFrame) -> None:
        if self.parquet:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.tmp, table.schema)
            self.writer.write_table(table)
        else:
            frame.to_csv(self.tmp, mode="w" if self.first else "a", header=self.first, index=False)
        self.first = False

    def close(self, columns: list[str]) -> None:
        """Finish and move into place (an empty export still gets its header)."""
        if self.writer is not None:
            self.writer.close()
        if self.first:
            self.write(pd.DataFrame({c: pd.Series(dtype=object) for c in columns}))
            if self.writer is not None:
                self.writer.close()
        self.tmp.replace(self.out)  # readers never see a half-written export

    def abort(self) -> None:
        """Drop the partial file; an earlier export at ``out`` stays as it was."""
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - closing a broken writer is best effort
                pass
        self.tmp.unlink(missing_ok=True)


def _rows_for(bundle: Bundle, customer_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if customer_ids is None:
        rows = np.arange(bundle.n_customers)
        return rows, bundle.customers.ids_
    rows = bundle.customers.rows(customer_ids)
    return rows, np.asarray(customer_ids, dtype=str)


def _blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def export_recommendations(
    bundle: Bundle,
    out: str | Path,
    *,
    customer_ids: np.ndarray | None = None,
    k: int = 10,
    categories: Sequence[str] | None = None,
    exclude_items: Sequence[str] | None = None,
    exclude_purchased: bool | None = None,
    available_only: bool | None = None,
    batch_size: int = 65_536,
) -> dict[str, int]:
    """Write ``customer_id,rank,item_id,score`` for each customer.

    The picks are the ones the API gives the same customer under the same
    rules (:meth:`recommender.answers.Answerer.rank_rows`, with the API's
    defaults): the version's served list (the two-stage ranker's, or the
    list that beat it), purchases shown as that list ranks them, unavailable
    items hidden when the catalogue marks any, the precomputed top-N table
    where it has ``k`` allowed items, otherwise the list ranked in blocks on
    every core. Customers the model has not seen get the popular
    items the rules allow (with their popularity as score). ``batch_size``
    customers are written at a time, so memory stays bounded. Returns counts
    of customers by strategy.

    Parameters
    ----------
    categories, exclude_items, exclude_purchased, available_only
        The business rules, as :class:`recommender.answers.Rules` documents.

    Raises
    ------
    ExportError
        No ranking model, ``k`` out of range, or categories that cannot be used.
    """
    if bundle.als is None:
        raise ExportError(
            "this model version has no ranking model (the log had no item detail); "
            "use `encore next-purchase` for timing"
        )
    if not 1 <= k <= bundle.n_items:
        raise ExportError(f"-k must be between 1 and the number of items ({bundle.n_items})")
    answerer = Answerer(bundle)
    rules = Rules(
        categories=categories,
        exclude_items=exclude_items,
        exclude_purchased=exclude_purchased,
        available_only=available_only,
    )
    try:
        answerer.check(rules)
    except AnswerError as exc:
        raise ExportError(exc.message) from None
    rows, ids = _rows_for(bundle, customer_ids)
    writer = _TableWriter(out)
    stats = {"personalized": 0, "popular": 0}
    item_ids = bundle.items.ids_
    columns = ["customer_id", "rank", "item_id", "score"]
    workers = ranking_workers()
    try:
        for sl in _blocks(len(rows), batch_size):
            r, cid = rows[sl], ids[sl]
            ranked = answerer.rank_rows(r, k, rules, workers=workers)
            stats["personalized"] += int(ranked.personalized.sum())
            stats["popular"] += int((~ranked.personalized).sum())
            items, scores = ranked.items, ranked.scores
            valid = items >= 0
            n = len(r)
            frame = pd.DataFrame(
                {
                    "customer_id": np.repeat(cid, k)[valid.ravel()],
                    "rank": np.tile(np.arange(1, k + 1), n)[valid.ravel()],
                    "item_id": item_ids[items[valid]],
                    "score": scores[valid].astype(np.float64).round(6),
                }
            )
            writer.write(frame)
    except BaseException:
        writer.abort()
        raise
    writer.close(columns)
    return stats


def export_next_purchase(
    bundle: Bundle,
    out: str | Path,
    *,
    horizon_days: float = 30.0,
    customer_ids: np.ndarray | None = None,
    batch_size: int = 100_000,
    terms: ValueTerms = ValueTerms(),  # noqa: B008 - frozen, so one shared default is safe
) -> dict[str, int]:
    """Write one row per customer with the timing and spend figures for the horizon.

    The table is :func:`recommender.answers.timing_table`'s, the one the API's
    next-purchase answers come from. Columns: customer_id, p_active (empty
    where the model cannot tell: one purchase day under BG/NBD),
    expected_purchases, p_purchase, median_days_to_next, next_purchase_date
    (empty where a purchase within a year is less likely than not),
    expected_order_value, expected_spend and clv (empty when the version has
    no spend model). Ids the model does not know are skipped.
    """
    if bundle.timing is None:
        raise ExportError("this model version has no next-purchase model")
    if not horizon_days > 0:
        raise ExportError("--horizon-days must be positive")
    rows, ids = _rows_for(bundle, customer_ids)
    unknown = int((rows < 0).sum())
    rows, ids = rows[rows >= 0], ids[rows >= 0]
    writer = _TableWriter(out)
    try:
        for sl in _blocks(len(rows), batch_size):
            writer.write(
                timing_table(bundle, rows[sl], horizon_days, customer_ids=ids[sl], terms=terms)
            )
    except BaseException:
        writer.abort()
        raise
    writer.close(TIMING_COLUMNS)
    return {"customers": int(len(rows)), "unknown": unknown}


def export_due(
    bundle: Bundle,
    out: str | Path,
    *,
    within_days: float = 14.0,
    min_probability: float = 0.5,
    k: int = 5,
    sort: DueSort = "p_purchase",
    terms: ValueTerms = ValueTerms(),  # noqa: B008 - frozen, so one shared default is safe
) -> dict[str, int]:
    """Write the customers likely to buy within ``within_days``, with their top picks.

    The rows are :func:`recommender.answers.due_table`'s (the API's
    ``GET /v1/customers/due``: customer_id, p_purchase, p_active,
    expected_purchases, median_days_to_next, next_purchase_date,
    expected_order_value, expected_spend, clv), most likely first (or, with
    ``sort="expected_spend"``, most expected spend first), and each gets
    ``pick_1`` .. ``pick_k``: the picks
    :meth:`~recommender.answers.Answerer.rank_rows` gives them under the API's
    default rules (empty without a ranking model).
    """
    if bundle.timing is None:
        raise ExportError("this model version has no next-purchase model")
    if not within_days > 0:
        raise ExportError("--within-days must be positive")
    if not 0 <= min_probability <= 1:
        raise ExportError("--min-probability must be between 0 and 1")
    try:
        table = due_table(
            bundle, within_days, min_probability, bundle.n_customers, sort=sort, terms=terms
        )
    except AnswerError as exc:
        raise ExportError(exc.message) from None
    k = min(k, bundle.n_items)
    columns = [*table.columns, *(f"pick_{i + 1}" for i in range(k))]
    writer = _TableWriter(out)
    try:
        if bundle.als is not None and len(table):
            answerer = Answerer(bundle)
            rows = bundle.customers.rows(table["customer_id"].to_numpy())
            ranked = answerer.rank_rows(rows, k, Rules(), workers=ranking_workers())
            ids = np.where(ranked.items >= 0, bundle.items.ids_[np.maximum(ranked.items, 0)], "")
        else:
            ids = np.full((len(table), k), "", dtype=object)
        picks = pd.DataFrame(ids, columns=columns[len(table.columns) :], index=table.index)
        writer.write(pd.concat([table, picks], axis=1))
    except BaseException:
        writer.abort()
        raise
    writer.close(columns)
    return {"customers": int(len(table))}
