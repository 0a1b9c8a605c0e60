"""The data contract: every drop reason counted, --strict, --columns, formats, ids."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recommender.data.ids import IdIndex
from recommender.data.transactions import (
    DROP_REASONS,
    DataError,
    load_catalog,
    load_transactions,
    parse_column_map,
)

BAD = Path(__file__).parent / "data" / "bad" / "every_bad_row.csv"


def test_every_drop_reason_is_counted_with_its_first_row():
    tx = load_transactions(BAD, as_of="2024-12-31")
    rep = tx.report
    expected = {
        "missing_customer_id": (3, "customer_id"),
        "missing_item_id": (4, "item_id"),
        "unparseable_timestamp": (5, "timestamp"),
        "unparseable_quantity": (6, "quantity"),
        "non_positive_quantity": (7, "quantity"),
        "invalid_price": (8, "price"),
        "duplicate": (9, "(all columns)"),
        "after_as_of": (11, "timestamp"),
    }
    for reason, (row, column) in expected.items():
        assert rep.dropped[reason] == 1, reason
        off = rep.first_offence[reason]
        assert (off.row, off.line, off.column) == (row, row + 1, column), reason
    assert rep.dropped["unknown_event"] == 0
    assert set(rep.dropped) == set(DROP_REASONS)
    assert rep.rows_read == 12 and rep.rows_kept == 4 and rep.rows_dropped == 8
    f = tx.frame
    assert list(f["customer_id"]) == ["c1", "c3", "c1", "c3"]
    # epoch seconds and an ISO offset are both understood (converted to UTC)
    assert pd.Timestamp("2024-01-01 00:00:00") in set(f["timestamp"])
    assert pd.Timestamp("2024-02-01 06:00:00") in set(f["timestamp"])
    assert np.isnan(f.loc[f["item_id"] == "i3", "price"]).all()  # empty price is unknown
    # what happened after --as-of is kept aside for backtests
    assert tx.future is not None and len(tx.future) == 1


def test_strict_names_the_first_bad_row_and_column():
    with pytest.raises(DataError) as err:
        load_transactions(BAD, strict=True)
    msg = str(err.value)
    assert "row 3 (line 4)" in msg and "column 'customer_id'" in msg and "--strict" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"a,b,c\n1,2,3\n", "missing column(s) customer_id, item_id, timestamp"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "binary"),
        (b"", "empty"),
        (b"customer_id,item_id,timestamp\n", "no rows"),
    ],
)
def test_not_a_transaction_log_is_one_clear_line(tmp_path, content, fragment):
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        load_transactions(path)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_all_rows_bad_is_an_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("customer_id,item_id,timestamp\nc1,i1,nope\nc2,i2,never\n")
    with pytest.raises(DataError, match="no usable rows.*unparseable_timestamp"):
        load_transactions(path)


def test_uci_online_retail_layout_with_columns(tmp_path):
    path = tmp_path / "online_retail.csv"
    path.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
        "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom\n"
        "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom\n"
        "536414,22139,RETROSPOT TEA SET,56,2010-12-01 11:52:00,0,,United Kingdom\n"
        "536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,17850.0,United Kingdom\n"
    )
    columns = parse_column_map(
        "customer_id=CustomerID,item_id=StockCode,timestamp=InvoiceDate,"
        "quantity=Quantity,price=UnitPrice"
    )
    tx = load_transactions(path, columns=columns)
    assert tx.report.dropped["non_positive_quantity"] == 1  # the cancellation
    assert tx.report.dropped["missing_customer_id"] == 1
    assert tx.report.first_offence["missing_customer_id"].column == "CustomerID"
    assert set(tx.frame["item_id"]) == {"85123A", "71053", "22633"}
    assert set(tx.frame["customer_id"]) == {"17850"}  # float-typed ids read as integers
    with pytest.raises(DataError, match="not a column"):
        load_transactions(path, columns={"customer_id": "Customer"})
    with pytest.raises(DataError, match="unknown column"):
        parse_column_map("shopper=CustomerID")
    with pytest.raises(DataError, match="canonical=source"):
        parse_column_map("customer_id")


def test_gzip_and_parquet_give_the_same_frame(tmp_path):
    csv = tmp_path / "log.csv"
    shutil.copy(BAD, csv)
    gz = tmp_path / "log.csv.gz"
    with open(BAD, "rb") as src, gzip.open(gz, "wb") as dst:
        dst.write(src.read())
    base = load_transactions(csv, as_of="2024-12-31")
    other = load_transactions(gz, as_of="2024-12-31")
    pd.testing.assert_frame_equal(base.frame, other.frame)
    assert base.report.dropped == other.report.dropped
    # typed Parquet (real datetimes and numbers) goes through the typed path
    pq = tmp_path / "log.parquet"
    base.frame[["customer_id", "item_id", "timestamp", "quantity", "price"]].to_parquet(pq)
    again = load_transactions(pq)
    pd.testing.assert_frame_equal(
        base.frame.drop(columns=["event", "weight"]),
        again.frame.drop(columns=["event", "weight"]),
        check_dtype=False,
    )


def test_event_weights(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(
        "customer_id,item_id,timestamp,event\n"
        "c1,i1,2024-01-01,view\nc1,i1,2024-01-02,purchase\nc1,i2,2024-01-02,cart\n"
        "c1,i3,2024-01-02,wishlist\n"
    )
    tx = load_transactions(path, event_weights={"view": 0.1, "cart": 0.5, "purchase": 1.0})
    assert tx.report.dropped["unknown_event"] == 1
    assert dict(zip(tx.frame["event"], tx.frame["weight"], strict=True)) == {
        "view": 0.1,
        "purchase": 1.0,
        "cart": 0.5,
    }
    assert list(tx.purchases["event"]) == ["purchase"]


def test_fingerprint_is_stable_and_sensitive(tmp_path):
    a = load_transactions(BAD).fingerprint()
    assert a == load_transactions(BAD).fingerprint()
    changed = tmp_path / "x.csv"
    changed.write_text(
        BAD.read_text().replace("c1,i2,2024-01-02T10:00:00,2", "c1,i2,2024-01-02T10:00:00,3")
    )
    assert load_transactions(changed).fingerprint()["sha256"] != a["sha256"]
    assert a["rows"] == 5 and a["customers"] == 2


def test_catalog(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text(
        "item_id,title,category,price,available\n"
        "i1,Coffee,Coffee & Tea,9.5,true\ni2,Mug,Kitchen,,0\ni1,Dup,X,1,1\n,NoId,X,1,1\n"
    )
    cat, rep = load_catalog(path)
    assert list(cat["item_id"]) == ["i1", "i2"]
    assert list(cat["available"]) == [True, False]
    assert np.isnan(cat.loc[1, "price"])
    assert rep["dropped"] == {"missing_item_id": 1, "duplicate_item_id": 1}
    with pytest.raises(DataError, match="duplicate item id"):
        load_catalog(path, strict=True)


def test_id_index_unknown_and_order():
    idx = IdIndex.from_values(["b", "a", "b", "c"])
    assert list(idx.ids_) == ["a", "b", "c"]
    assert list(idx.rows(["c", "zzz", "a"])) == [2, -1, 0]
    assert idx.row("zzz") is None and idx.row("b") == 1
    idx2, codes = IdIndex.encode(pd.Series(["b", "a", "b"]))
    assert list(codes) == [1, 0, 1] and list(idx2.ids_) == ["a", "b"]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        # control characters are not ids (numpy text arrays drop trailing NULs)
        st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12),
        min_size=1,
        max_size=40,
        unique=True,
    )
)
def test_id_index_rows_invert_ids(ids):
    idx = IdIndex(np.array(ids, dtype=str))
    assert list(idx.rows(idx.ids_)) == list(range(len(ids)))
    assert all(idx.id(idx.row(i)) == i for i in ids)
