"""The marketers' console: find customers and items, a customer's timeline and
purchase curve, an item's buyers and likely next buyers.

Every list is a page (``offset``, ``limit``) answered from indexes built once
per version (:class:`recommender.console.Console`), so nothing sends or scans
the whole customer table per request.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Annotated, Any

import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field

from recommender.answers import (
    Answerer,
    AnswerError,
    as_of_date,
    one_time_buyers,
    p_active_shown,
    purchase_curve,
)
from recommender.console import Console
from recommender.lookup import MAX_OFFSET, MAX_PAGE
from recommender.purchases import day_text
from serving.deps import AnswererDep
from serving.schemas import ID_PATTERN, Error, Item, item_fields

router = APIRouter(prefix="/v1", tags=["console"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error},
    404: {"model": Error},
    409: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}
CustomerId = Annotated[str, Path(pattern=ID_PATTERN, max_length=256)]
ItemId = Annotated[str, Path(pattern=ID_PATTERN, max_length=256)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="where the page starts")]
_lock = threading.Lock()


def get_console(request: Request, answerer: AnswererDep) -> Console:
    """The console of the answerer's version, built once (two versions are kept
    across a reload, so requests still on the old one do not rebuild it)."""
    state = request.app.state
    with _lock:
        consoles: OrderedDict[int, Console] = getattr(state, "consoles", None) or OrderedDict()
        state.consoles = consoles
        console = consoles.get(id(answerer))
        if console is None or console.answerer is not answerer:
            console = Console(answerer)
            consoles[id(answerer)] = console
            while len(consoles) > 2:
                consoles.popitem(last=False)
        return console


ConsoleDep = Annotated[Console, Depends(get_console)]


def _customer_row(answerer: Answerer, customer_id: str) -> int:
    row = answerer.bundle.customers.row(customer_id)
    if row is None:
        raise HTTPException(
            404, f"customer {customer_id!r} is not in model version {answerer.bundle.version}"
        )
    return row


def _item_row(answerer: Answerer, item_id: str) -> int:
    row = answerer.bundle.items.row(item_id)
    if row is None:
        raise HTTPException(
            404, f"item {item_id!r} is not in model version {answerer.bundle.version}"
        )
    return row


def _matches(search: Any, q: str, offset: int, limit: int) -> Any:
    try:
        return search.search(q, offset=offset, limit=limit)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def _cents(x: float) -> float | None:
    return round(float(x), 2) if math.isfinite(float(x)) else None


# -- customers ------------------------------------------------------------------------
class CustomerMatch(BaseModel):
    customer_id: str
    purchase_days: int = Field(description="days on which the customer bought")
    last_purchase: str | None = Field(description="the last of them (YYYY-MM-DD)")


class CustomerMatches(BaseModel):
    query: str
    total: int = Field(description="customers whose id starts with the query")
    offset: int
    customers: list[CustomerMatch]
    model_version: str


@router.get(
    "/customers",
    response_model=CustomerMatches,
    responses=ERRORS,
    summary="Find customers by the start of their id (paginated)",
)
def find_customers(
    answerer: AnswererDep,
    console: ConsoleDep,
    q: Annotated[str, Query(max_length=256, description="the start of an id")] = "",
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 10,
) -> CustomerMatches:
    """Ids are compared case-insensitively and in one Unicode form (NFKC), so
    accented and non-Latin ids are found however they were typed; the id
    typed exactly comes first."""
    m = _matches(console.customers, q, offset, limit)
    bundle = answerer.bundle
    out = []
    timing = bundle.timing
    for r in m.rows.tolist():
        days, last = 0, None
        if timing is not None and bool(timing.summary_.has_history[r]):
            s = timing.summary_
            days = int(s.x[r]) + 1
            last = _day(bundle, float(s.last_day[r]))
        out.append(CustomerMatch(customer_id=bundle.customers.id(r), purchase_days=days,
                                 last_purchase=last))  # fmt: skip
    return CustomerMatches(
        query=q, total=m.total, offset=offset, customers=out, model_version=bundle.version
    )


def _day(bundle: Any, day: float) -> str:
    """A day of the timing summary's clock as YYYY-MM-DD."""
    as_of = pd.Timestamp(bundle.manifest["as_of"])
    return str((as_of + pd.Timedelta(days=day - bundle.timing.summary_.as_of_day)).date())


class OrderLine(Item):
    quantity: float
    value: float | None = Field(description="quantity x unit price (null when unknown)")


class Order(BaseModel):
    date: str = Field(description="YYYY-MM-DD")
    value: float | None
    items: list[OrderLine]


class Timeline(BaseModel):
    customer_id: str
    as_of: str | None = Field(description="the last day of the version's log")
    segment: str | None = Field(description="the customer's campaign segment")
    purchase_days: int = Field(description="days on which the customer bought, in all")
    first_purchase: str | None
    last_purchase: str | None
    items_bought: int = Field(description="distinct items bought")
    orders: list[Order] = Field(description="a page of purchase days, newest first")
    purchase_dates: list[str] = Field(
        description="every purchase day, oldest first (the last 2,000), for the timeline's strip"
    )
    has_dates: bool = Field(description="false for a version trained without dated purchases")
    note: str | None = None
    model_version: str


@router.get(
    "/customers/{customer_id:path}/timeline",
    response_model=Timeline,
    responses=ERRORS,
    summary="A customer's purchase history by day, newest first (paginated)",
)
def timeline(
    answerer: AnswererDep,
    console: ConsoleDep,
    customer_id: CustomerId,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="purchase days per page")] = 20,
    before: Annotated[
        str | None,
        Query(pattern=r"^\d{4}-\d{2}-\d{2}$", description="only days before this (YYYY-MM-DD)"),
    ] = None,
) -> Timeline:
    row = _customer_row(answerer, customer_id)
    bundle = answerer.bundle
    log = console.purchases
    orders: list[Order] = []
    dates: list[str] = []
    total, first, last, note = 0, None, None, None
    if before is not None:
        try:
            np.datetime64(before, "D")
        except ValueError:
            raise HTTPException(422, f"before must be a date, YYYY-MM-DD; got {before!r}") from None
    if log is not None:
        got, total = log.orders(row, limit=limit, before=before)
        for o in got:
            lines = [
                OrderLine(
                    **(item_fields(bundle, i) if i >= 0 else {"item_id": "(left out)"}),
                    quantity=q,
                    value=_cents(v),
                )
                for i, q, v in o.items
            ]
            orders.append(Order(date=o.date, value=_cents(o.value), items=lines))
        dates = log.days(row)
        s = log.lines(row)
        if log.day[s].size:
            first, last = day_text(int(log.day[s][0])), day_text(int(log.day[s][-1]))
    else:
        note = "this model version holds no dated purchases; retrain to see the timeline"
        if bundle.timing is not None and bool(bundle.timing.summary_.has_history[row]):
            s2 = bundle.timing.summary_
            total = int(s2.x[row]) + 1
            first, last = (
                _day(bundle, float(s2.first_day[row])),
                _day(bundle, float(s2.last_day[row])),
            )
    segment = None
    try:
        segment = console.campaigns.segment_of(row)
    except AnswerError:
        pass
    h = bundle.history
    return Timeline(
        customer_id=customer_id,
        as_of=as_of_date(bundle.manifest),
        segment=segment,
        purchase_days=total,
        first_purchase=first,
        last_purchase=last,
        items_bought=int(h.indptr[row + 1] - h.indptr[row]),
        orders=orders,
        purchase_dates=dates,
        has_dates=log is not None,
        note=note,
        model_version=bundle.version,
    )


class PurchaseCurve(BaseModel):
    customer_id: str
    as_of: str | None = Field(description="day 1 is the day after it")
    days: list[int]
    p_purchase: list[float] = Field(description="P(at least one purchase within d days), each d")
    p_active: float | None = Field(description="as in next-purchase: null where not known")
    one_time_buyer: bool
    model_version: str


@router.get(
    "/customers/{customer_id:path}/purchase-curve",
    response_model=PurchaseCurve,
    responses=ERRORS,
    summary="P(buying within d days) for d = 1 .. days (the page's plot)",
)
def curve(
    answerer: AnswererDep,
    customer_id: CustomerId,
    days: Annotated[int, Query(ge=1, le=365, description="the last day of the curve")] = 90,
) -> PurchaseCurve:
    row = _customer_row(answerer, customer_id)
    bundle = answerer.bundle
    ds = np.arange(1, days + 1)
    p = purchase_curve(bundle, row, ds)
    timing = bundle.timing
    assert timing is not None  # purchase_curve raised otherwise
    rows = np.array([row])
    pa = p_active_shown(timing, rows, timing.predict(1.0, rows)["p_active"])[0]
    return PurchaseCurve(
        customer_id=customer_id,
        as_of=as_of_date(bundle.manifest),
        days=ds.tolist(),
        p_purchase=[float(v) for v in p],
        p_active=_finite(pa),
        one_time_buyer=bool(one_time_buyers(bundle, rows)[0]),
        model_version=bundle.version,
    )


# -- items ----------------------------------------------------------------------------
class Category(BaseModel):
    name: str
    items: int


class Categories(BaseModel):
    categories: list[Category]
    model_version: str


@router.get(
    "/categories",
    response_model=Categories,
    responses={503: {"model": Error}},
    summary="The catalogue's categories (for the rules' and campaigns' filters)",
)
def categories(answerer: AnswererDep) -> Categories:
    return Categories(
        categories=[
            Category(name=name, items=int(rows.size)) for name, rows in answerer.categories.items()
        ],
        model_version=answerer.bundle.version,
    )


class ItemMatch(Item):
    buyers: int = Field(description="customers who bought it")


class ItemMatches(BaseModel):
    query: str
    total: int = Field(description="items whose id or a word of whose title starts with it")
    offset: int
    items: list[ItemMatch]
    model_version: str


def _buyers(console: Console, row: int) -> int:
    return console.audience.buyers(row, limit=1).total


@router.get(
    "/items",
    response_model=ItemMatches,
    responses=ERRORS,
    summary="Find items by the start of their id or of a word of their title (paginated)",
)
def find_items(
    answerer: AnswererDep,
    console: ConsoleDep,
    q: Annotated[str, Query(max_length=256, description="the start of an id or title word")] = "",
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 10,
) -> ItemMatches:
    m = _matches(console.items, q, offset, limit)
    bundle = answerer.bundle
    return ItemMatches(
        query=q,
        total=m.total,
        offset=offset,
        items=[
            ItemMatch(**item_fields(bundle, r), buyers=_buyers(console, r)) for r in m.rows.tolist()
        ],
        model_version=bundle.version,
    )


class Buyer(BaseModel):
    customer_id: str
    lines: int = Field(description="purchase lines of the item")
    purchase_days: int | None = Field(description="days they bought it (null without dates)")
    last_bought: str | None


class Buyers(BaseModel):
    item_id: str
    total: int
    offset: int
    customers: list[Buyer]
    model_version: str


@router.get(
    "/items/{item_id:path}/buyers",
    response_model=Buyers,
    responses=ERRORS,
    summary="Who bought an item, most purchase lines first (paginated)",
)
def buyers(
    answerer: AnswererDep,
    console: ConsoleDep,
    item_id: ItemId,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
) -> Buyers:
    row = _item_row(answerer, item_id)
    page = console.audience.buyers(row, offset=offset, limit=limit)
    log = console.purchases
    dated = log.last_bought(page.rows, row) if log is not None else [None] * page.rows.size
    ids = answerer.bundle.customers.ids_
    return Buyers(
        item_id=item_id,
        total=page.total,
        offset=offset,
        customers=[
            Buyer(
                customer_id=str(ids[r]),
                lines=int(f),
                purchase_days=d["days"] if d else None,
                last_bought=d["last"] if d else None,
            )
            for r, f, d in zip(page.rows.tolist(), page.figures.tolist(), dated, strict=True)
        ],
        model_version=answerer.bundle.version,
    )


class Prospect(BaseModel):
    customer_id: str
    figure: float


class ProspectList(BaseModel):
    total: int
    customers: list[Prospect]


class LikelyBuyers(BaseModel):
    item_id: str
    within_days: float
    rebuy: ProspectList = Field(
        description="past buyers by P(buying it again within within_days) (repurchase items)"
    )
    new: ProspectList = Field(
        description="customers who never bought it, by the ALS score of customer and item"
    )
    model_version: str


@router.get(
    "/items/{item_id:path}/likely-buyers",
    response_model=LikelyBuyers,
    responses=ERRORS,
    summary="Who is likely to buy an item next: due rebuyers and likely new buyers",
)
def likely_buyers(
    answerer: AnswererDep,
    console: ConsoleDep,
    item_id: ItemId,
    within_days: Annotated[float, Query(ge=1, le=365)] = 30.0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 10,
) -> LikelyBuyers:
    row = _item_row(answerer, item_id)
    ids = answerer.bundle.customers.ids_

    def listed(page: Any) -> ProspectList:
        return ProspectList(
            total=page.total,
            customers=[
                Prospect(customer_id=str(ids[r]), figure=float(f))
                for r, f in zip(page.rows.tolist(), page.figures.tolist(), strict=True)
            ],
        )

    aud = console.audience
    return LikelyBuyers(
        item_id=item_id,
        within_days=within_days,
        rebuy=listed(aud.due_rebuyers(row, within_days, limit=limit)),
        new=listed(aud.new_buyers(row, limit=limit)),
        model_version=answerer.bundle.version,
    )


class ItemInfo(ItemMatch):
    repurchase_item: bool = Field(description="the buy-again model expects it to be rebought")
    cycle_days: float | None = Field(description="its typical days between rebuys")
    model_version: str


@router.get(
    "/items/{item_id:path}",
    response_model=ItemInfo,
    responses=ERRORS,
    summary="One item of the catalogue, as the model knows it",
)
def item_info(answerer: AnswererDep, console: ConsoleDep, item_id: ItemId) -> ItemInfo:
    row = _item_row(answerer, item_id)
    bundle = answerer.bundle
    rep = bundle.repurchase
    is_rep = bool(rep is not None and rep.is_repurchase_item_[row])
    cycle = float(rep.item_cycle_days_[row]) if rep is not None and is_rep else math.inf
    return ItemInfo(
        **item_fields(bundle, row),
        buyers=_buyers(console, row),
        repurchase_item=is_rep,
        cycle_days=_finite(cycle),
        model_version=bundle.version,
    )
