"""Provider webhooks: Twilio status callbacks and inbound messages, SendGrid events.

What every provider gets back::

    body over the size limit           413
    missing or bad signature, stale    403, nothing changed (reminders_webhook_rejected)
    malformed body                     400, nothing changed (reminders_webhook_rejected)
    an unknown delivery                200: a provider must not retry forever (counted)
    an unexpected error                200, logged and counted, never a 500 (its work rolled back)
    the database unreachable           503 with Retry-After, so the provider tries again later

The signature is checked before anything is parsed beyond what checking it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from reminders.logs import get_logger
from reminders.runtime import Runtime
from reminders.web import sendgrid_hooks, twilio_hooks

log = get_logger(__name__)
MAX_BODY = 5 * 1024 * 1024  # SendGrid batches stay far below this; Twilio forms are tiny
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response />'
SOURCES = {
    "/webhooks/twilio/status": "twilio_status",
    "/webhooks/twilio/inbound": "twilio_inbound",
    "/webhooks/sendgrid/events": "sendgrid",
}
Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class RefusedError(Exception):
    """A request answered with a 4xx and counted as rejected; nothing was changed."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def _ok(source: str) -> Response:
    if source == "twilio_inbound":
        return Response(EMPTY_TWIML, media_type="text/xml")
    return Response(status_code=200)


class WebhookRoute(APIRoute):
    """Turns refusals into 4xx and every other failure into a logged 200 or 503."""

    def get_route_handler(self) -> Endpoint:
        handler = super().get_route_handler()
        source = SOURCES.get(self.path, self.path)

        async def guarded(request: Request) -> Response:
            metrics = _runtime(request).metrics
            try:
                return await handler(request)
            except RefusedError as refused:
                metrics.webhook_rejected.labels(source, refused.reason).inc()
                log.warning("webhook_refused", source=source, reason=refused.reason)
                return Response(str(refused), status_code=refused.status, media_type="text/plain")
            except (OperationalError, PoolTimeout):
                metrics.webhook_events.labels(source, "database_unavailable").inc()
                log.error("webhook_database_unavailable", source=source)
                return Response("try again later", status_code=503, headers={"Retry-After": "60"})
            except Exception:
                metrics.webhook_events.labels(source, "error").inc()
                log.exception("webhook_failed", source=source)
                return _ok(source)

        return guarded


router = APIRouter(route_class=WebhookRoute)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise RefusedError(413, "too_large", "body too large")
    try:
        body = await request.body()
    except ClientDisconnect:
        raise RefusedError(400, "malformed", "incomplete body") from None
    if len(body) > MAX_BODY:
        raise RefusedError(413, "too_large", "body too large")
    return body


async def _twilio_form(request: Request) -> twilio_hooks.Form:
    """The verified form fields of a Twilio webhook."""
    runtime = _runtime(request)
    try:
        form = twilio_hooks.parse_form(await _body(request))
    except ValueError:
        raise RefusedError(400, "malformed", "the body is not a UTF-8 form") from None
    query = request.scope.get("query_string", b"").decode("latin-1")
    url = twilio_hooks.signed_url(runtime.settings, str(request.url), request.url.path, query)
    signature = request.headers.get("X-Twilio-Signature")
    problem = twilio_hooks.signature_problem(runtime.settings, url, form, signature)
    if problem:
        raise RefusedError(403, problem, "invalid signature")
    if any("\x00" in f"{key}{value}" for key, value in form.items()):
        raise RefusedError(400, "malformed", "a form field holds a NUL character")
    return form


def _require(form: twilio_hooks.Form, *names: str) -> None:
    name = twilio_hooks.missing(form, *names)
    if name:
        raise RefusedError(400, "malformed", f"missing form field {name}")


@router.post("/webhooks/twilio/status", include_in_schema=False)
async def twilio_status(request: Request) -> Response:
    """A message status callback; ``d`` is the delivery's public id we put in StatusCallback."""
    runtime = _runtime(request)
    form = await _twilio_form(request)
    _require(form, "MessageSid", "MessageStatus")
    public_id = request.query_params.get("d")
    outcome = await run_in_threadpool(
        twilio_hooks.handle_status, runtime, form, public_id, runtime.clock()
    )
    runtime.metrics.webhook_events.labels("twilio_status", outcome).inc()
    return Response(status_code=200)


@router.post("/webhooks/twilio/inbound", include_in_schema=False)
async def twilio_inbound(request: Request) -> Response:
    """A patient's message; answered with TwiML (the HELP text, or nothing)."""
    runtime = _runtime(request)
    form = await _twilio_form(request)
    _require(form, "MessageSid", "From")
    outcome, twiml = await run_in_threadpool(
        twilio_hooks.handle_inbound, runtime, form, runtime.clock()
    )
    runtime.metrics.webhook_events.labels("twilio_inbound", outcome).inc()
    return Response(twiml, media_type="text/xml")


@router.post("/webhooks/sendgrid/events", include_in_schema=False)
async def sendgrid_events(request: Request) -> Response:
    """A signed batch of SendGrid events."""
    runtime = _runtime(request)
    try:
        body = (await _body(request)).decode("utf-8")
    except UnicodeDecodeError:
        raise RefusedError(400, "malformed", "the body is not UTF-8") from None
    problem = sendgrid_hooks.signature_problem(
        runtime.settings,
        body,
        request.headers.get(sendgrid_hooks.SIGNATURE),
        request.headers.get(sendgrid_hooks.TIMESTAMP),
        runtime.clock(),
    )
    if problem:
        raise RefusedError(403, problem, "invalid or stale signature")
    try:
        events = sendgrid_hooks.parse_events(body)
    except ValueError as exc:
        raise RefusedError(400, "malformed", f"malformed body: {exc}") from None
    await run_in_threadpool(sendgrid_hooks.handle_events, runtime, events, runtime.clock())
    return Response(status_code=200)
