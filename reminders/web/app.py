"""The ASGI application served by ``reminders run``: health, readiness, metrics, and the
webhook, API and console routers.

``/readyz`` and the gauges of ``/metrics`` ask the database on a worker thread bounded by
:data:`PROBE_SECONDS`, so a database that hangs makes them answer late by at most that much
(503, or the last known gauge values) instead of hanging the probe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
from alembic.runtime.migration import MigrationContext
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from reminders import auth, queries
from reminders.logs import get_logger
from reminders.migrate import head_revision, schema_problem
from reminders.runtime import Runtime

log = get_logger(__name__)
PROBE_SECONDS = 2.0
T = TypeVar("T")


class Probes:
    """Database checks for the health endpoints, at most two threads at a time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.head = head_revision()  # read the migration scripts once, not on every probe
        self.limiter = anyio.CapacityLimiter(2)

    async def run(self, check: Callable[[], T]) -> T:
        """``check()`` on a worker thread; TimeoutError after PROBE_SECONDS (it is abandoned)."""
        with anyio.fail_after(PROBE_SECONDS):
            return await anyio.to_thread.run_sync(
                check, abandon_on_cancel=True, limiter=self.limiter
            )

    def readiness(self) -> str | None:
        """None when ready; else what is wrong."""
        with self.runtime.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        return schema_problem(current, self.head)

    def gauges(self) -> None:
        with self.runtime.sessions() as session:
            due = queries.due_depth(session, self.runtime.clock())
            in_doubt = queries.in_doubt_depth(session)
        self.runtime.metrics.set_depths(due=due, in_doubt=in_doubt)


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(title="reminders", version="1", docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    auth.dummy_hash()  # made now: the first sign-in with an unknown address takes no longer
    probes = Probes(runtime)

    @app.get("/healthz", response_class=PlainTextResponse, include_in_schema=False)
    def healthz() -> str:
        return "ok"

    @app.get("/readyz", response_class=PlainTextResponse, include_in_schema=False)
    async def readyz() -> Response:
        try:
            problem = await probes.run(probes.readiness)
        except TimeoutError:
            problem = f"database did not answer within {PROBE_SECONDS:g} s"
        except Exception as exc:
            log.warning("not_ready", error=type(exc).__name__)
            problem = "database unreachable"
        if problem:
            return PlainTextResponse(problem, status_code=503)
        return PlainTextResponse("ready")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        try:
            await probes.run(probes.gauges)
        except Exception as exc:  # the last known values are served
            log.warning("metrics_gauges_stale", error=type(exc).__name__)
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    from reminders.web import api, webhooks
    from reminders.web.console.routes import router as console

    app.include_router(webhooks.router)
    app.include_router(api.router)
    app.include_router(console)
    return app
