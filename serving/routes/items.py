"""Similar items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from serving.deps import AnswererDep
from serving.schemas import ID_PATTERN, Error, SimilarItem, SimilarItems, item_fields

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
    answerer: AnswererDep,
    item_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=256)],
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> SimilarItems:
    bundle = answerer.bundle
    row = bundle.items.row(item_id)
    if row is None:
        raise HTTPException(404, f"item {item_id!r} is not in model version {bundle.version}")
    return SimilarItems(
        item_id=item_id,
        model_version=bundle.version,
        items=[
            SimilarItem(**item_fields(bundle, r), similarity=s) for r, s in answerer.similar(row, k)
        ],
    )
