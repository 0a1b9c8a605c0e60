"""The shop's repeat-purchase health, as measured when the version was trained."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from recommender.answers import shop_metrics
from serving.deps import AnswererDep
from serving.schemas import Error, ShopMetrics

router = APIRouter(prefix="/v1/shop", tags=["shop"])
ERRORS: dict[int | str, dict[str, Any]] = {409: {"model": Error}, 503: {"model": Error}}


@router.get(
    "/metrics",
    response_model=ShopMetrics,
    responses=ERRORS,
    summary="Monthly repeat-purchase measures and cohort retention",
)
def metrics(answerer: AnswererDep) -> dict[str, Any]:
    """Per month: active customers, repurchase rate, orders per customer,
    average order value, revenue and returning customers' share of it; and
    the cohort retention table. 409 for a version trained without them."""
    return shop_metrics(answerer.bundle)
