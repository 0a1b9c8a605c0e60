"""Guess-you-like picks: per customer, for recent items, and in batches.

The two single-customer routes are ``async def``: they answer on the event
loop instead of in the threadpool. Handing a request to a worker thread and
back cost about 0.13 ms of CPU (measured in process), more than a known
customer's whole answer (~0.05 ms from the top-N table, ~0.1-0.3 ms ranked),
and under load the threads only took turns on the GIL with the loop. One
answer's work is bounded by the request's limits (``k`` <= 1,000, at most 50
categories, 1,000 excluded and 500 recent items): measured on 100,000 items,
a few milliseconds at worst, which a thread holding the GIL would keep the
loop waiting for too. A batch (up to ``ENCORE_MAX_BATCH_PICKS`` picks, up to
seconds) still runs in the threadpool, so the loop answers others meanwhile
and the deadline can fire.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.datastructures import QueryParams

from recommender.answers import Rules
from serving.deps import ServedDep
from serving.schemas import (
    ID_PATTERN,
    BatchRequest,
    BatchResponse,
    Error,
    Recommendations,
    RecommendQuery,
    RecommendRequest,
)

router = APIRouter(prefix="/v1", tags=["recommendations"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error},
    422: {"model": Error},
    503: {"model": Error},
}


def _parsed(raw: bytes) -> RecommendRequest:
    """The request body, parsed and validated by pydantic in one pass over
    the bytes: FastAPI's own body handling (``json.loads``, then validation
    of the objects, inside its dependency machinery) cost this route about
    as much CPU as folding the items in and ranking."""
    try:
        return RecommendRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc, "body") from None


# the body's schema, as FastAPI would document a `body: RecommendRequest` parameter
_RECOMMEND_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": RecommendRequest.model_json_schema(
                    ref_template="#/components/schemas/{model}"
                )
            }
        },
    }
}


def _json(body: bytes) -> Response:
    # The body is already the response model's JSON (serving/encoding.py), so
    # FastAPI returns it as it is instead of validating and serialising models.
    return Response(body, media_type="application/json")


def _query(params: QueryParams) -> RecommendQuery:
    """The rules of a query string, validated in one pydantic call: FastAPI
    reads each declared query parameter with its own introspection of the
    parameter's type on every request, which cost this route more CPU than
    a known customer's whole answer."""
    data: dict[str, Any] = {}
    for name in _QUERY_LISTS:
        values = params.getlist(name)
        if values:
            data[name] = values
    for name in _QUERY_SCALARS:
        if name in params:
            data[name] = params[name]  # the last one, as FastAPI takes it
    try:
        return RecommendQuery.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc, "query") from None


def _invalid(exc: ValidationError, where: str) -> RequestValidationError:
    """pydantic's errors as FastAPI reports its own (located in the body or
    the query), so the app's 422 handler words them the same way."""
    errors = [{**err, "loc": (where, *err["loc"])} for err in exc.errors(include_url=False)]
    return RequestValidationError(errors)


_QUERY_LISTS = ("category", "exclude_items")  # repeatable: every value counts
_QUERY_SCALARS = tuple(name for name in RecommendQuery.model_fields if name not in _QUERY_LISTS)
# the query's parameters, as FastAPI would document them one by one
_RECOMMEND_QUERY = {
    "parameters": [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schema,
            **({"description": schema["description"]} if "description" in schema else {}),
        }
        for name, schema in RecommendQuery.model_json_schema()["properties"].items()
    ]
}


@router.get(
    "/customers/{customer_id:path}/recommendations",
    response_model=Recommendations,
    responses=ERRORS,
    summary="Guess you like: top-k picks for a customer",
    openapi_extra=_RECOMMEND_QUERY,
)
async def customer_recommendations(
    served: ServedDep,
    customer_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=256)],
    request: Request,
) -> Response:
    """Never a 404: customers the model has not seen get popular items, and the
    response says which strategy answered. The query holds the business rules:
    `k`, `category` (repeatable), `exclude_items` (repeatable),
    `exclude_purchased` and `available_only`."""
    q = _query(request.query_params)
    rules = Rules(q.category, q.exclude_items, q.exclude_purchased, q.available_only)
    answer = served.answerer.for_customer(customer_id, q.k, rules)
    return _json(served.items_json.recommendations(customer_id, answer))


@router.post(
    "/recommendations",
    response_model=Recommendations,
    responses=ERRORS,
    summary="Picks from recent items (new or just-active customers)",
    openapi_extra=_RECOMMEND_BODY,
)
async def recommendations_from_recent(served: ServedDep, request: Request) -> Response:
    """Recent item ids are folded into the ALS model (the same least-squares
    step a refit would take); unknown ids are ignored and listed."""
    body = _parsed(await request.body())
    rules = Rules(body.category, body.exclude_items, body.exclude_purchased, body.available_only)
    answer = served.answerer.for_recent(
        body.recent_items, body.k, rules, customer_id=body.customer_id
    )
    return _json(served.items_json.recommendations(body.customer_id, answer))


@router.post(
    "/recommendations/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Picks for up to 1,000 customers in one call",
)
def batch_recommendations(served: ServedDep, body: BatchRequest, request: Request) -> Response:
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
    answers = served.answerer.for_ids(body.customer_ids, body.k, rules)
    return _json(served.items_json.batch(body.customer_ids, answers))
