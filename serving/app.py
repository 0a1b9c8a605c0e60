"""The FastAPI application factory."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from threadpoolctl import threadpool_limits

from recommender.answers import AnswerError
from serving.limits import RequestLimits
from serving.routes import campaigns, console, customers, items, recommendations, shop, system, ui
from serving.settings import ServingSettings
from serving.state import ModelStore

log = logging.getLogger("encore.serving")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """Build the app; the model is loaded in the lifespan and reloaded in the background."""
    settings = settings or ServingSettings()
    # Scoring is BLAS-bound: several BLAS threads per worker fight over the
    # cores under concurrent requests and make every call slower.
    threadpool_limits(settings.blas_threads)
    store = ModelStore(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store.start()
        if store.answerer is None:
            log.warning(
                "started without a model (%s); /readyz is 503 until one is published",
                store.unavailable or "nothing published",
            )
        yield
        store.stop()

    # FastAPIOffline serves the /docs and /redoc scripts from the package, so
    # the API documentation works on a network without the public CDN.
    app = FastAPIOffline(
        title="Encore",
        version="1",
        summary="Recommendations and next-purchase timing from a shop's order history.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.settings = settings
    registry = CollectorRegistry()
    app.state.registry = registry
    requests = Counter(
        "encore_requests",
        "Requests by route and status",
        ["route", "method", "status"],
        registry=registry,
    )
    latency = Histogram(
        "encore_request_seconds",
        "Request latency by route",
        ["route", "method"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        registry=registry,
    )
    version_info = Gauge(
        "encore_model_info", "Served model version (value 1)", ["version"], registry=registry
    )
    reloads = Gauge(
        "encore_model_reloads", "Model loads by outcome", ["outcome"], registry=registry
    )

    shown: list[object] = [None]

    def observe_metrics(scope, status, seconds):  # type: ignore[no-untyped-def]
        route = scope.get("route")
        path = getattr(route, "path_format", None) or getattr(route, "path", "unmatched")
        latency.labels(path, scope["method"]).observe(seconds)
        requests.labels(path, scope["method"], str(status)).inc()
        state = (store.version, store.reloads_ok, store.reloads_failed)
        if state != shown[0]:  # gauges change only when a reload happened
            shown[0] = state
            version_info.clear()
            if store.version:
                version_info.labels(store.version).set(1)
            reloads.labels("ok").set(store.reloads_ok)
            reloads.labels("failed").set(store.reloads_failed)

    class Observe:
        def __init__(self, app):  # type: ignore[no-untyped-def]
            self.app = app

        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            t0 = time.perf_counter()
            status = [500]

            async def send_status(message):  # type: ignore[no-untyped-def]
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_status)
            finally:
                observe_metrics(scope, status[0], time.perf_counter() - t0)

    # Observe is the outermost layer, so refused and timed-out requests are counted too.
    app.add_middleware(
        RequestLimits,
        max_body_bytes=settings.max_body_bytes,
        deadline_s=settings.request_deadline_s,
    )
    app.add_middleware(Observe)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc.detail)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(AnswerError)
    async def answer_error(request: Request, exc: AnswerError) -> JSONResponse:
        # a wrong question is the client's to fix; a missing model is this version's state
        status = 400 if exc.kind == "bad_request" else 409
        return JSONResponse({"detail": exc.message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log it with the traceback, answer without one.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; it has been logged"}, status_code=500)

    for module in (recommendations, customers, items, shop, system, console, campaigns, ui):
        app.include_router(module.router)
    return app
