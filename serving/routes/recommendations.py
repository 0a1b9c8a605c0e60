"""Guess-you-like picks: per customer, for recent items, and in batches."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request

from serving.deps import EngineDep
from serving.engine import Engine, EngineError, Filters, Pick
from serving.schemas import (
    ID_PATTERN,
    BatchRequest,
    BatchResponse,
    Error,
    Recommendation,
    Recommendations,
    RecommendRequest,
)

router = APIRouter(prefix="/v1", tags=["recommendations"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}


def to_items(engine: Engine, picks: list[Pick]) -> list[Recommendation]:
    return [
        Recommendation(rank=i + 1, score=p.score, reason=p.reason, **engine.item_info(p.item_row))
        for i, p in enumerate(picks)
    ]


def _raise(exc: EngineError) -> None:
    raise HTTPException(status_code=exc.status, detail=exc.message)


@router.get(
    "/customers/{customer_id:path}/recommendations",
    response_model=Recommendations,
    responses=ERRORS,
    summary="Guess you like: top-k picks for a customer",
)
def customer_recommendations(
    engine: EngineDep,
    customer_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=256)],
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    category: Annotated[list[str] | None, Query(max_length=50)] = None,
    exclude_items: Annotated[list[str] | None, Query(max_length=1000)] = None,
    exclude_purchased: bool = True,
    available_only: bool | None = None,
) -> Recommendations:
    """Never a 404: customers the model has not seen get popular items, and the
    response says which strategy answered."""
    f = Filters(category, exclude_items, exclude_purchased, available_only)
    try:
        strategy, picks, _ = engine.recommend(customer_id, None, k, f)
    except EngineError as exc:
        _raise(exc)
    return Recommendations(
        customer_id=customer_id,
        strategy=strategy,  # type: ignore[arg-type]
        model_version=engine.bundle.version,
        items=to_items(engine, picks),
    )


@router.post(
    "/recommendations",
    response_model=Recommendations,
    responses=ERRORS,
    summary="Picks from recent items (new or just-active customers)",
)
def recommendations_from_recent(engine: EngineDep, body: RecommendRequest) -> Recommendations:
    """Recent item ids are folded into the ALS model (the same least-squares
    step a refit would take); unknown ids are ignored and listed."""
    f = Filters(body.category, body.exclude_items, body.exclude_purchased, body.available_only)
    try:
        strategy, picks, ignored = engine.recommend(body.customer_id, body.recent_items, body.k, f)
    except EngineError as exc:
        _raise(exc)
    return Recommendations(
        customer_id=body.customer_id,
        strategy=strategy,  # type: ignore[arg-type]
        model_version=engine.bundle.version,
        items=to_items(engine, picks),
        ignored_items=ignored,
    )


@router.post(
    "/recommendations/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Picks for up to 1,000 customers in one call",
)
def batch_recommendations(engine: EngineDep, body: BatchRequest, request: Request) -> BatchResponse:
    limit = request.app.state.settings.max_batch
    if len(body.customer_ids) > limit:
        raise HTTPException(422, f"at most {limit} customers per batch")
    f = Filters(body.category, body.exclude_items, body.exclude_purchased, body.available_only)
    try:
        results = engine.recommend_batch(body.customer_ids, body.k, f)
    except EngineError as exc:
        _raise(exc)
    return BatchResponse(
        model_version=engine.bundle.version,
        results=[
            Recommendations(
                customer_id=cid,
                strategy=strategy,  # type: ignore[arg-type]
                model_version=engine.bundle.version,
                items=to_items(engine, picks),
            )
            for cid, (strategy, picks) in zip(body.customer_ids, results, strict=True)
        ],
    )
