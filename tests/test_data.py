"""The data contract: loading, checking and fingerprinting transaction logs and catalogs."""

from __future__ import annotations

import gzip
import shutil
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recommender.data.ids import IdIndex
from recommender.data.transactions import (
    DROP_REASONS,
    DataError,
    as_of_cutoff,
    load_catalog,
    load_transactions,
    parse_column_map,
    parse_event_weights,
    validate_transactions,
)

BAD = Path(__file__).parent / "data" / "bad"
ALL_REASONS = BAD / "all_reasons.csv"

# reason -> (count, first data row, first file line, column, value) in all_reasons.csv
EXPECTED_DROPS = {
    "missing_customer_id": (2, 3, 4, "customer_id", ""),
    "missing_item_id": (1, 4, 5, "item_id", ""),
    "unparseable_timestamp": (1, 5, 6, "timestamp", "not-a-time"),
    "unparseable_quantity": (1, 6, 7, "quantity", "three"),
    "non_positive_quantity": (2, 7, 8, "quantity", "-1"),
    "invalid_price": (1, 8, 9, "price", "-5"),
    "unknown_event": (1, 9, 10, "event", "teleport"),
    "after_as_of": (1, 10, 11, "timestamp", "2025-06-01"),
    "duplicate": (1, 11, 12, "(all columns)", ""),
}


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


# --- every drop reason -------------------------------------------------------------


def test_fixture_covers_every_drop_reason():
    assert set(EXPECTED_DROPS) == set(DROP_REASONS)


def test_every_drop_reason_is_counted_with_first_row_line_and_column():
    tx = load_transactions(ALL_REASONS, as_of="2024-12-31")
    rep = tx.report
    assert rep.rows_read == 15
    for reason, (count, row, line, column, value) in EXPECTED_DROPS.items():
        assert rep.dropped[reason] == count, reason
        off = rep.first_offence[reason]
        assert (off.row, off.line, off.column, off.value) == (row, line, column, value), reason
    assert rep.rows_dropped == 11
    assert rep.rows_kept == 4 == len(tx.frame)
    assert rep.rows_read == rep.rows_kept + rep.rows_dropped
    # the manifest form carries the same numbers
    d = rep.to_dict()
    assert d["dropped"] == {r: c[0] for r, c in EXPECTED_DROPS.items()}
    assert d["first_offence"]["unparseable_quantity"] == {
        "row": 6,
        "line": 7,
        "column": "quantity",
        "value": "three",
    }
    # the kept rows are exactly the four good ones, sorted by time
    kept = list(zip(tx.frame["customer_id"], tx.frame["item_id"], tx.frame["event"], strict=True))
    assert kept == [
        ("c1", "i1", "purchase"),
        ("c3", "i3", "view"),
        ("c1", "i2", "purchase"),
        ("c3", "i2", "cart"),
    ]
    # the row after --as-of is kept aside for backtests, not lost
    assert tx.future is not None and tx.future["item_id"].tolist() == ["i3"]


def test_describe_names_row_line_column_and_value():
    rep = load_transactions(ALL_REASONS, as_of="2024-12-31").report
    text = rep.describe("invalid_price")
    assert "row 8 (line 9)" in text and "column 'price'" in text and "'-5'" in text
    assert "\n" not in text


def test_strict_names_the_first_offending_row_and_column():
    with pytest.raises(DataError) as exc:
        load_transactions(ALL_REASONS, as_of="2024-12-31", strict=True)
    msg = _one_line(exc)
    assert "row 3 (line 4)" in msg and "column 'customer_id'" in msg and "--strict" in msg


def test_strict_names_a_later_row_when_the_early_ones_are_clean(tmp_path):
    p = tmp_path / "one_bad.csv"
    p.write_text(
        "customer_id,item_id,timestamp,quantity\n"
        "a,x,2024-01-01,1\n"
        "b,y,2024-01-02,1\n"
        "c,z,2024-01-03,-2\n"
        "d,z,2024-01-04,1\n"
    )
    with pytest.raises(DataError) as exc:
        load_transactions(p, strict=True)
    msg = _one_line(exc)
    assert "row 3 (line 4)" in msg and "column 'quantity'" in msg and "'-2'" in msg
    # without --strict the same file loads with the row counted
    tx = load_transactions(p)
    assert tx.report.dropped["non_positive_quantity"] == 1 and tx.report.rows_kept == 3


def test_ids_no_request_could_name_are_counted_as_missing(tmp_path):
    """Over 256 characters or with control characters: counted, not stored
    (serving refuses exactly these); spaces and accents are ordinary ids."""
    frame = pd.DataFrame(
        {
            "customer_id": ["Zoë Martin", "tab\there", "x" * 257, "ok", "ok"],
            "item_id": ["Café crème", "SKU 1", "SKU 1", "bell\x07", "SKU 1"],
            "timestamp": ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"],
        }
    )
    p = tmp_path / "ids.parquet"
    frame.to_parquet(p, index=False)
    tx = load_transactions(p)
    assert tx.report.dropped["missing_customer_id"] == 2
    assert tx.report.dropped["missing_item_id"] == 1
    assert tx.frame["customer_id"].astype(str).tolist() == ["Zoë Martin", "ok"]
    assert tx.frame["item_id"].astype(str).tolist() == ["Café crème", "SKU 1"]
    assert tx.report.first_offence["missing_customer_id"].row == 2


def test_every_row_bad_is_an_error_even_without_strict(tmp_path):
    p = tmp_path / "all_bad.csv"
    p.write_text("customer_id,item_id,timestamp\n,x,2024-01-01\n,y,2024-01-02\n")
    with pytest.raises(DataError) as exc:
        load_transactions(p)
    assert "no usable rows" in _one_line(exc)


def test_empty_quantity_means_one_unit_and_empty_price_unknown(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("customer_id,item_id,timestamp,quantity,price\na,x,2024-01-01,,\n")
    f = load_transactions(p).frame
    assert f["quantity"].tolist() == [1.0] and np.isnan(f["price"].iloc[0])


# --- as-of ------------------------------------------------------------------------


def test_as_of_keeps_the_whole_day_and_drops_the_next(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "customer_id,item_id,timestamp\n"
        "a,x,2024-01-03T23:59:59\n"
        "a,y,2024-01-04T00:00:00\n"
        "b,x,2024-01-02\n"
    )
    tx = load_transactions(p, as_of="2024-01-03")
    assert sorted(tx.frame["item_id"]) == ["x", "x"]
    assert tx.report.dropped["after_as_of"] == 1
    assert tx.report.first_offence["after_as_of"].line == 3
    assert as_of_cutoff("2024-01-03") == pd.Timestamp("2024-01-04")
    # a datetime is an exact instant, not a day
    assert as_of_cutoff("2024-01-03T12:00:00") == pd.Timestamp("2024-01-03T12:00:00")
    with pytest.raises(DataError):
        as_of_cutoff("yesterday-ish")


# --- --columns on a UCI Online Retail export -------------------------------------

UCI_CSV = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,United Kingdom
536365,71053,"WHITE METAL LANTERN, LARGE",6,2010-12-01 08:26:00,3.39,17850,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,17850,United Kingdom
536367,84879,ASSORTED COLOUR BIRD ORNAMENT,32,2010-12-01 08:34:00,1.69,13047,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527,United Kingdom
536414,22139,,56,2010-12-01 11:52:00,0,,United Kingdom
C536383,35004C,SET OF 3 COLOURED  FLYING DUCKS,-1,2010-12-01 09:49:00,4.65,15311,United Kingdom
536544,21773,DECORATIVE ROSE BATHROOM BOTTLE,1,2010-12-01 14:32:00,2.51,,United Kingdom
536368,22960,JAM MAKING SET WITH JARS,6,2010-12-01 08:34:00,4.25,13047,United Kingdom
"""

UCI_MAP = (
    "customer_id=CustomerID,item_id=StockCode,timestamp=InvoiceDate,"
    "quantity=Quantity,price=UnitPrice"
)


def test_uci_online_retail_layout_loads_with_columns(tmp_path):
    p = tmp_path / "online_retail.csv"
    p.write_text(UCI_CSV)
    # without a mapping: a clear error that says how to map
    with pytest.raises(DataError) as exc:
        load_transactions(p)
    msg = _one_line(exc)
    assert "customer_id" in msg and "--columns" in msg and "CustomerID" in msg
    tx = load_transactions(p, columns=parse_column_map(UCI_MAP))
    rep = tx.report
    assert rep.rows_read == 9
    assert rep.dropped["missing_customer_id"] == 2
    assert rep.dropped["non_positive_quantity"] == 2
    assert rep.rows_dropped == 4 and rep.rows_kept == 5
    # offences name the user's columns, not the canonical ones
    assert rep.first_offence["missing_customer_id"].column == "CustomerID"
    assert rep.first_offence["missing_customer_id"].line == 7
    assert rep.first_offence["non_positive_quantity"].column == "Quantity"
    assert rep.first_offence["non_positive_quantity"].value == "-1"
    f = tx.frame
    assert set(f["customer_id"]) == {"17850", "13047"}
    assert f["item_id"].tolist()[:2] == ["85123A", "71053"]
    assert f["timestamp"].iloc[0] == pd.Timestamp("2010-12-01 08:26:00")
    assert f["quantity"].tolist() == [6, 6, 6, 32, 6]
    assert f["price"].tolist() == [2.55, 3.39, 1.85, 1.69, 4.25]


def test_column_map_errors_are_one_line(tmp_path):
    p = tmp_path / "online_retail.csv"
    p.write_text(UCI_CSV)
    with pytest.raises(DataError) as exc:
        load_transactions(p, columns=parse_column_map("customer_id=Customer"))
    assert "'Customer'" in _one_line(exc)
    with pytest.raises(DataError):
        parse_column_map("customer_id")
    with pytest.raises(DataError):
        parse_column_map("shopper=CustomerID")


def test_uci_ids_are_the_same_from_csv_and_parquet_written_by_pandas(tmp_path):
    # pandas writes CustomerID (float because of the missing ids) as 17850.0 in a CSV
    raw = pd.read_csv(pd.io.common.StringIO(UCI_CSV))
    assert raw["CustomerID"].dtype == np.float64
    raw.to_csv(tmp_path / "r.csv", index=False)
    raw.to_parquet(tmp_path / "r.parquet")
    cols = parse_column_map(UCI_MAP)
    a = load_transactions(tmp_path / "r.csv", columns=cols).frame
    b = load_transactions(tmp_path / "r.parquet", columns=cols).frame
    assert sorted(set(b["customer_id"])) == ["13047", "17850"]
    assert sorted(set(a["customer_id"])) == sorted(set(b["customer_id"]))


# --- formats and times ------------------------------------------------------------


@pytest.mark.parametrize("when", ["9999-12-31", "1500-01-01"])
def test_dates_beyond_the_representable_range_are_counted_not_raised(tmp_path, when):
    p = tmp_path / "t.csv"
    p.write_text(f"customer_id,item_id,timestamp\na,x,2024-01-01\nb,y,{when}\n")
    tx = load_transactions(p)
    assert tx.report.dropped["unparseable_timestamp"] == 1
    assert tx.report.first_offence["unparseable_timestamp"].line == 3


def _good_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": ["c1", "c2", "c1", "c3"],
            "item_id": ["i1", "i2", "i3", "i1"],
            "timestamp": ["2024-01-01", "2024-01-02T10:00:00", "2024-01-03 11:30:00", "2024-01-04"],
            "quantity": ["1", "2", "1", "5"],
            "price": ["1.5", "", "2", "0"],
        }
    )


def test_gzip_and_parquet_give_the_same_frame_as_csv(tmp_path):
    raw = _good_frame()
    csv = tmp_path / "t.csv"
    raw.to_csv(csv, index=False)
    with open(csv, "rb") as src, gzip.open(tmp_path / "t.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.to_parquet(tmp_path / "t.parquet")
    typed = raw.assign(
        timestamp=pd.to_datetime(raw["timestamp"], format="ISO8601"),
        quantity=raw["quantity"].astype(int),
        price=pd.to_numeric(raw["price"]),
    )
    typed.to_parquet(tmp_path / "typed.parquet")
    ref = load_transactions(csv)
    assert ref.report.rows_kept == 4
    for name in ("t.csv.gz", "t.parquet", "typed.parquet"):
        other = load_transactions(tmp_path / name)
        pd.testing.assert_frame_equal(other.frame, ref.frame, check_dtype=True, obj=name)
        assert other.fingerprint() == ref.fingerprint(), name
    # Parquet rows have no file lines to name
    assert load_transactions(tmp_path / "t.parquet").report.first_offence == {}


def test_epoch_seconds_and_iso_datetimes_with_offsets(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "customer_id,item_id,timestamp\n"
        "a,x,1704067200\n"  # 2024-01-01T00:00:00Z
        "b,x,2024-02-01T08:00:00+02:00\n"
        "c,x,2024-02-01T08:00:00-05:30\n"
        "d,x,2024-03-01T12:00:00Z\n"
        "e,x,2010-12-01 08:26:00\n"
        "f,x,2024-03-02\n"
    )
    f = load_transactions(p, as_of="2030-01-01").frame.set_index("customer_id")["timestamp"]
    assert f["a"] == pd.Timestamp("2024-01-01 00:00:00")
    assert f["b"] == pd.Timestamp("2024-02-01 06:00:00")
    assert f["c"] == pd.Timestamp("2024-02-01 13:30:00")
    assert f["d"] == pd.Timestamp("2024-03-01 12:00:00")
    assert f["e"] == pd.Timestamp("2010-12-01 08:26:00")
    assert f["f"] == pd.Timestamp("2024-03-02")
    assert f.dt.tz is None


def test_epoch_seconds_in_a_parquet_integer_column(tmp_path):
    pd.DataFrame(
        {"customer_id": [1, 2], "item_id": [10, 11], "timestamp": [1704067200, 1704153600]}
    ).to_parquet(tmp_path / "t.parquet")
    f = load_transactions(tmp_path / "t.parquet").frame
    assert f["timestamp"].tolist() == [pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-02")]
    assert f["customer_id"].tolist() == ["1", "2"] and f["item_id"].tolist() == ["10", "11"]


def test_time_format_for_the_original_uci_dates(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("customer_id,item_id,timestamp\na,x,12/1/2010 8:26\nb,y,13/45/2010 8:26\n")
    tx = load_transactions(p, time_format="%m/%d/%Y %H:%M")
    assert tx.frame["timestamp"].tolist() == [pd.Timestamp("2010-12-01 08:26")]
    assert tx.report.dropped["unparseable_timestamp"] == 1


# --- files that are not transaction logs -------------------------------------------


def _zip_bytes() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>" * 50)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("wrong.csv", b"a,b,c\n1,2,3\n", "missing column(s) customer_id, item_id, timestamp"),
        ("half.csv", b"customer_id,sku\n1,2\n", "missing column(s) item_id, timestamp"),
        ("img.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary"),
        ("online_retail.xlsx", _zip_bytes(), "binary"),
        ("empty.csv", b"", "empty"),
        ("header_only.csv", b"customer_id,item_id,timestamp\n", "header but no rows"),
        ("blank_lines.csv", b"\n\n\n", "not a readable CSV"),
        ("t.parquet", b"PAR1 this is not really parquet PAR1", "not a readable Parquet"),
        ("t.csv.gz", b"\x1f\x8b\x08\x00garbage", "not a readable CSV"),
    ],
)
def test_not_a_transaction_log_is_a_one_line_data_error(tmp_path, name, content, fragment):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError) as exc:
        load_transactions(p)
    msg = _one_line(exc)
    assert fragment in msg
    assert str(p) in msg


def test_missing_file_directory_and_wrong_parquet_columns(tmp_path):
    with pytest.raises(DataError) as exc:
        load_transactions(tmp_path / "nope.csv")
    assert "no such file" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        load_transactions(tmp_path)
    assert "directory" in _one_line(exc)
    pd.DataFrame({"user": ["a"], "sku": ["b"]}).to_parquet(tmp_path / "w.parquet")
    with pytest.raises(DataError) as exc:
        load_transactions(tmp_path / "w.parquet")
    assert "missing column(s)" in _one_line(exc)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(blob=st.binary(min_size=0, max_size=300))
def test_arbitrary_bytes_are_loaded_or_refused_with_a_data_error(tmp_path, blob):
    p = tmp_path / "fuzz.csv"
    p.write_bytes(b"customer_id,item_id,timestamp\n" + blob if blob[:1] == b"+" else blob)
    try:
        tx = load_transactions(p)
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        rep = tx.report
        assert rep.rows_read == rep.rows_kept + rep.rows_dropped and rep.rows_kept > 0


# --- events -----------------------------------------------------------------------

EVENTS_CSV = (
    "customer_id,item_id,timestamp,event\n"
    "a,x,2024-01-01,view\n"
    "a,x,2024-01-02,cart\n"
    "a,x,2024-01-03,purchase\n"
    "b,y,2024-01-01,Purchase\n"
    "b,z,2024-01-02,wishlist\n"
)


def test_default_event_weights(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text(EVENTS_CSV)
    tx = load_transactions(p)
    assert tx.has_events
    w = dict(
        zip(
            tx.frame["event"].astype(str) + "/" + tx.frame["customer_id"].astype(str),
            tx.frame["weight"],
            strict=True,
        )
    )
    assert w == {"view/a": 0.1, "cart/a": 0.5, "purchase/a": 1.0, "purchase/b": 1.0}
    assert tx.report.dropped["unknown_event"] == 1
    assert tx.report.first_offence["unknown_event"].value == "wishlist"
    assert len(tx.purchases) == 2 and set(tx.purchases["event"]) == {"purchase"}


def test_configured_event_weights(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text(EVENTS_CSV)
    weights = parse_event_weights("view=0.2, purchase=1, wishlist=0.3")
    assert weights == {"view": 0.2, "purchase": 1.0, "wishlist": 0.3}
    tx = load_transactions(p, event_weights=weights)
    by_event = tx.frame.groupby("event")["weight"].first().to_dict()
    assert by_event == {"view": 0.2, "purchase": 1.0, "wishlist": 0.3}
    assert tx.report.dropped["unknown_event"] == 1  # cart is not configured
    assert tx.report.first_offence["unknown_event"].value == "cart"
    for bad in ("view=lots", "view=-1", "view=inf"):
        with pytest.raises(DataError):
            parse_event_weights(bad)


def test_event_weight_names_match_the_file_whatever_their_case(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text(
        "customer_id,item_id,timestamp,event\na,x,2024-01-01,PageView\na,y,2024-01-02,purchase\n"
    )
    tx = load_transactions(p, event_weights=parse_event_weights("PageView=0.1,purchase=1"))
    assert tx.report.dropped["unknown_event"] == 0
    assert sorted(tx.frame["weight"]) == [0.1, 1.0]


# --- catalog ----------------------------------------------------------------------


def test_catalog_loading(tmp_path):
    p = tmp_path / "items.csv"
    p.write_text(
        "sku,title,category,price,available\n"
        "i1,Mug,kitchen,4.5,yes\n"
        "i2,Pan,kitchen,,0\n"
        ",Ghost,none,1,1\n"
        "i1,Mug again,kitchen,5,1\n"
        "i3,,,abc,FALSE\n"
    )
    cat, rep = load_catalog(p, columns={"item_id": "sku"})
    assert cat["item_id"].tolist() == ["i1", "i2", "i3"]
    assert cat["title"].tolist() == ["Mug", "Pan", ""]
    assert cat["available"].tolist() == [True, False, False]
    assert cat["price"].iloc[0] == 4.5 and np.isnan(cat["price"].iloc[1])
    assert np.isnan(cat["price"].iloc[2])
    assert rep["rows_read"] == 5 and rep["rows_kept"] == 3
    assert rep["dropped"] == {"missing_item_id": 1, "duplicate_item_id": 1}
    with pytest.raises(DataError) as exc:
        load_catalog(p, columns={"item_id": "sku"}, strict=True)
    msg = _one_line(exc)
    assert "row 3 (line 4)" in msg and "'sku'" in msg
    # only item_id is required; the rest gets defaults
    q = tmp_path / "ids.csv"
    q.write_text("item_id\nz\n")
    cat, _ = load_catalog(q)
    row = cat.iloc[0].to_dict()
    assert np.isnan(row.pop("price"))
    assert row == {"item_id": "z", "title": "", "category": "", "available": True}
    with pytest.raises(DataError) as exc:
        load_catalog(p)
    assert "item_id" in _one_line(exc)


# --- fingerprint ------------------------------------------------------------------


def _tx(raw: pd.DataFrame):
    return validate_transactions(raw.astype(str), source="<test>")


def test_fingerprint_is_stable_and_describes_the_data(tmp_path):
    raw = _good_frame()
    raw.to_csv(tmp_path / "t.csv", index=False)
    a = load_transactions(tmp_path / "t.csv").fingerprint()
    b = load_transactions(tmp_path / "t.csv").fingerprint()
    assert a == b
    assert a["rows"] == 4 and a["customers"] == 3 and a["items"] == 3
    assert a["time_min"] == "2024-01-01T00:00:00" and a["time_max"] == "2024-01-04T00:00:00"
    assert len(a["sha256"]) == 64
    # rows in another order (distinct times) are the same data
    assert _tx(raw.iloc[::-1]).fingerprint() == _tx(raw).fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.assign(quantity=["1", "2", "1", "6"]),
        lambda r: r.assign(customer_id=["c1", "c2", "c1", "c4"]),
        lambda r: r.assign(item_id=["i1", "i2", "i3", "i2"]),
        lambda r: r.assign(
            timestamp=["2024-01-01", "2024-01-02T10:00:01", "2024-01-03", "2024-01-04"]
        ),
        lambda r: r.iloc[:3],
        lambda r: pd.concat([r, r.iloc[[0]].assign(timestamp="2024-01-05")]),
    ],
    ids=["quantity", "customer", "item", "time", "row removed", "row added"],
)
def test_fingerprint_changes_when_the_data_changes(change):
    raw = _good_frame()
    assert _tx(change(raw)).fingerprint()["sha256"] != _tx(raw).fingerprint()["sha256"]


def test_fingerprint_changes_when_an_event_type_changes():
    raw = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "item_id": ["x", "y"],
            "timestamp": ["2024-01-01", "2024-01-02"],
            "event": ["view", "purchase"],
        }
    )
    changed = raw.assign(event=["purchase", "purchase"])
    assert _tx(changed).fingerprint()["sha256"] != _tx(raw).fingerprint()["sha256"]


# --- id index ---------------------------------------------------------------------


def test_id_index_round_trip_and_unknown_ids():
    idx, codes = IdIndex.encode(["b", "a", "c", "a", "17850"])
    assert idx.ids_.tolist() == ["17850", "a", "b", "c"]  # sorted: deterministic rows
    assert codes.tolist() == [2, 1, 3, 1, 0]
    assert idx.rows(["c", "zzz", "a", ""]).tolist() == [3, -1, 1, -1]
    assert idx.rows(np.array([17850])).tolist() == [0]
    assert idx.row("b") == 2 and idx.row("nope") is None
    assert idx.id(3) == "c" and len(idx) == 4
    assert "a" in idx and "zzz" not in idx
    with pytest.raises(ValueError):
        IdIndex(["a", "a"])
    with pytest.raises(ValueError):
        IdIndex([["a"], ["b"]])


# NUL is left out: numpy's fixed-width str dtype drops trailing NULs, and no
# shop's export has them.
_ID_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(ids=st.lists(_ID_TEXT, min_size=1, max_size=40, unique=True), data=st.data())
def test_id_index_rows_invert_ids(ids, data):
    idx = IdIndex.from_values(ids)
    assert len(idx) == len(ids)
    rows = idx.rows(ids)
    assert (rows >= 0).all()
    assert [idx.id(r) for r in rows] == ids
    assert idx.rows(idx.ids_).tolist() == list(range(len(ids)))
    unknown = data.draw(st.text(alphabet=string.ascii_letters, min_size=13, max_size=20))
    assert idx.rows([unknown]).tolist() == [-1] and idx.row(unknown) is None
    # encode gives each value the row that maps back to it
    values = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=60))
    enc, codes = IdIndex.encode(values)
    assert [enc.id(c) for c in codes] == values


@settings(max_examples=100, deadline=None)
@given(
    ids=st.lists(_ID_TEXT, min_size=1, max_size=30, unique=True),
    extra=st.lists(_ID_TEXT, max_size=5),
    data=st.data(),
)
def test_id_index_from_a_categorical_matches_from_text(ids, extra, data):
    # checked logs hold ids as categoricals, some categories unused after drops
    values = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=60))
    cats = list(dict.fromkeys(ids + extra))
    cat = pd.Series(pd.Categorical(values, categories=cats))
    a, codes_a = IdIndex.encode(cat)
    b, codes_b = IdIndex.encode(values)
    assert a.ids_.tolist() == b.ids_.tolist()
    assert codes_a.tolist() == codes_b.tolist()


def test_ids_equal_once_stripped_are_one_customer(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text(
        "customer_id,item_id,timestamp\n"
        " a,x,2024-01-01\na ,x,2024-01-02\na,y ,2024-01-03\n  ,y,2024-01-04\n"
    )
    tx = load_transactions(p)
    assert tx.frame["customer_id"].astype(str).tolist() == ["a", "a", "a"]
    assert tx.frame["item_id"].astype(str).tolist() == ["x", "x", "y"]
    assert tx.report.dropped["missing_customer_id"] == 1
    assert tx.fingerprint()["customers"] == 1 and tx.fingerprint()["items"] == 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=0, max_size=300),
    st.sampled_from([10**9, 1, 10**15 + 1]),
)
def test_time_order_is_a_stable_sort(steps, unit):
    """Whole seconds, nanoseconds and spans too wide for the one-key sort."""
    from recommender.data.transactions import _time_order

    ns = 1_700_000_000 * 10**9 + np.asarray(steps, dtype=np.int64) * unit
    order = np.arange(ns.size)[_time_order(ns)]
    np.testing.assert_array_equal(order, np.argsort(ns, kind="stable"))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", " a", ""]),
            st.sampled_from(["x", "y"]),
            st.sampled_from(["2025-01-01", "2025-01-01 00:00:00", "2025-01-02", "2025-03-01"]),
            st.sampled_from(["1", "2", "-1"]),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_duplicates_are_the_exact_repeats_of_an_earlier_kept_row(rows):
    """Only rows that share a time are compared; the result must be that of
    comparing every row with every earlier one, with or without --as-of."""
    raw = pd.DataFrame(rows, columns=["customer_id", "item_id", "timestamp", "quantity"])
    for as_of in (None, "2025-01-31"):
        try:
            tx = validate_transactions(raw, as_of=as_of)
        except DataError:
            continue  # every row dropped
        seen: set[tuple[str, ...]] = set()
        expected_dups, kept = 0, []
        for row in rows:
            bad = row[0].strip() == "" or row[3] == "-1"
            late = as_of is not None and row[2] >= "2025-02-01"
            if bad or late:
                continue
            if row in seen:
                expected_dups += 1
                continue
            seen.add(row)
            kept.append(row)
        assert tx.report.dropped["duplicate"] == expected_dups
        assert len(tx.frame) == len(kept)
        # the frame is in time order, ties in file order
        order = sorted(range(len(kept)), key=lambda k: pd.Timestamp(kept[k][2]))
        assert tx.frame["customer_id"].astype(str).tolist() == [kept[k][0].strip() for k in order]
