"""Similar items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from serving.deps import EngineDep
from serving.engine import EngineError
from serving.schemas import ID_PATTERN, Error, SimilarItem, SimilarItems

router = APIRouter(prefix="/v1/items", tags=["items"])


@router.get(
    "/{item_id:path}/similar",
    response_model=SimilarItems,
    responses={
        404: {"model": Error},
        409: {"model": Error},
        422: {"model": Error},
        503: {"model": Error},
    },
    summary="Items bought by the same kind of customers",
)
def similar_items(
    engine: EngineDep,
    item_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=256)],
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> SimilarItems:
    row = engine.item_row(item_id)
    if row is None:
        raise HTTPException(
            404, f"item {item_id!r} is not in model version {engine.bundle.version}"
        )
    try:
        pairs = engine.similar(row, k)
    except EngineError as exc:
        raise HTTPException(exc.status, exc.message) from None
    return SimilarItems(
        item_id=item_id,
        model_version=engine.bundle.version,
        items=[SimilarItem(**engine.item_info(r), similarity=s) for r, s in pairs],
    )
