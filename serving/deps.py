"""Dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from serving.engine import Engine
from serving.state import ModelStore


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


async def get_engine(request: Request) -> Engine:
    """The engine serving this request (it keeps it even if a reload swaps models)."""
    engine = request.app.state.store.engine
    if engine is None:
        models_dir = request.app.state.store.settings.models_dir
        raise HTTPException(
            status_code=503,
            detail=(
                f"no model is loaded yet: train one with `encore train --transactions FILE "
                f"--models-dir {models_dir}` (or `encore demo`); the server picks it up "
                "automatically"
            ),
        )
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
