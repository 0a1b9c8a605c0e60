"""Per-customer timing: buy it again, next purchase, and the marketers' due list."""

from __future__ import annotations

import io
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response

from serving.deps import EngineDep
from serving.engine import Engine, EngineError
from serving.schemas import (
    ID_PATTERN,
    BuyAgain,
    BuyAgainItem,
    DueCustomers,
    Error,
    NextPurchase,
)

router = APIRouter(prefix="/v1/customers", tags=["customers"])
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": Error},
    409: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}
CustomerId = Annotated[str, Path(pattern=ID_PATTERN, max_length=256)]


def _row(engine: Engine, customer_id: str) -> int:
    row = engine.customer_row(customer_id)
    if row is None:
        raise HTTPException(
            404, f"customer {customer_id!r} is not in model version {engine.bundle.version}"
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
    engine: EngineDep,
    within_days: Annotated[float, Query(gt=0, le=3650)] = 30.0,
    min_probability: Annotated[float, Query(ge=0, le=1)] = 0.5,
    limit: Annotated[int, Query(ge=1, le=1_000_000)] = 10_000,
    format: Literal["csv", "json"] = "csv",
) -> Response:
    """Customers whose probability of buying within ``within_days`` is at least
    ``min_probability``, most likely first; CSV download or JSON."""
    try:
        table = engine.due_customers(within_days, min_probability, limit)
    except EngineError as exc:
        raise HTTPException(exc.status, exc.message) from None
    if format == "json":
        rows = table.replace({np.nan: None}).to_dict(orient="records")
        for row in rows:  # no date is null, as in next-purchase (CSV leaves it empty)
            if row.get("next_purchase_date") == "":
                row["next_purchase_date"] = None
        import json

        return Response(
            json.dumps({"model_version": engine.bundle.version, "customers": rows}),
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
    engine: EngineDep,
    customer_id: CustomerId,
    within_days: Annotated[float, Query(gt=0, le=3650)] = 30.0,
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> BuyAgain:
    row = _row(engine, customer_id)
    try:
        rows = engine.buy_again(row, within_days, k)
    except EngineError as exc:
        raise HTTPException(exc.status, exc.message) from None
    items = []
    for d in rows:
        cyc = float(d["cycle_days"])
        items.append(
            BuyAgainItem(
                **engine.item_info(int(d["item_row"])),
                probability=float(d["probability"]),
                cycle_days=cyc if np.isfinite(cyc) else None,
                days_since_last=float(d["days_since_last"]),
                reason=str(d["reason"]),
            )
        )
    return BuyAgain(
        customer_id=customer_id,
        within_days=within_days,
        model_version=engine.bundle.version,
        items=items,
    )


@router.get(
    "/{customer_id:path}/next-purchase",
    response_model=NextPurchase,
    responses=ERRORS,
    summary="When will this customer buy again",
)
def next_purchase(
    engine: EngineDep,
    customer_id: CustomerId,
    horizon_days: Annotated[float, Query(gt=0, le=3650)] = 30.0,
) -> NextPurchase:
    row = _row(engine, customer_id)
    try:
        out = engine.next_purchase(row, horizon_days)
    except EngineError as exc:
        raise HTTPException(exc.status, exc.message) from None
    as_of = engine.as_of - __import__("pandas").Timedelta(days=1)
    return NextPurchase(
        customer_id=customer_id,
        horizon_days=horizon_days,
        as_of=as_of.date().isoformat(),
        model_version=engine.bundle.version,
        **out,
    )
