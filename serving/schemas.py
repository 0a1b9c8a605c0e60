"""Request and response models of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from recommender.store.bundle import Bundle

#: Ids are what training stores: 1-256 characters of any text (spaces,
#: accents, ``#``, ``/``, ...) without control characters and without leading
#: or trailing whitespace (the loader strips it), so every id a shop trained
#: on can be asked for. Messages echo ids with ``repr``.
_CTRL = r"\x00-\x1f\x7f-\x9f"
ID_PATTERN = rf"^[^\s{_CTRL}](?:[^{_CTRL}]{{0,254}}[^\s{_CTRL}])?$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN, min_length=1, max_length=256)]
Strategy = Literal["personalized", "folded_in", "popular"]


class Error(BaseModel):
    detail: str


class Item(BaseModel):
    item_id: str
    title: str | None = None
    category: str | None = None
    price: float | None = None
    available: bool = True


def item_fields(bundle: Bundle, row: int) -> dict[str, Any]:
    """The :class:`Item` fields of an item row, from the bundle's catalogue."""
    c = bundle.catalog
    price = float(c.price[row])
    return {
        "item_id": bundle.items.id(row),
        "title": str(c.title[row]) or None,
        "category": str(c.category[row]) or None,
        "price": price if np.isfinite(price) else None,
        "available": bool(c.available[row]),
    }


class Recommendation(Item):
    rank: int
    score: float
    reason: str = Field(
        description="why this pick: 'similar to ...', 'popular in ...', 'due to rebuy'"
    )


class Recommendations(BaseModel):
    customer_id: str | None
    strategy: Strategy = Field(description="which strategy answered")
    model_version: str
    items: list[Recommendation]
    ignored_items: list[str] = Field(default_factory=list)


class RecommendQuery(BaseModel):
    """The query of ``GET /v1/customers/{id}/recommendations``: the business
    rules, validated in one pydantic call (query strings are text, so numbers
    and booleans are read from it, as FastAPI reads query parameters)."""

    model_config = ConfigDict(extra="ignore")

    k: int = Field(default=10, ge=1, le=1000)
    category: list[str] | None = Field(default=None, max_length=50)
    exclude_items: list[str] | None = Field(default=None, max_length=1000)
    exclude_purchased: bool | None = None
    available_only: bool | None = None


class RecommendRequest(BaseModel):
    # JSON bodies are taken as typed: `"k": true` or `"available_only": 0` is a
    # client bug to report (422), not a value to coerce into k=1 or False.
    model_config = ConfigDict(strict=True)

    customer_id: Id | None = None
    recent_items: list[Id] = Field(default_factory=list, max_length=500)
    k: int = Field(default=10, ge=1, le=1000)
    category: list[str] | None = Field(default=None, max_length=50)
    exclude_items: list[Id] = Field(default_factory=list, max_length=1000)
    exclude_purchased: bool | None = None
    available_only: bool | None = None


class BatchRequest(BaseModel):
    # JSON bodies are taken as typed: `"k": true` or `"available_only": 0` is a
    # client bug to report (422), not a value to coerce into k=1 or False.
    model_config = ConfigDict(strict=True)

    customer_ids: list[Id] = Field(min_length=1, max_length=1000)
    k: int = Field(default=10, ge=1, le=1000)
    category: list[str] | None = Field(default=None, max_length=50)
    exclude_items: list[Id] = Field(default_factory=list, max_length=1000)
    exclude_purchased: bool | None = None
    available_only: bool | None = None


class BatchResponse(BaseModel):
    model_version: str
    results: list[Recommendations]


class BuyAgainItem(Item):
    probability: float
    cycle_days: float | None
    days_since_last: float
    reason: str


class BuyAgain(BaseModel):
    customer_id: str
    within_days: float
    model_version: str
    items: list[BuyAgainItem]


class NextPurchase(BaseModel):
    customer_id: str
    horizon_days: float
    as_of: str = Field(description="the last day of the version's log (YYYY-MM-DD)")
    p_active: float | None = Field(
        description="probability the customer is still a customer; null where the model "
        "cannot tell (a single purchase day under BG/NBD, which counts everyone without a "
        "repeat purchase as active)"
    )
    expected_purchases: float = Field(description="expected purchases within the horizon")
    p_purchase: float = Field(description="probability of at least one purchase within it")
    median_days_to_next: float | None = Field(
        description="whole days after as_of until a purchase is more likely than not "
        "(P(buy within them) >= 0.5); null when that takes more than a year"
    )
    next_purchase_date: str | None
    note: str | None = Field(None, description="why there is no date, when there is none")
    summary: list[str] = Field(
        default_factory=list, description="the figures in plain words, as the page shows them"
    )
    expected_order_value: float | None = Field(
        None, description="expected value of the customer's next order (spend model)"
    )
    expected_spend: float | None = Field(
        None, description="expected spend within the horizon: expected purchases x order value"
    )
    clv: float | None = Field(
        None, description="discounted expected spend over clv_horizon_days (lifetime value)"
    )
    clv_horizon_days: float
    annual_discount_rate: float
    value_note: str | None = Field(
        None, description="why the value figures are null (no spend model in this version)"
    )
    model_version: str


class DueCustomer(BaseModel):
    customer_id: str
    p_purchase: float
    p_active: float | None
    expected_purchases: float
    median_days_to_next: float | None
    next_purchase_date: str | None
    expected_order_value: float | None
    expected_spend: float | None
    clv: float | None


class DueCustomers(BaseModel):
    """The due list as JSON (``format=json``); ``format=csv`` has the same columns."""

    model_version: str
    customers: list[DueCustomer]


class ShopMonth(BaseModel):
    month: str = Field(description="calendar month, YYYY-MM")
    active_customers: int
    new_customers: int
    returning_customers: int
    repurchase_rate: float | None = Field(
        description="share of the month's customers who had bought before"
    )
    orders: int
    orders_per_customer: float | None
    revenue: float | None
    average_order_value: float | None
    returning_revenue_share: float | None


class ShopCohort(BaseModel):
    cohort: str = Field(description="month of the customers' first order, YYYY-MM")
    size: int
    retention: list[float] = Field(
        description="share of the cohort buying in each month from the first (index 0) on"
    )


class ShopMetrics(BaseModel):
    """The shop's repeat-purchase health, as measured on the version's log."""

    model_version: str
    months: list[ShopMonth]
    cohorts: list[ShopCohort]
    has_values: bool = Field(description="whether the log had prices (value measures)")
    notes: list[str]


class SimilarItem(Item):
    similarity: float


class SimilarItems(BaseModel):
    item_id: str
    model_version: str
    items: list[SimilarItem]


class ModelInfo(BaseModel):
    version: str
    created_at: str | None
    as_of: str | None = Field(description="the last day of the log it was trained on (YYYY-MM-DD)")
    components: dict[str, bool]
    data: dict[str, Any]
    metrics: dict[str, Any]
    config: dict[str, Any]
    reloads: dict[str, Any]
    gate: dict[str, Any] | None = None
    """The promotion gate's verdict on this version (None before there was one)."""
    report_url: str | None = None
    """The version's training report (``GET /v1/model/report``), when it has one."""
    fallback_from: str | None = None
    """The published version, when it is damaged and this older one serves instead."""
    note: str | None = None


class Health(BaseModel):
    status: str
    version: str | None = None
    detail: str | None = None
    fallback_from: str | None = None
    """The published version, when it is damaged and an older one serves instead."""
