"""Per-customer timing: buy it again, next purchase, and the marketers' due list."""

from __future__ import annotations

import io
import json
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response

from recommender.answers import (
    Answerer,
    DueSort,
    ValueTerms,
    as_of_date,
    due_table,
    timing_table,
    timing_words,
    value_note,
)
from serving.deps import AnswererDep
from serving.schemas import (
    ID_PATTERN,
    BuyAgain,
    BuyAgainItem,
    DueCustomers,
    Error,
    NextPurchase,
    item_fields,
)

router = APIRouter(prefix="/v1/customers", tags=["customers"])
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Error},
    409: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}
CustomerId = Annotated[str, Path(pattern=ID_PATTERN, max_length=256)]
ClvHorizon = Annotated[
    float, Query(gt=0, le=3650, description="how far ahead lifetime value (clv) counts, days")
]
DiscountRate = Annotated[
    float, Query(ge=0, le=10, description="annual discount rate of lifetime value (0.1 = 10%)")
]


def _finite(x: Any) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


def _row(answerer: Answerer, customer_id: str) -> int:
    row = answerer.bundle.customers.row(customer_id)
    if row is None:
        raise HTTPException(
            404, f"customer {customer_id!r} is not in model version {answerer.bundle.version}"
        )
    return row


@router.get(
    "/due",
    responses={
        **ERRORS,
        200: {
            "model": DueCustomers,
            "description": "CSV download (default) or JSON",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
    },
    summary="Customers due to buy (for campaigns)",
)
def due_customers(
    answerer: AnswererDep,
    within_days: Annotated[float, Query(gt=0, le=3650)] = 30.0,
    min_probability: Annotated[float, Query(ge=0, le=1)] = 0.5,
    limit: Annotated[int, Query(ge=1, le=1_000_000)] = 10_000,
    format: Literal["csv", "json"] = "csv",
    sort: Annotated[
        DueSort,
        Query(description="most likely first (p_purchase) or most expected spend first"),
    ] = "p_purchase",
    clv_horizon_days: ClvHorizon = 365.0,
    annual_discount_rate: DiscountRate = 0.1,
) -> Response:
    """Customers whose probability of buying within ``within_days`` is at least
    ``min_probability``, most likely (or most expected spend) first; CSV
    download or JSON. The value columns are empty without a spend model."""
    table = due_table(
        answerer.bundle,
        within_days,
        min_probability,
        limit,
        sort=sort,
        terms=ValueTerms(clv_horizon_days, annual_discount_rate),
    )
    if format == "json":
        rows = table.replace({np.nan: None}).to_dict(orient="records")
        for row in rows:  # no date is null, as in next-purchase (CSV leaves it empty)
            if row.get("next_purchase_date") == "":
                row["next_purchase_date"] = None
        return Response(
            json.dumps({"model_version": answerer.bundle.version, "customers": rows}),
            media_type="application/json",
        )
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    name = f"due_within_{within_days:g}_days.csv"
    return Response(
        buf.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get(
    "/{customer_id:path}/buy-again",
    response_model=BuyAgain,
    responses=ERRORS,
    summary="Repurchase items due for this customer",
)
def buy_again(
    answerer: AnswererDep,
    customer_id: CustomerId,
    within_days: Annotated[float, Query(gt=0, le=3650)] = 30.0,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> BuyAgain:
    row = _row(answerer, customer_id)
    items = []
    for d in answerer.buy_again(row, within_days, k):
        cyc = float(d["cycle_days"])
        items.append(
            BuyAgainItem(
                **item_fields(answerer.bundle, int(d["item_row"])),
                probability=float(d["probability"]),
                cycle_days=cyc if np.isfinite(cyc) else None,
                days_since_last=float(d["days_since_last"]),
                reason=str(d["reason"]),
            )
        )
    return BuyAgain(
        customer_id=customer_id,
        within_days=within_days,
        model_version=answerer.bundle.version,
        items=items,
    )


@router.get(
    "/{customer_id:path}/next-purchase",
    response_model=NextPurchase,
    responses=ERRORS,
    summary="When will this customer buy again",
)
def next_purchase(
    answerer: AnswererDep,
    customer_id: CustomerId,
    horizon_days: Annotated[float, Query(gt=0, le=3650)] = 30.0,
    clv_horizon_days: ClvHorizon = 365.0,
    annual_discount_rate: DiscountRate = 0.1,
) -> NextPurchase:
    row = _row(answerer, customer_id)
    terms = ValueTerms(clv_horizon_days, annual_discount_rate)
    t = timing_table(
        answerer.bundle, np.array([row]), horizon_days, rounded=False, terms=terms
    ).iloc[0]
    med = float(t["median_days_to_next"])
    date = str(t["next_purchase_date"]) or None
    words = timing_words(answerer.bundle, row, t.to_dict(), horizon_days)
    return NextPurchase(
        customer_id=customer_id,
        horizon_days=horizon_days,
        as_of=as_of_date(answerer.bundle.manifest) or "",
        model_version=answerer.bundle.version,
        p_active=_finite(t["p_active"]),
        expected_purchases=float(t["expected_purchases"]),
        p_purchase=float(t["p_purchase"]),
        median_days_to_next=med if np.isfinite(med) else None,
        next_purchase_date=date,
        expected_order_value=_finite(t["expected_order_value"]),
        expected_spend=_finite(t["expected_spend"]),
        clv=_finite(t["clv"]),
        clv_horizon_days=clv_horizon_days,
        annual_discount_rate=annual_discount_rate,
        value_note=value_note(answerer.bundle),
        note=None if date else words[-1],
        summary=words,
    )
