"""Model info, health, readiness, Prometheus metrics and the admin reload."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from recommender.answers import as_of_date
from serving.deps import AnswererDep, StoreDep
from serving.schemas import Error, Health, ModelInfo

router = APIRouter(tags=["system"])


@router.get(
    "/v1/model",
    response_model=ModelInfo,
    responses={503: {"model": Error}},
    summary="The served model version, its data and its measured quality",
)
def model_info(answerer: AnswererDep, store: StoreDep) -> ModelInfo:
    m = answerer.bundle.manifest
    return ModelInfo(
        version=answerer.bundle.version,
        created_at=m.get("created_at"),
        as_of=as_of_date(m),
        components=m.get("components", {}),
        data=m.get("data", {}),
        metrics=m.get("metrics", {}),
        config=m.get("config", {}),
        reloads=store.status(),
        gate=m.get("gate"),
        report_url="/v1/model/report" if "report.html" in m.get("files", {}) else None,
        fallback_from=store.fallback_from,
        note=store.note,
    )


@router.get(
    "/v1/model/report",
    response_class=HTMLResponse,
    responses={404: {"model": Error}, 503: {"model": Error}},
    summary="The served version's training report (a self-contained HTML page)",
)
def model_report(answerer: AnswererDep) -> Response:
    bundle = answerer.bundle
    if "report.html" not in bundle.manifest.get("files", {}):
        raise HTTPException(404, f"version {bundle.version} has no training report")
    try:
        page = (bundle.path / "report.html").read_bytes()
    except OSError as exc:
        raise HTTPException(404, f"version {bundle.version}: report unreadable ({exc})") from None
    return HTMLResponse(page)


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health}},
    summary="A model is loaded and queries can be answered",
)
def readyz(store: StoreDep) -> Response:
    if store.answerer is None:
        return JSONResponse(
            status_code=503,
            content=Health(
                status="not ready",
                detail=store.unavailable or f"no model loaded from {store.settings.models_dir}",
            ).model_dump(),
        )
    return JSONResponse(
        Health(
            status="ready",
            version=store.version,
            detail=store.note,
            fallback_from=store.fallback_from,
        ).model_dump()
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


@router.post(
    "/v1/admin/reload",
    response_model=Health,
    responses={
        401: {"model": Error},
        403: {"model": Error},
        409: {"model": Error},
        422: {"model": Error},
    },
    summary="Load the published version now (bearer token from ENCORE_ADMIN_TOKEN)",
)
async def admin_reload(
    store: StoreDep,
    authorization: Annotated[str | None, Header(max_length=1024)] = None,
) -> Health:
    token = store.settings.admin_token
    if token is None:
        raise HTTPException(403, "the admin endpoint is disabled: set ENCORE_ADMIN_TOKEN")
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, "missing bearer token")
    given = authorization.removeprefix("Bearer ").encode()
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise HTTPException(403, "wrong token")
    event = await run_in_threadpool(store.refresh, force=True)
    if not event.ok:
        raise HTTPException(409, event.message)
    return Health(status="ok", version=store.version, detail=event.message)
