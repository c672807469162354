"""Settings and messages for tests that drive the real SDKs against the provider fakes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from reminders.channels import Attachment, OutboundMessage
from reminders.channels.registry import build_senders
from reminders.runtime import Runtime, build_runtime
from reminders.settings import Settings
from reminders.templating import Rendered
from tests.fakes import FakeSendGrid, FakeTwilio

SMS_FROM = "+15005550006"
WHATSAPP_FROM = "+14155238886"
SERVICE_SID = "MG" + "a1" * 16
CONTENT_SID = "HX" + "b2" * 16
TEMPLATE_ID = "d-" + "c3" * 16
FROM_EMAIL = "clinic@example.org"
PUBLIC_URL = "https://reminders.example.org"


def provider_settings(
    base: Settings,
    twilio: FakeTwilio | None = None,
    sendgrid: FakeSendGrid | None = None,
    **overrides: Any,
) -> Settings:
    """``base`` with the channels of the given fakes configured (and ``overrides`` on top)."""
    values: dict[str, Any] = {"public_url": PUBLIC_URL, "provider_timeout": 2.0}
    if twilio is not None:
        values |= {
            "twilio_account_sid": twilio.account_sid,
            "twilio_auth_token": twilio.auth_token,
            "twilio_api_base_url": twilio.base_url,
            "twilio_sms_from": SMS_FROM,
            "twilio_whatsapp_from": WHATSAPP_FROM,
        }
    if sendgrid is not None:
        values |= {
            "sendgrid_api_key": sendgrid.api_key,
            "sendgrid_api_host": sendgrid.base_url,
            "sendgrid_from_email": FROM_EMAIL,
        }
    values |= overrides
    fields = {**base.model_dump(), **values}
    return Settings.model_validate({k: v for k, v in fields.items() if v is not None})


@contextmanager
def live_runtime(settings: Settings) -> Iterator[Runtime]:
    """A runtime with the real senders the settings describe (the SDKs against the fakes);
    its database is emptied afterwards."""
    from tests.conftest import empty_database

    rt = build_runtime(settings, build_senders(settings))
    try:
        yield rt
    finally:
        empty_database(rt)
        rt.close()


def outbound(
    channel: str,
    to: str,
    *,
    text: str = "Ayşe, your next visit is due from 4 Mar 2026.",
    subject: str | None = None,
    html: str | None = None,
    content_sid: str | None = None,
    variables: dict[str, str] | None = None,
    attachments: tuple[Attachment, ...] = (),
    delivery_id: str = "dlv0123456789abcdef",
    reminder_id: int = 42,
) -> OutboundMessage:
    content = Rendered(
        text=text,
        subject=subject,
        html=html,
        content_sid=content_sid,
        content_variables=dict(variables or {}),
    )
    return OutboundMessage(channel, to, content, delivery_id, reminder_id, attachments)
