"""The data contract: loading and checking a shop's transaction log and catalog.

A transaction log has one row per order line with the columns ``customer_id``,
``item_id``, ``timestamp`` (ISO-8601 date or datetime, or epoch seconds),
optionally ``quantity`` (default 1), ``price`` (unit price) and ``event`` (view,
cart, purchase, ... with configurable weights). Other column names are mapped
with a ``{canonical: source}`` dictionary.

Validation never loses a row silently: every dropped row is counted under one
reason (the first that applies, in the order of :data:`DROP_REASONS`), the first
offending row and column are remembered for each reason, and ``strict=True``
turns any drop into a :class:`DataError` naming them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("customer_id", "item_id", "timestamp")
OPTIONAL_COLUMNS = ("quantity", "price", "event")
CATALOG_COLUMNS = ("item_id", "title", "category", "price", "available")

#: Reasons a row is dropped, in the order they are checked.
DROP_REASONS = (
    "missing_customer_id",
    "missing_item_id",
    "unparseable_timestamp",
    "unparseable_quantity",
    "non_positive_quantity",
    "invalid_price",
    "unknown_event",
    "after_as_of",
    "duplicate",
)

_REASON_COLUMN = {
    "missing_customer_id": "customer_id",
    "missing_item_id": "item_id",
    "unparseable_timestamp": "timestamp",
    "unparseable_quantity": "quantity",
    "non_positive_quantity": "quantity",
    "invalid_price": "price",
    "unknown_event": "event",
    "after_as_of": "timestamp",
    "duplicate": "*",
}

_REASON_TEXT = {
    "missing_customer_id": (
        "customer id is empty (or longer than 256 characters, or has control characters)"
    ),
    "missing_item_id": (
        "item id is empty (or longer than 256 characters, or has control characters)"
    ),
    "unparseable_timestamp": "time is not an ISO-8601 date/datetime or epoch seconds",
    "unparseable_quantity": "quantity is not a number",
    "non_positive_quantity": "quantity is zero or negative (a return or cancellation)",
    "invalid_price": "price is not a non-negative number",
    "unknown_event": "event is not one of the configured event types",
    "after_as_of": "time is after the --as-of date (or, without --as-of, after today)",
    "duplicate": "row is an exact duplicate of an earlier row",
}

#: Event names that count as purchases when an ``event`` column is present.
PURCHASE_EVENTS = frozenset({"purchase", "order", "buy", "transaction", "checkout"})

_NULL_STRINGS = frozenset({"", "nan", "NaN", "NULL", "null", "None", "NA", "N/A"})
_MAX_ID_LENGTH = 256


class DataError(ValueError):
    """A transaction log or catalog that cannot be used, with a one-line reason."""


@dataclass
class Offence:
    """Where a dropped row was first seen: 1-based data row, file line, column, value."""

    row: int
    line: int | None
    column: str
    value: str

    def to_dict(self) -> dict[str, Any]:
        return {"row": self.row, "line": self.line, "column": self.column, "value": self.value}


@dataclass
class ValidationReport:
    """Counts of rows read, kept and dropped by reason."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    first_offence: dict[str, Offence] = field(default_factory=dict)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_dropped": self.rows_dropped,
            "dropped": dict(self.dropped),
            "first_offence": {k: v.to_dict() for k, v in self.first_offence.items()},
        }

    def describe(self, reason: str) -> str:
        """One line naming the first row and column dropped for ``reason``."""
        off = self.first_offence[reason]
        where = f"row {off.row}" + (f" (line {off.line})" if off.line is not None else "")
        return (
            f"{self.source}: {where}, column '{off.column}': {_REASON_TEXT[reason]} "
            f"(value {off.value!r}); {self.dropped[reason]} row(s) dropped for this reason"
        )


@dataclass
class Transactions:
    """A checked transaction log.

    ``frame`` has the columns ``customer_id`` and ``item_id`` (categorical,
    with sorted text categories: millions of rows hold a few hundred thousand
    ids, and codes make grouping and indexing cheap), ``timestamp``
    (datetime64, naive UTC), ``quantity`` and ``price`` (float; price NaN where
    unknown), ``event`` (categorical text) and ``weight`` (the event's weight),
    sorted by time. Categories can include ids whose rows were all dropped.
    """

    frame: pd.DataFrame
    report: ValidationReport
    has_events: bool = False
    future: pd.DataFrame | None = None
    """Otherwise valid rows after ``--as-of`` (counted as dropped): what
    happened next, for a backtest of the model trained as of that day."""

    @property
    def purchases(self) -> pd.DataFrame:
        """Rows that are purchases (all rows when the log has no event column)."""
        if not self.has_events:
            return self.frame
        return self.frame[self.frame["event"].isin(PURCHASE_EVENTS)]

    def fingerprint(self) -> dict[str, Any]:
        """Rows, customers, items, time range and a content hash, for the manifest."""
        f = self.frame
        h = hashlib.sha256()
        h.update(pd.util.hash_pandas_object(f[["customer_id", "item_id"]], index=False).values)
        h.update(f["timestamp"].values.astype("datetime64[s]").astype(np.int64).tobytes())
        h.update(f["quantity"].to_numpy(dtype=np.float64).tobytes())
        h.update(np.nan_to_num(f["price"].to_numpy(dtype=np.float64), nan=-1.0).tobytes())
        h.update(f["weight"].to_numpy(dtype=np.float64).tobytes())
        h.update(pd.util.hash_pandas_object(f["event"], index=False).values)
        return {
            "rows": int(len(f)),
            "customers": int(f["customer_id"].nunique()),
            "items": int(f["item_id"].nunique()),
            "time_min": _iso(f["timestamp"].min()) if len(f) else None,
            "time_max": _iso(f["timestamp"].max()) if len(f) else None,
            "sha256": h.hexdigest(),
        }


def _iso(ts: Any) -> str:
    return pd.Timestamp(ts).isoformat()


def parse_column_map(spec: str | None) -> dict[str, str]:
    """Parse ``customer_id=CustomerID,item_id=StockCode`` into a mapping.

    Raises
    ------
    DataError
        If an entry is malformed or names an unknown canonical column.
    """
    if not spec:
        return {}
    mapping: dict[str, str] = {}
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS) | set(CATALOG_COLUMNS)
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise DataError(f"--columns entry {part!r} is not of the form canonical=source")
        canonical, source = (s.strip() for s in part.split("=", 1))
        if canonical not in known:
            raise DataError(
                f"--columns names unknown column {canonical!r}; known: {', '.join(sorted(known))}"
            )
        mapping[canonical] = source
    return mapping


def parse_event_weights(spec: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """Parse ``view=0.1,cart=0.5,purchase=1`` into a mapping of event weights."""
    if spec is None or isinstance(spec, Mapping):
        return dict(spec) if spec is not None else None
    weights: dict[str, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise DataError(f"event weight {part!r} is not of the form event=number") from None
        if not np.isfinite(weights[name.strip()]) or weights[name.strip()] < 0:
            raise DataError(f"event weight {part!r} must be a non-negative number")
    return weights


def read_table(path: str | Path, what: str = "transaction log") -> tuple[pd.DataFrame, bool]:
    """Read CSV, gzipped CSV or Parquet with every column as text.

    Returns the frame and whether rows map to file lines (CSV with a header).

    Raises
    ------
    DataError
        If the file is missing, empty, binary or not a table.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a {what} file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".parquet", ".pq")):
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DataError(f"{path}: not a readable Parquet file ({_short(exc)})") from None
        return frame, False
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head[:2] != b"\x1f\x8b" and (b"\x00" in head or _looks_binary(head)):
        raise DataError(f"{path}: looks like a binary file, not a CSV {what}")
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        # Read every column as text so that validation, not the reader, decides
        # what is malformed and can name the row.
        first = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16))
        names = first.schema.names
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
        frame = table.to_pandas()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable CSV {what} ({_short(exc)})") from None
    if len(frame.columns) == 0:
        raise DataError(f"{path}: the file has no columns")
    return frame, True


def _looks_binary(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the 4 KiB boundary is not binary.
        return exc.start < len(head) - 4
    return False


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _resolve_columns(
    frame: pd.DataFrame, mapping: Mapping[str, str], wanted: Sequence[str], source: str
) -> dict[str, str]:
    """Map canonical names to the frame's columns (explicit mapping, then case-insensitive)."""
    present = {str(c).strip(): c for c in frame.columns}
    lower = {k.lower(): v for k, v in present.items()}
    resolved: dict[str, str] = {}
    for canonical in wanted:
        if canonical in mapping:
            src = mapping[canonical]
            if src not in present:
                raise DataError(
                    f"{source}: --columns maps {canonical} to {src!r}, which is not a column; "
                    f"columns found: {', '.join(map(str, frame.columns))}"
                )
            resolved[canonical] = present[src]
        elif canonical in lower:
            resolved[canonical] = lower[canonical]
    return resolved


def _null_mask(values: pd.Series) -> np.ndarray:
    stripped = values.str.strip()
    return stripped.isin(_NULL_STRINGS).to_numpy() | stripped.isna().to_numpy()


def parse_timestamps(values: pd.Series, time_format: str | None = None) -> pd.Series:
    """Parse times to naive UTC ``datetime64[ns]``; unparseable values become NaT.

    Accepts ISO-8601 dates and datetimes (offsets are converted to UTC), epoch
    seconds, and columns that are already datetimes (from Parquet);
    ``time_format`` (a strftime pattern) parses anything else.
    """
    if pd.api.types.is_datetime64_any_dtype(values):
        if getattr(values.dt, "tz", None) is not None:
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        return _to_ns(values)
    if pd.api.types.is_numeric_dtype(values):
        secs = values.to_numpy(dtype=np.float64, na_value=np.nan)
        secs = np.where(np.abs(secs) < 1e11, secs, np.nan)  # beyond year 5000 is not a time
        return pd.Series(pd.to_datetime(secs, unit="s", errors="coerce"), index=values.index)
    text = values.astype("string").str.strip()
    if time_format:
        out = pd.to_datetime(text, format=time_format, errors="coerce", utc=True)
        return _to_ns(out.dt.tz_localize(None))
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=True)
    result = _to_ns(parsed.dt.tz_localize(None))
    failed = result.isna().to_numpy() & text.notna().to_numpy()
    if failed.any():
        # ISO-8601 never matches a bare number, so the rest may be epoch seconds.
        numeric = pd.to_numeric(text[failed], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        numeric = np.where(np.abs(numeric) < 1e11, numeric, np.nan)
        epoch = pd.to_datetime(numeric, unit="s", errors="coerce")
        result.loc[failed] = np.asarray(epoch, dtype="datetime64[ns]")
    return result


_NS_MIN = pd.Timestamp.min.as_unit("us")
_NS_MAX = pd.Timestamp.max.as_unit("us")


def _to_ns(values: pd.Series) -> pd.Series:
    """Cast to ``datetime64[ns]``; times outside 1677-2262 (placeholders such as
    9999-12-31) become NaT, so they are counted as unparseable, not raised."""
    ok = values.isna() | ((values >= _NS_MIN) & (values <= _NS_MAX))
    return values.where(ok).astype("datetime64[ns]")


def _as_text(values: pd.Series) -> pd.Series:
    """A column as stripped text (numbers from Parquet become their decimal form)."""
    if pd.api.types.is_float_dtype(values):
        # 17850.0 -> "17850": ids stored as floats (a NaN forced the dtype) read as integers
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(arr) & (arr == np.round(arr))
        out = values.astype("string")
        out[whole] = pd.Series(arr[whole].astype(np.int64), index=values.index[whole]).astype(
            "string"
        )
        return out.str.strip()
    text = values.astype("string").str.strip()
    # A whole column of "17850.0" is integer ids that went through a float
    # (pandas writes a NaN-holding int column that way): read them as "17850",
    # the same as the typed Parquet path above.
    sample = text[~_null_mask(text)]
    if len(sample) and sample.str.fullmatch(r"-?\d+\.0+").all():
        text = text.str.replace(r"\.0+$", "", regex=True)
    return text


def _as_categories(values: pd.Series, lower: bool = False) -> tuple[pd.Categorical, np.ndarray]:
    """A column as a categorical of stripped text, and a per-row mask of empty cells.

    The text rules of :func:`_as_text` run on the distinct values only, so a
    log of millions of rows with a few hundred thousand ids is cheap to check;
    distinct raw values that are equal once stripped ("A1 " and "A1") become
    one category. Categories are sorted.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        codes = values.cat.codes.to_numpy().astype(np.int64)
        uniques = pd.Series(values.cat.categories)
    else:
        raw_codes, raw_uniques = pd.factorize(values, use_na_sentinel=True)
        codes = raw_codes.astype(np.int64)
        uniques = pd.Series(raw_uniques)
    text = _as_text(uniques)
    if lower:
        text = text.str.lower()
    empty = _null_mask(text)
    norm_codes, categories = pd.factorize(text.mask(empty), sort=True, use_na_sentinel=True)
    norm_codes = np.append(norm_codes.astype(np.int64), -1)  # row code -1 (NaN) stays -1
    row_codes = norm_codes[codes]
    cat = pd.Categorical.from_codes(
        row_codes,
        categories=pd.Index(categories).astype("str"),
        validate=False,  # codes come from factorize: -1 .. len(categories) - 1
    )
    return cat, row_codes < 0


def _id_unusable(ids: pd.Categorical) -> np.ndarray:
    """Rows whose id is longer than any real id (a text field in the wrong
    column) or has control characters (binary junk; no request could name it)."""
    cats = ids.categories.str
    too_long = np.asarray(cats.len() > _MAX_ID_LENGTH, dtype=bool)
    control = np.asarray(cats.contains(r"[\x00-\x1f\x7f-\x9f]", regex=True), dtype=bool)
    return np.append(too_long | control, False)[ids.codes]


def _as_number(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """(numbers as float64 with NaN for unparseable, mask of empty cells)."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        num = values.astype("float64")
        return num, values.isna().to_numpy()
    text = values.astype("string").str.strip()
    return pd.to_numeric(text, errors="coerce").astype("float64"), _null_mask(text)


def load_transactions(
    path: str | Path,
    *,
    columns: Mapping[str, str] | None = None,
    as_of: str | pd.Timestamp | None = None,
    strict: bool = False,
    event_weights: Mapping[str, float] | None = None,
    time_format: str | None = None,
) -> Transactions:
    """Load and check a transaction log.

    Parameters
    ----------
    path
        CSV, ``.csv.gz`` or Parquet file.
    columns
        ``{canonical: source}`` names for columns that are not named canonically.
    as_of
        Keep only rows up to the end of this day (train as if it were today).
    strict
        Raise on the first kind of dropped row instead of counting it.
    event_weights
        Weight of each event type when the log has an ``event`` column; events
        not listed are dropped as ``unknown_event``. Defaults to purchases 1.0,
        carts 0.5, views 0.1.
    time_format
        strftime pattern for times that are neither ISO-8601 nor epoch seconds.

    Raises
    ------
    DataError
        If the file is not a transaction log, or ``strict`` and a row is bad.
    """
    source = str(path)
    raw, has_lines = read_table(path)
    return validate_transactions(
        raw,
        source=source,
        columns=columns,
        as_of=as_of,
        strict=strict,
        event_weights=event_weights,
        time_format=time_format,
        has_lines=has_lines,
    )


def validate_transactions(
    raw: pd.DataFrame,
    *,
    source: str = "<frame>",
    columns: Mapping[str, str] | None = None,
    as_of: str | pd.Timestamp | None = None,
    strict: bool = False,
    event_weights: Mapping[str, float] | None = None,
    time_format: str | None = None,
    has_lines: bool = False,
) -> Transactions:
    """Check an all-text frame of transactions; see :func:`load_transactions`."""
    mapping = dict(columns or {})
    resolved = _resolve_columns(raw, mapping, REQUIRED_COLUMNS + OPTIONAL_COLUMNS, source)
    missing = [c for c in REQUIRED_COLUMNS if c not in resolved]
    if missing:
        found = ", ".join(map(str, raw.columns[:12])) + (" ..." if len(raw.columns) > 12 else "")
        raise DataError(
            f"{source}: not a transaction log: missing column(s) {', '.join(missing)}; "
            f"columns found: {found}; map yours with --columns "
            + ",".join(f"{m}=YourColumn" for m in missing)
        )
    report = ValidationReport(source=source, rows_read=len(raw))
    if len(raw) == 0:
        raise DataError(f"{source}: the transaction log has a header but no rows")

    def col(name: str) -> pd.Series:
        return raw[resolved[name]]

    n = len(raw)
    reason = np.full(n, -1, dtype=np.int8)  # index into DROP_REASONS, -1 = kept

    def mark(mask: np.ndarray, name: str) -> None:
        fresh = mask & (reason < 0)
        reason[fresh] = DROP_REASONS.index(name)

    cust, cust_empty = _as_categories(col("customer_id"))
    item, item_empty = _as_categories(col("item_id"))
    mark(cust_empty, "missing_customer_id")
    mark(item_empty, "missing_item_id")
    mark(_id_unusable(cust), "missing_customer_id")
    mark(_id_unusable(item), "missing_item_id")

    ts = parse_timestamps(col("timestamp"), time_format)
    mark(ts.isna().to_numpy(), "unparseable_timestamp")

    if "quantity" in resolved:
        qty, qnull = _as_number(col("quantity"))
        qty = qty.where(~qnull, 1.0)  # an empty quantity means one unit
        qv = qty.to_numpy(dtype=np.float64, na_value=np.nan)
        mark(~np.isfinite(qv), "unparseable_quantity")
        mark(qv <= 0, "non_positive_quantity")
    else:
        qty = pd.Series(np.ones(n), index=raw.index)

    if "price" in resolved:
        price, pnull = _as_number(col("price"))
        pv = price.to_numpy(dtype=np.float64, na_value=np.nan)
        mark(~pnull & (~np.isfinite(pv) | (pv < 0)), "invalid_price")
        price = price.where(~pnull, np.nan)
    else:
        price = pd.Series(np.full(n, np.nan), index=raw.index)

    has_events = "event" in resolved
    if has_events:
        weights = {
            str(k).strip().lower(): float(v)
            for k, v in (
                event_weights
                if event_weights is not None
                else {"purchase": 1.0, "order": 1.0, "cart": 0.5, "view": 0.1}
            ).items()
        }
        event, _ = _as_categories(col("event"), lower=True)
        known = np.append(event.categories.isin(list(weights)), False)
        mark(~known[event.codes], "unknown_event")
        cat_weight = np.array([weights.get(c, 0.0) for c in event.categories] + [0.0])
        weight = pd.Series(cat_weight[event.codes], index=raw.index)
    else:
        event = pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=["purchase"])
        weight = pd.Series(np.ones(n), index=raw.index)

    cutoff = None
    if as_of is not None:
        cutoff = as_of_cutoff(as_of)
        mark((ts >= cutoff).fillna(False).to_numpy(), "after_as_of")

    # Exact duplicates of the mapped columns. A row that repeats an earlier
    # one gets the same reason as it from every check above, so only rows
    # still kept need comparing, in time order (needed for the frame anyway).
    ns = ts.to_numpy(dtype="datetime64[ns]").view(np.int64)
    ok = np.flatnonzero(reason < 0)
    by_time = ok[_time_order(ns[ok])]
    duplicate = _duplicate_rows(raw[list(dict.fromkeys(resolved.values()))], ns, by_time)
    mark(duplicate, "duplicate")

    counts = np.bincount(reason[reason >= 0], minlength=len(DROP_REASONS))
    for idx, name in enumerate(DROP_REASONS):
        report.dropped[name] = int(counts[idx])
        if counts[idx]:
            hits = np.flatnonzero(reason == idx)
            first = int(hits[0])
            column = _REASON_COLUMN[name]
            source_col = resolved.get(column, column) if column != "*" else "(all columns)"
            value = "" if column == "*" else str(raw[resolved[column]].iloc[first])
            report.first_offence[name] = Offence(
                row=first + 1,
                line=first + 2 if has_lines else None,
                column=str(source_col),
                value=value[:80],
            )

    keep = reason < 0
    report.rows_kept = int(keep.sum())
    if strict and report.rows_dropped:
        first_reason = min(report.first_offence, key=lambda r: report.first_offence[r].row)
        raise DataError(report.describe(first_reason) + " (--strict)")
    if report.rows_kept == 0:
        worst = max(report.dropped, key=lambda r: report.dropped[r])
        raise DataError(
            f"{source}: no usable rows: all {n} rows were dropped; "
            f"most for '{worst}': {report.describe(worst)}"
        )

    clean: dict[str, Any] = {
        "customer_id": cust,
        "item_id": item,
        "timestamp": ns.view("datetime64[ns]"),
        "quantity": qty.to_numpy(dtype=np.float64),
        "price": price.to_numpy(dtype=np.float64, na_value=np.nan),
        "event": event,
        "weight": weight.to_numpy(dtype=np.float64),
    }

    def build(rows: np.ndarray) -> pd.DataFrame:
        """The given rows (in time order), clean and typed."""
        # Taking the rows of a log not in time order waits on memory, not on
        # the interpreter, so two threads take the columns side by side.
        with ThreadPoolExecutor(2, thread_name_prefix="encore-load") as pool:
            taken = pool.map(lambda col: col[rows], clean.values())
            # the columns are fresh arrays: no copy, and no stacking of the
            # float columns into one block
            return pd.DataFrame(dict(zip(clean, taken, strict=True)), copy=False)

    frame = build(by_time[~duplicate[by_time]])
    later = np.flatnonzero(reason == DROP_REASONS.index("after_as_of"))
    future = build(later[_time_order(ns[later])]) if later.size else None
    return Transactions(frame=frame, report=report, has_events=has_events, future=future)


def _duplicate_rows(cells: pd.DataFrame, ns: np.ndarray, by_time: np.ndarray) -> np.ndarray:
    """Mask of the rows among ``by_time`` (row numbers sorted by time, ties in
    file order) whose ``cells`` equal an earlier row's.

    Equal rows parse to the same time, so only rows that share their time
    with another are compared, through a 64-bit hash of their raw cells (much
    faster than comparing text), instead of hashing every row.
    """
    out = np.zeros(len(cells), dtype=bool)
    t = ns[by_time]
    tie = t[1:] == t[:-1]
    shared = np.zeros(t.size, dtype=bool)
    shared[1:] |= tie
    shared[:-1] |= tie
    rows = np.sort(by_time[shared])
    if rows.size:
        row_hash = pd.util.hash_pandas_object(cells.iloc[rows], index=False)
        out[rows[row_hash.duplicated(keep="first").to_numpy()]] = True
    return out


def _time_order(ns: np.ndarray) -> slice | np.ndarray:
    """Stable order of ``ns`` (int64 times); ties keep file order.

    Logs are usually written in time order already: no sort then. Otherwise,
    when the times are whole seconds (or finer, over a short span) and
    ``span * rows`` fits in int64, one plain sort of ``time * rows + row``
    (distinct keys, so stable by construction) is about twice as fast as a
    stable argsort.
    """
    if ns.size < 2 or (ns[1:] >= ns[:-1]).all():
        return slice(None)
    offset = ns - ns.min()
    n = ns.size
    for unit in (10**9, 1):
        if unit == 1 or not (offset % unit).any():
            span = int(offset.max()) // unit + 1
            if span * n < 2**63:
                keys = np.sort(offset // unit * n + np.arange(n))
                return keys % n
    return np.argsort(ns, kind="stable")


def as_of_cutoff(as_of: str | pd.Timestamp) -> pd.Timestamp:
    """The first instant after ``as_of``: the end of the day for a date.

    Raises
    ------
    DataError
        If ``as_of`` is not a date.
    """
    try:
        ts = pd.Timestamp(as_of)
    except (ValueError, TypeError):
        raise DataError(f"--as-of {as_of!r} is not a date (use YYYY-MM-DD)") from None
    if ts is pd.NaT or pd.isna(ts):
        raise DataError(f"--as-of {as_of!r} is not a date (use YYYY-MM-DD)")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if ts == ts.normalize() and (not isinstance(as_of, str) or len(as_of.strip()) <= 10):
        return ts + pd.Timedelta(days=1)
    return ts


def load_catalog(
    path: str | Path, *, columns: Mapping[str, str] | None = None, strict: bool = False
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Load an item catalog with ``item_id`` and any of title, category, price, available.

    Returns the catalog (one row per item id, text columns filled with ``""``,
    price NaN where unknown, available True where unknown) and a report of
    rows dropped (missing or duplicate item ids).

    Raises
    ------
    DataError
        If the file has no ``item_id`` column, or ``strict`` and a row is bad.
    """
    source = str(path)
    raw, has_lines = read_table(path, what="item catalog")
    # --columns is written for the transaction log; apply the entries that name
    # a column of this file and fall back to canonical names for the rest.
    present = {str(c).strip() for c in raw.columns}
    mapping = {k: v for k, v in dict(columns or {}).items() if v in present}
    resolved = _resolve_columns(raw, mapping, CATALOG_COLUMNS, source)
    if "item_id" not in resolved:
        raise DataError(
            f"{source}: not an item catalog: missing column item_id; columns found: "
            f"{', '.join(map(str, raw.columns[:12]))}; map yours with --columns item_id=YourColumn"
        )
    ids = raw[resolved["item_id"]].astype("string").str.strip()
    missing = _null_mask(ids)
    dup = ids.duplicated(keep="first").to_numpy() & ~missing
    report = {
        "source": source,
        "rows_read": int(len(raw)),
        "dropped": {"missing_item_id": int(missing.sum()), "duplicate_item_id": int(dup.sum())},
    }
    if strict and (missing.any() or dup.any()):
        first = int(np.flatnonzero(missing | dup)[0])
        name = "missing item id" if missing[first] else "duplicate item id"
        line = f" (line {first + 2})" if has_lines else ""
        raise DataError(
            f"{source}: row {first + 1}{line}, column '{resolved['item_id']}': {name} (--strict)"
        )
    keep = ~(missing | dup)
    out = pd.DataFrame({"item_id": ids[keep].astype(str).to_numpy()})
    for name in ("title", "category"):
        if name in resolved:
            values = raw[resolved[name]].astype("string").str.strip()[keep]
            out[name] = values.fillna("").astype(str).to_numpy()
        else:
            out[name] = ""
    if "price" in resolved:
        out["price"] = pd.to_numeric(raw[resolved["price"]][keep], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
    else:
        out["price"] = np.nan
    if "available" in resolved:
        text = raw[resolved["available"]].astype("string").str.strip().str.lower()[keep]
        out["available"] = ~text.isin(["0", "false", "no", "n", "f"]).to_numpy(na_value=False)
    else:
        out["available"] = True
    report["rows_kept"] = int(len(out))
    return out, report
