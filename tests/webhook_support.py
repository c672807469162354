"""Helpers for the webhook, HTTP and in-doubt tests: settings naming the fakes' secrets, a
reminder sent through the real dispatcher, signed posts made with the SDKs' own helpers, the
state of a reminder and its deliveries, and a live uvicorn server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from reminders.dispatch import Dispatcher
from reminders.models import Consent, Delivery, DeliveryEvent, Patient, Reminder, Reply
from reminders.planner import plan_pending
from reminders.runtime import Runtime
from reminders.settings import Settings
from tests import factories
from tests.fakes import FakeSendGrid, FakeTwilio

PUBLIC_URL = "https://reminders.example.org:8443"  # a port: Twilio signs it as requested
NOW = dt.datetime(2026, 3, 4, 8, 0, tzinfo=dt.UTC)  # 11:00 in Istanbul, inside the send window
TREATED = NOW.date() - dt.timedelta(days=84)  # chronic_migraine: the window opens today
STATUS_PATH = "/webhooks/twilio/status"
INBOUND_PATH = "/webhooks/twilio/inbound"
EVENTS_PATH = "/webhooks/sendgrid/events"


def web_settings(
    base: Settings,
    twilio: FakeTwilio | None = None,
    sendgrid: FakeSendGrid | None = None,
    **overrides: Any,
) -> Settings:
    """``base`` with the webhook secrets of the given fakes and a public URL."""
    values: dict[str, Any] = {"public_url": PUBLIC_URL}
    if twilio is not None:
        values |= {"twilio_account_sid": twilio.account_sid, "twilio_auth_token": twilio.auth_token}
    if sendgrid is not None:
        values["sendgrid_webhook_public_key"] = sendgrid.public_key_b64
    fields = {**base.model_dump(), **values, **overrides}
    return Settings.model_validate({k: v for k, v in fields.items() if v is not None})


@dataclass(frozen=True)
class Sent:
    """A reminder sent by the dispatcher, and the delivery that sent it."""

    patient_id: int
    reminder_id: int
    delivery_id: int
    public_id: str
    provider_id: str
    channel: str
    address: str


def plan_due(rt: Runtime, now: dt.datetime = NOW, **patient: Any) -> int:
    """A new patient whose `due` reminder is due at ``now``; returns the reminder id."""
    with rt.sessions() as s, s.begin():
        p = factories.patient(s, **patient)
        factories.treatment(s, p, now.date() - dt.timedelta(days=84))
        patient_id = p.id
    plan_pending(rt, now=now)
    with rt.sessions() as s:
        query = select(Reminder.id).where(Reminder.patient_id == patient_id, Reminder.step == "due")
        return s.scalars(query).one()


def dispatch(rt: Runtime, now: dt.datetime = NOW) -> dict[str, int]:
    dispatcher = Dispatcher(rt, "test")
    try:
        return dict(dispatcher.run_once(now=now))
    finally:
        dispatcher.close()


def send_due(rt: Runtime, now: dt.datetime = NOW, **patient: Any) -> Sent:
    """Plan and dispatch a `due` reminder for a new patient; the delivery that was accepted."""
    reminder_id = plan_due(rt, now, **patient)
    dispatch(rt, now)
    _, deliveries = state(rt, reminder_id)
    d = deliveries[-1]
    assert d.provider_message_id, d.status
    return Sent(
        _patient_of(rt, reminder_id),
        reminder_id,
        d.id,
        d.public_id,
        d.provider_message_id,
        d.channel,
        d.address,
    )


def _patient_of(rt: Runtime, reminder_id: int) -> int:
    with rt.sessions() as s:
        return s.get_one(Reminder, reminder_id).patient_id


def phone_of(rt: Runtime, reminder_id: int) -> str:
    """The phone number of the reminder's patient."""
    with rt.sessions() as s:
        patient = s.get_one(Patient, s.get_one(Reminder, reminder_id).patient_id)
        assert patient.phone
        return patient.phone


def state(rt: Runtime, reminder_id: int) -> tuple[Reminder, list[Delivery]]:
    """The reminder and its deliveries, oldest first, detached."""
    with rt.sessions() as s:
        reminder = s.get_one(Reminder, reminder_id)
        query = select(Delivery).where(Delivery.reminder_id == reminder_id).order_by(Delivery.id)
        deliveries = list(s.scalars(query))
        s.expunge_all()
    return reminder, deliveries


def history(rt: Runtime, delivery_id: int) -> list[tuple[str, str, str | None]]:
    """(status, source, error code) of a delivery's events, in order."""
    with rt.sessions() as s:
        rows = s.scalars(
            select(DeliveryEvent)
            .where(DeliveryEvent.delivery_id == delivery_id)
            .order_by(DeliveryEvent.id)
        )
        return [(e.status, e.source, e.error_code) for e in rows]


def consent(rt: Runtime, patient_id: int, channel: str) -> Consent | None:
    with rt.sessions() as s:
        row = s.scalars(
            select(Consent).where(Consent.patient_id == patient_id, Consent.channel == channel)
        ).one_or_none()
        s.expunge_all()
    return row


def replies(rt: Runtime) -> list[Reply]:
    with rt.sessions() as s:
        rows = list(s.scalars(select(Reply).order_by(Reply.id)))
        s.expunge_all()
    return rows


# Twilio --------------------------------------------------------------------------------------


def status_params(
    sid: str, status: str, error_code: int | None = None, to: str = "+905431970001"
) -> dict[str, str]:
    """Status callback fields as Twilio posts them (with one it adds unannounced)."""
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "To": to,
        "From": "+15005550006",
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
    }
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    if status == "delivered":
        params["RawDlrDoneDate"] = "2603040801"
    return params


def inbound_params(sender: str, body: str, *, opt_out_type: str | None = None) -> dict[str, str]:
    sid = "SM" + uuid.uuid4().hex
    params = {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": "AC" + "0" * 32,
        "From": sender,
        "To": "+15005550006",
        "Body": body,
        "NumMedia": "0",
    }
    if opt_out_type:
        params["OptOutType"] = opt_out_type
    return params


def twilio_post(
    client: TestClient,
    fake: FakeTwilio,
    path: str,
    params: dict[str, str],
    *,
    public_url: str = PUBLIC_URL,
    signature: str | None = None,
) -> httpx2.Response:
    """POST ``params`` to ``path`` (with its query) signed for ``public_url`` + ``path`` by the
    SDK's RequestValidator; the request itself arrives at http://testserver."""
    signature = signature or fake.sign(public_url + path, params)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


def status_path(public_id: str | None = None) -> str:
    return f"{STATUS_PATH}?d={public_id}" if public_id else STATUS_PATH


# SendGrid ------------------------------------------------------------------------------------


def sendgrid_event(sent: Sent, name: str, event_id: str, **fields: Any) -> dict[str, Any]:
    """An event about ``sent`` as SendGrid posts it: our custom args come back as keys."""
    event = {
        "email": sent.address,
        "timestamp": int(NOW.timestamp()),
        "event": name,
        "sg_event_id": event_id,
        "sg_message_id": f"{sent.provider_id}.recvd-7b8c9d-1-0.0",
        "delivery": sent.public_id,
        "reminder": str(sent.reminder_id),
    }
    return {**event, **fields}


def sendgrid_post(
    client: TestClient,
    fake: FakeSendGrid,
    events: Any,
    *,
    at: dt.datetime = NOW,
    body: bytes | None = None,
) -> httpx2.Response:
    """POST ``events`` signed with the fake's P-256 key at ``at``."""
    raw = body if body is not None else json.dumps(events).encode()
    signature, ts = fake.sign(raw, str(int(at.timestamp())))
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
    }
    return client.post(EVENTS_PATH, content=raw, headers=headers)


# a live server ---------------------------------------------------------------------------------


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (ephemeral port); yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
