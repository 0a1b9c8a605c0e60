"""Guess-you-like picks: per customer, for recent items, and in batches."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request

from recommender.answers import Answer, Answerer, Rules
from serving.deps import AnswererDep
from serving.schemas import (
    ID_PATTERN,
    BatchRequest,
    BatchResponse,
    Error,
    Recommendation,
    Recommendations,
    RecommendRequest,
    item_fields,
)

router = APIRouter(prefix="/v1", tags=["recommendations"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}


def _response(answerer: Answerer, customer_id: str | None, answer: Answer) -> Recommendations:
    bundle = answerer.bundle
    return Recommendations(
        customer_id=customer_id,
        strategy=answer.strategy,
        model_version=bundle.version,
        items=[
            Recommendation(
                rank=i + 1, score=p.score, reason=p.reason, **item_fields(bundle, p.item_row)
            )
            for i, p in enumerate(answer.picks)
        ],
        ignored_items=answer.ignored,
    )


@router.get(
    "/customers/{customer_id:path}/recommendations",
    response_model=Recommendations,
    responses=ERRORS,
    summary="Guess you like: top-k picks for a customer",
)
def customer_recommendations(
    answerer: AnswererDep,
    customer_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=256)],
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
    category: Annotated[list[str] | None, Query(max_length=50)] = None,
    exclude_items: Annotated[list[str] | None, Query(max_length=1000)] = None,
    exclude_purchased: bool | None = None,
    available_only: bool | None = None,
) -> Recommendations:
    """Never a 404: customers the model has not seen get popular items, and the
    response says which strategy answered."""
    rules = Rules(category, exclude_items, exclude_purchased, available_only)
    return _response(answerer, customer_id, answerer.for_customer(customer_id, k, rules))


@router.post(
    "/recommendations",
    response_model=Recommendations,
    responses=ERRORS,
    summary="Picks from recent items (new or just-active customers)",
)
def recommendations_from_recent(answerer: AnswererDep, body: RecommendRequest) -> Recommendations:
    """Recent item ids are folded into the ALS model (the same least-squares
    step a refit would take); unknown ids are ignored and listed."""
    rules = Rules(body.category, body.exclude_items, body.exclude_purchased, body.available_only)
    answer = answerer.for_recent(body.recent_items, body.k, rules, customer_id=body.customer_id)
    return _response(answerer, body.customer_id, answer)


@router.post(
    "/recommendations/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Picks for up to 1,000 customers in one call",
)
def batch_recommendations(
    answerer: AnswererDep, body: BatchRequest, request: Request
) -> BatchResponse:
    settings = request.app.state.settings
    if len(body.customer_ids) > settings.max_batch:
        raise HTTPException(422, f"at most {settings.max_batch} customers per batch")
    picks = len(body.customer_ids) * body.k
    if picks > settings.max_batch_picks:
        raise HTTPException(
            422,
            f"a batch asks for at most {settings.max_batch_picks:,} picks (customers x k); "
            f"this one asks for {picks:,}: lower k or split the batch",
        )
    rules = Rules(body.category, body.exclude_items, body.exclude_purchased, body.available_only)
    answers = answerer.for_ids(body.customer_ids, body.k, rules)
    return BatchResponse(
        model_version=answerer.bundle.version,
        results=[
            _response(answerer, cid, a) for cid, a in zip(body.customer_ids, answers, strict=True)
        ],
    )
