"""The ASGI application served by ``reminders run``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from reminders.migrate import at_head
from reminders.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(title="reminders", version="1", docs_url=None, redoc_url=None)
    app.state.runtime = runtime

    @app.get("/healthz", response_class=PlainTextResponse, include_in_schema=False)
    def healthz() -> str:
        return "ok"

    @app.get("/readyz", response_class=PlainTextResponse, include_in_schema=False)
    def readyz() -> Response:
        try:
            with runtime.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            ready = at_head(runtime.engine)
        except Exception:
            return PlainTextResponse("database unreachable", status_code=503)
        if not ready:
            return PlainTextResponse("schema not at head: run `reminders migrate`", status_code=503)
        return PlainTextResponse("ready")

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    from reminders.web import api, console, webhooks

    app.include_router(webhooks.router)
    app.include_router(api.router)
    app.include_router(console.router)
    return app
