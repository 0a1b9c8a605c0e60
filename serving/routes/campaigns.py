"""Campaign lists: count and preview a list, then download it as CSV.

The list itself is :class:`recommender.campaigns.Campaigns`; this module
only reads the question from the query string and writes the answer. The
preview and the download take the same parameters, so the count a marketer
sees is the number of rows the CSV holds (up to its ``limit``).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from recommender.campaigns import (
    COLUMNS,
    MAX_DOWNLOAD,
    MAX_PICKS,
    SEGMENTS,
    CampaignQuery,
    Campaigns,
    TooSlow,
)
from serving.deps import AnswererDep
from serving.routes.console import ConsoleDep
from serving.schemas import Error, item_fields

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error},
    409: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}
PREVIEW_MAX = 100


def _query(
    kind: Annotated[str, Query(description="likely (to buy) or at_risk")] = "likely",
    within_days: Annotated[
        float, Query(description="window of the probability of buying, 1 to 365 days")
    ] = 30.0,
    min_probability: Annotated[float, Query(description="P(buy within the window) at least")] = 0.0,
    max_probability: Annotated[float, Query(description="P(buy within the window) at most")] = 1.0,
    category: Annotated[
        list[str] | None, Query(max_length=50, description="bought from any of these categories")
    ] = None,
    segment: Annotated[str | None, Query(description=f"one of: {', '.join(SEGMENTS)}")] = None,
) -> CampaignQuery:
    # bounds are checked by Campaigns.check, so every surface gives the same message
    return CampaignQuery(
        kind=kind,  # type: ignore[arg-type]  # checked against KINDS
        within_days=within_days,
        min_probability=min_probability,
        max_probability=max_probability,
        categories=tuple(category or ()),
        segment=segment or None,
    )


class Pick(BaseModel):
    item_id: str
    title: str | None
    category: str | None


class CampaignCustomer(BaseModel):
    customer_id: str
    segment: str
    p_purchase: float
    p_active: float | None
    p_active_before: float | None = Field(description="P(active) lookback_days ago")
    last_purchase: str
    next_purchase_date: str | None
    picks: list[Pick]


class CampaignPage(BaseModel):
    count: int = Field(description="customers in the whole list")
    offset: int
    as_of: str | None
    within_days: float
    segments: dict[str, int] = Field(description="customers with a history per segment")
    lookback_days: float = Field(description="the at-risk rule's lookback")
    customers: list[CampaignCustomer]
    model_version: str


def _campaigns(console: Any) -> Campaigns:
    return console.campaigns  # type: ignore[no-any-return]


def _none(x: Any) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


QueryDep = Annotated[CampaignQuery, Depends(_query)]


@router.get(
    "",
    response_model=CampaignPage,
    responses=ERRORS,
    summary="Count a campaign list and preview a page of it, with each customer's picks",
)
def preview(
    answerer: AnswererDep,
    console: ConsoleDep,
    q: QueryDep,
    picks: Annotated[int, Query(ge=0, le=MAX_PICKS, description="picks per customer")] = 3,
    offset: Annotated[int, Query(ge=0, le=MAX_DOWNLOAD)] = 0,
    limit: Annotated[int, Query(ge=1, le=PREVIEW_MAX)] = 20,
) -> CampaignPage:
    """The picks are those ``GET /v1/customers/{id}/recommendations?k=<picks>``
    gives each customer."""
    c = _campaigns(console)
    rows = c.select(q)
    page = rows[offset : offset + limit]
    table = c.table(q, page, picks)
    bundle = answerer.bundle
    out = []
    for rec in table.to_dict(orient="records"):
        chosen = []
        for j in range(1, picks + 1):
            item = rec.get(f"pick_{j}") or ""
            row = bundle.items.row(item) if item else None
            if row is not None:
                f = item_fields(bundle, row)
                chosen.append(Pick(item_id=item, title=f["title"], category=f["category"]))
        out.append(
            CampaignCustomer(
                customer_id=rec["customer_id"],
                segment=rec["segment"],
                p_purchase=rec["p_purchase"],
                p_active=_none(rec["p_active"]),
                p_active_before=_none(rec["p_active_before"]),
                last_purchase=rec["last_purchase"],
                next_purchase_date=rec["next_purchase_date"] or None,
                picks=chosen,
            )
        )
    return CampaignPage(
        count=int(rows.size),
        offset=offset,
        as_of=c.as_of(),
        within_days=q.within_days,
        segments=c.segment_counts(),
        lookback_days=c.rule.lookback_days,
        customers=out,
        model_version=bundle.version,
    )


@router.get(
    "/download",
    responses={
        **ERRORS,
        200: {
            "description": "the list as CSV: " + ", ".join(COLUMNS) + ", pick_1 .. pick_<picks>",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
    },
    response_class=Response,
    summary="Download a campaign list as CSV (the preview's rows, in its order)",
)
def download(
    request: Request,
    answerer: AnswererDep,
    console: ConsoleDep,
    q: QueryDep,
    picks: Annotated[int, Query(ge=0, le=MAX_PICKS, description="picks per customer")] = 3,
    limit: Annotated[
        int, Query(description=f"the first this many customers (at most {MAX_DOWNLOAD:,})")
    ] = MAX_DOWNLOAD,
) -> Response:
    """Empty probabilities are figures the model cannot tell (see next-purchase).

    The file is written whole before it is sent: a list that cannot be
    written within the request's deadline is a 503 that says how far it got,
    never a file cut short."""
    c = _campaigns(console)
    # leave the deadline's last fifth for sending, so this answer comes before the server's own
    budget = 0.8 * request.app.state.settings.request_deadline_s
    try:
        text = c.csv(q, limit, picks, budget_s=budget)
    except TooSlow as exc:
        raise HTTPException(503, str(exc)) from None
    name = f"campaign_{q.kind}_{q.within_days:g}_days_{c.as_of()}.csv"
    return Response(
        text,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
