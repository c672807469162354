"""The security bullet of issue 8, point by point, where the other tests leave a gap.

- Webhooks: nothing is accepted without a valid signature. ``test_webhooks_twilio.py`` forges
  status callbacks and ``test_webhooks_sendgrid.py`` batches; here the inbound endpoint, a
  signature replayed on another endpoint, fields added after signing, and SendGrid timestamps
  that are stale, from the future, changed after signing or not plain digits. Every refusal is
  a 403 that writes nothing at all.
- The API refuses a missing or wrong token on every one of its routes, whatever the route.
- The console requires sign-in on every page and a CSRF token on every form, whatever the route.
- No configured secret appears in anything the service logs: ``test_secrets_in_logs.py``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, select

from reminders.models import Reminder, User
from reminders.runtime import Runtime
from reminders.web import api
from reminders.web.app import create_app
from tests.console_support import PASSWORD, admin, anonymous, console, sign_in, token
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.fault_support import seed_due
from tests.test_import_csv import statements_that_write
from tests.webhook_support import (
    EVENTS_PATH,
    INBOUND_PATH,
    NOW,
    PUBLIC_URL,
    inbound_params,
    send_due,
    sendgrid_event,
    state,
    status_params,
    status_path,
    web_settings,
)

API_TOKEN = "api-" + "7Qx9" * 6
__all__ = ["admin", "anonymous", "console"]  # fixtures from tests.console_support


@pytest.fixture
def twilio() -> FakeTwilio:
    return FakeTwilio()  # not started: its auth token signs the webhooks


@pytest.fixture
def sendgrid() -> FakeSendGrid:
    return FakeSendGrid()  # not started: its key pair signs the batches


@pytest.fixture
def web(runtime: Runtime, settings, twilio, sendgrid) -> Runtime:
    runtime.settings = web_settings(settings, twilio, sendgrid, api_token=SecretStr(API_TOKEN))
    runtime.clock = lambda: NOW
    return runtime


@pytest.fixture
def client(web: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(web)) as test_client:
        yield test_client


def refused_writing_nothing(engine: Engine, send: Any) -> httpx2.Response:
    """``send()``'s answer, asserting it was a 403 that wrote nothing to the database."""
    with statements_that_write(engine) as written:
        answer = send()
    assert answer.status_code == 403, answer.text
    assert written == []
    return answer


# webhooks: Twilio inbound and cross-endpoint --------------------------------------------------


def _inbound_forgeries(twilio: FakeTwilio, params: dict[str, str]) -> dict[str, Any]:
    url = PUBLIC_URL + INBOUND_PATH
    other = FakeTwilio()
    tampered = {**params, "Body": "START"}
    return {
        "missing": (params, None),
        "empty": (params, ""),
        "another_token": (params, other.sign(url, params)),
        "another_host": (params, twilio.sign("https://evil.example" + INBOUND_PATH, params)),
        "another_path": (params, twilio.sign(PUBLIC_URL + status_path(), params)),
        "a_field_changed_after_signing": (tampered, twilio.sign(url, params)),
        "a_field_added_after_signing": ({**params, "OptOutType": "STOP"}, twilio.sign(url, params)),
        "a_field_dropped_after_signing": (
            {k: v for k, v in params.items() if k != "NumMedia"},
            twilio.sign(url, params),
        ),
        "lower_case_base64": (params, twilio.sign(url, params).lower()),
    }


@pytest.mark.parametrize(
    "forgery",
    [
        "missing",
        "empty",
        "another_token",
        "another_host",
        "another_path",
        "a_field_changed_after_signing",
        "a_field_added_after_signing",
        "a_field_dropped_after_signing",
        "lower_case_base64",
    ],
)
def test_a_forged_inbound_message_is_refused_and_writes_nothing(
    web, client, twilio, forgery
) -> None:
    params = inbound_params("+905431970001", "STOP")
    sent, signature = _inbound_forgeries(twilio, params)[forgery]
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    refused_writing_nothing(
        web.engine, lambda: client.post(INBOUND_PATH, data=sent, headers=headers)
    )
    genuine = {"X-Twilio-Signature": twilio.sign(PUBLIC_URL + INBOUND_PATH, params)}
    assert client.post(INBOUND_PATH, data=params, headers=genuine).status_code == 200


def test_a_status_callbacks_signature_replayed_on_the_inbound_endpoint_is_refused(
    web, client, twilio
) -> None:
    sent = send_due(web)
    params = {**status_params(sent.provider_id, "delivered"), "From": "+905431970001"}
    params["Body"] = "STOP"
    signature = twilio.sign(PUBLIC_URL + status_path(sent.public_id), params)
    refused_writing_nothing(
        web.engine,
        lambda: client.post(INBOUND_PATH, data=params, headers={"X-Twilio-Signature": signature}),
    )
    assert state(web, sent.reminder_id)[1][0].status == "accepted"


# webhooks: SendGrid timestamps and bodies -------------------------------------------------------


def _signed(sendgrid: FakeSendGrid, body: bytes, ts: str) -> dict[str, str]:
    signature, _ = sendgrid.sign(body, ts)
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
    }


def _sendgrid_forgeries(
    sendgrid: FakeSendGrid, body: bytes, max_age: int
) -> dict[str, tuple[bytes, dict[str, str]]]:
    now = int(NOW.timestamp())
    fresh = _signed(sendgrid, body, str(now))
    other_body = body.replace(b"delivered", b"bounce")
    return {
        "stale": (body, _signed(sendgrid, body, str(now - max_age - 1))),
        "from_the_future": (body, _signed(sendgrid, body, str(now + max_age + 1))),
        "timestamp_changed_after_signing": (
            body,
            {**fresh, "X-Twilio-Email-Event-Webhook-Timestamp": str(now + 1)},
        ),
        "full_width_digits": (body, _signed(sendgrid, body, str(now).translate(_FULL_WIDTH))),
        "signed_with_a_plus": (body, _signed(sendgrid, body, f"+{now}")),
        "signed_with_spaces": (body, _signed(sendgrid, body, f" {now} ")),
        "signed_as_a_float": (body, _signed(sendgrid, body, f"{now}.0")),
        "signature_of_another_body": (other_body, fresh),
        "signature_truncated": (
            body,
            {**fresh, "X-Twilio-Email-Event-Webhook-Signature": fresh[_SIG][:-8]},
        ),
    }


_SIG = "X-Twilio-Email-Event-Webhook-Signature"
_FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
SENDGRID_FORGERIES = [
    "stale",
    "from_the_future",
    "timestamp_changed_after_signing",
    "full_width_digits",
    "signed_with_a_plus",
    "signed_with_spaces",
    "signed_as_a_float",
    "signature_of_another_body",
    "signature_truncated",
]


@pytest.mark.parametrize("forgery", SENDGRID_FORGERIES)
def test_a_sendgrid_batch_that_is_stale_or_forged_is_refused_and_writes_nothing(
    web, client, sendgrid, forgery
) -> None:
    sent = send_due(web, channels="email|sms")
    body = json.dumps([sendgrid_event(sent, "delivered", "ev-sec-1")]).encode()
    forged, headers = _sendgrid_forgeries(sendgrid, body, web.settings.webhook_max_age_seconds)[
        forgery
    ]
    raw = {k: v.encode() for k, v in headers.items()}  # full-width digits are not ASCII
    refused_writing_nothing(
        web.engine, lambda: client.post(EVENTS_PATH, content=forged, headers=raw)
    )
    assert state(web, sent.reminder_id)[1][0].status == "accepted"
    now = str(int(NOW.timestamp()))
    genuine = client.post(EVENTS_PATH, content=body, headers=_signed(sendgrid, body, now))
    assert genuine.status_code == 200
    assert state(web, sent.reminder_id)[1][0].status == "delivered"


# the API ------------------------------------------------------------------------------------


def _api_routes() -> list[tuple[str, str]]:
    """(method, path) of every API route that is not the public OpenAPI document."""
    found = []
    for route in api.router.routes:
        assert isinstance(route, APIRoute)
        if route.path.endswith("/openapi.json"):
            continue
        path = re.sub(r"\{[^}]+\}", "p1", route.path)
        found += [(method, path) for method in sorted(route.methods)]
    return found


WRONG_CREDENTIALS = {
    "none": None,
    "empty_bearer": "Bearer ",
    "another_token": "Bearer " + "x" * len(API_TOKEN),
    "the_token_and_more": f"Bearer {API_TOKEN}x",
    "a_prefix_of_the_token": f"Bearer {API_TOKEN[:-1]}",
    "another_case": f"Bearer {API_TOKEN.upper()}",
    "basic_auth": "Basic " + base64.b64encode(f"api:{API_TOKEN}".encode()).decode(),
    "another_scheme": f"Token {API_TOKEN}",
    "no_scheme": API_TOKEN,
}


def test_the_api_has_routes_to_guard() -> None:
    assert {m for m, _ in _api_routes()} >= {"PUT", "GET", "DELETE"}


@pytest.mark.parametrize(("method", "path"), _api_routes())
@pytest.mark.parametrize("credentials", list(WRONG_CREDENTIALS))
def test_every_api_route_refuses_a_missing_or_wrong_token_and_writes_nothing(
    web, client, method, path, credentials
) -> None:
    header = WRONG_CREDENTIALS[credentials]
    headers = {} if header is None else {"Authorization": header}
    body = _api_body(path)
    with statements_that_write(web.engine) as written:
        answer = client.request(method, path, json=body, headers=headers)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"] == "Bearer"
    assert written == [] and API_TOKEN not in answer.text
    right = client.request(
        method, path, json=body, headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    assert right.status_code in (200, 201, 404, 422)  # the same call, let in


def _api_body(path: str) -> dict[str, Any] | None:
    if "/patients/" in path and not path.endswith("/reminders"):
        return {"given_name": "Ayşe", "email": "ayse@example.com", "consent_email": "yes"}
    if "/treatments/" in path:
        return {"patient_external_id": "p1", "protocol": "chronic_migraine",
                "administered_on": "2025-12-10"}  # fmt: skip
    return None


# the console ---------------------------------------------------------------------------------


OPEN_TO_ANYONE = {("GET", "/admin/login"), ("GET", "/admin/static/{name}")}
FORMS_FOR_ANYONE = {("POST", "/admin/login"), ("POST", "/admin/language")}


def _routes(routes: Any, prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """(full path, route) of every route, through included routers (which FastAPI >= 0.160
    keeps as ``_IncludedRouter`` entries instead of copying their routes)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        elif hasattr(route, "original_router"):
            inner = prefix + route.include_context.prefix
            yield from _routes(route.original_router.routes, inner)


def _console_routes(app: Any) -> list[tuple[str, str]]:
    found = []
    for path, route in _routes(app.routes):
        if path.startswith("/admin"):
            found += [(method, path) for method in sorted(route.methods)]
    return found


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{([^}]+)\}", lambda m: ids[m.group(1)], path)


@pytest.fixture
def console_ids(console: Runtime, now: dt.datetime) -> dict[str, str]:
    """Real ids for every path parameter of the console, so a route would really act."""
    [due] = seed_due(console.engine, 1, "sms", now)
    with console.sessions() as session:
        patient_id = session.get_one(Reminder, due.reminder_id).patient_id
        user_id = session.scalars(select(User.id).where(User.email == "staff@example.com")).one()
    return {
        "reminder_id": str(due.reminder_id),
        "patient_id": str(patient_id),
        "user_id": str(user_id),
        "code": "chronic_migraine",
        "step": "due",
        "channel": "sms",
        "language": "en",
        "name": "console.css",
    }


def test_every_console_page_asks_for_sign_in_and_every_form_needs_a_session(
    anonymous, console, console_ids
) -> None:
    routes = _console_routes(anonymous.app)
    assert len(routes) >= 20
    csrf = token(anonymous)  # an anonymous session's token: not enough for staff forms
    for method, route in routes:
        if (method, route) in OPEN_TO_ANYONE | FORMS_FOR_ANYONE:
            continue
        path = _fill(route, console_ids)
        with statements_that_write(console.engine) as written:
            if method == "GET":
                answer = anonymous.get(path, follow_redirects=False)
            else:
                answer = anonymous.post(path, data={"csrf_token": csrf}, follow_redirects=False)
        assert written == [], (method, route)
        if method == "GET":
            assert answer.status_code in (303, 307), (route, answer.status_code)
            target = urllib.parse.urlsplit(answer.headers["location"])
            assert target.path == "/admin/login", route
        else:
            assert answer.status_code == 401, (route, answer.status_code)


def test_every_console_form_refuses_a_missing_or_foreign_csrf_token(
    admin, anonymous, console, console_ids
) -> None:
    foreign = token(anonymous)
    forms = [(m, r) for m, r in _console_routes(admin.app) if m == "POST"]
    assert len(forms) >= 10
    for _method, route in forms:
        path = _fill(route, console_ids)
        for data in ({}, {"csrf_token": ""}, {"csrf_token": foreign}):
            fields = {"text": "Hi", "version": "1", "base_version": "0", "email": "x@example.com",
                      "password": PASSWORD, "language": "en", "role": "staff", **data}  # fmt: skip
            with statements_that_write(console.engine) as written:
                answer = admin.post(path, data=fields, follow_redirects=False)
            assert answer.status_code == 403, (route, data, answer.status_code)
            assert "This form has expired" in answer.text
            assert written == [], (route, data)
    assert sign_in(admin, "admin@example.com").status_code == 303  # the token itself works
