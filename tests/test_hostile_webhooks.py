"""Hostile webhook bodies and headers, generated with hypothesis: whatever comes unsigned is
refused (403, or 400 for a body that is not even a form) writing nothing; whatever comes signed,
however odd its fields, is answered 200 or 400 without a traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from reminders.runtime import Runtime
from reminders.web.app import create_app
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.hostile_support import SOME, hostile_text, json_values, no_tracebacks
from tests.test_import_csv import statements_that_write
from tests.webhook_support import EVENTS_PATH, INBOUND_PATH, NOW, PUBLIC_URL, status_path
from tests.webhook_support import web_settings as with_webhook_secrets


@pytest.fixture
def fakes() -> tuple[FakeTwilio, FakeSendGrid]:
    return FakeTwilio(), FakeSendGrid()  # not started: their secrets sign the webhooks


@pytest.fixture
def hooks(runtime: Runtime, fakes: tuple[FakeTwilio, FakeSendGrid]) -> Iterator[TestClient]:
    runtime.settings = with_webhook_secrets(runtime.settings, *fakes)
    runtime.clock = lambda: NOW
    with TestClient(create_app(runtime)) as client:
        yield client


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
WEBHOOKS = [status_path("x"), INBOUND_PATH, EVENTS_PATH]


@SOME
@given(
    path=st.sampled_from(WEBHOOKS),
    body=st.binary(max_size=300),
    signature=st.none() | header_text,
    timestamp=st.none() | header_text | st.integers(0, 2**40).map(str),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "application/json", "text/plain"]
    ),
)
def test_an_unsigned_webhook_is_refused_whatever_its_body_and_headers(
    hooks, caplog, path, body, signature, timestamp, content_type
) -> None:
    headers = {"Content-Type": content_type}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
        headers["X-Twilio-Email-Event-Webhook-Signature"] = signature
    if timestamp is not None:
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = timestamp
    engine = hooks.app.state.runtime.engine  # type: ignore[attr-defined]
    with no_tracebacks(caplog), statements_that_write(engine) as written:
        answer = hooks.post(path, content=body, headers=headers)
    assert answer.status_code in (400, 403), (answer.status_code, answer.text)
    assert written == []


form_fields = st.dictionaries(
    st.sampled_from(["MessageSid", "MessageStatus", "ErrorCode", "From", "To", "Body",
                     "OptOutType", "NumMedia", "SmsSid"]) | hostile_text,
    hostile_text,
    max_size=8,
)  # fmt: skip


@SOME
@given(path=st.sampled_from([status_path("x"), status_path(), INBOUND_PATH]), fields=form_fields)
def test_a_signed_twilio_webhook_with_hostile_fields_is_answered_without_a_traceback(
    hooks, fakes, caplog, path, fields
) -> None:
    with no_tracebacks(caplog):
        answer = _signed_twilio(hooks, fakes[0], path, fields)
    assert answer.status_code in (200, 400), (answer.status_code, answer.text)


events = st.lists(
    st.dictionaries(
        st.sampled_from(["event", "sg_event_id", "email", "delivery", "sg_message_id",
                         "reason", "type", "timestamp", "asm_group_id"]) | hostile_text,
        json_values,
        max_size=6,
    ) | json_values,
    max_size=4,
)  # fmt: skip


@SOME
@given(batch=st.one_of(events, json_values))
def test_a_signed_sendgrid_batch_of_hostile_events_is_answered_without_a_traceback(
    hooks, fakes, caplog, batch
) -> None:
    with no_tracebacks(caplog):
        answer = _signed_sendgrid(hooks, fakes[1], batch)
    assert answer.status_code in (200, 400), (answer.status_code, answer.text)


def _signed_twilio(hooks: TestClient, twilio: FakeTwilio, path: str, fields: dict[str, str]) -> Any:
    signature = twilio.sign(PUBLIC_URL + path, fields)
    return hooks.post(path, data=fields, headers={"X-Twilio-Signature": signature})


def _signed_sendgrid(hooks: TestClient, sendgrid: FakeSendGrid, batch: Any) -> Any:
    body = json.dumps(batch).encode()
    signature, ts = sendgrid.sign(body, str(int(NOW.timestamp())))
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
    }
    return hooks.post(EVENTS_PATH, content=body, headers=headers)


NUL_CASES = {
    "inbound From": lambda h, tw, sg: _signed_twilio(
        h, tw, INBOUND_PATH, {"MessageSid": "SM1", "From": "+90543\x00", "Body": "STOP"}
    ),
    "status MessageSid": lambda h, tw, sg: _signed_twilio(
        h, tw, status_path("x"), {"MessageSid": "SM\x001", "MessageStatus": "delivered"}
    ),
    "event sg_event_id": lambda h, tw, sg: _signed_sendgrid(
        h, sg, [{"event": "delivered", "sg_event_id": "e\x001"}]
    ),
    "event email": lambda h, tw, sg: _signed_sendgrid(
        h, sg, [{"event": "unsubscribe", "sg_event_id": "e2", "email": "a\x00@example.com"}]
    ),
}


@pytest.mark.parametrize("case", list(NUL_CASES))
def test_a_signed_webhook_carrying_a_nul_character_is_answered_without_a_traceback(
    hooks, fakes, caplog, case
) -> None:
    with no_tracebacks(caplog):
        answer = NUL_CASES[case](hooks, *fakes)
    assert answer.status_code in (200, 400)
