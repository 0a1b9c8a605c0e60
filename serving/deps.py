"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from recommender.answers import Answerer
from serving.state import ModelStore, Served


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def _served(request: Request) -> Served:
    store = request.app.state.store
    served = store.served
    if served is None:
        models_dir = store.settings.models_dir
        raise HTTPException(
            status_code=503,
            detail=store.unavailable
            or (
                f"no model is loaded yet: train one with `encore train --transactions FILE "
                f"--models-dir {models_dir}` (or `encore demo`); the server picks it up "
                "automatically"
            ),
        )
    return served


async def get_served(request: Request) -> Served:
    """The version serving this request (it keeps it even if a reload swaps models)."""
    return _served(request)


async def get_answerer(request: Request) -> Answerer:
    """The answerer serving this request (it keeps it even if a reload swaps models)."""
    return _served(request).answerer


AnswererDep = Annotated[Answerer, Depends(get_answerer)]
ServedDep = Annotated[Served, Depends(get_served)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
