"""Which senders a configuration turns on, and why the others are off."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from reminders.channels import Sender
from reminders.channels.console import ConsoleSender
from reminders.logs import get_logger
from reminders.settings import Settings

log = get_logger(__name__)

CHANNELS = ("email", "sms", "whatsapp")
_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SENDER_ID = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$|^\d{3,8}$")  # alphanumeric, short
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")
_TEMPLATE_ID = re.compile(r"^d-[0-9a-fA-F]{32}$")


def channel_status(settings: Settings) -> dict[str, str | None]:
    """For each channel: None when it can send, else the reason it is off."""
    if settings.delivery_mode == "console":
        return dict.fromkeys(CHANNELS)
    twilio = _twilio_problem(settings)
    return {
        "email": _email_problem(settings),
        "sms": twilio or _sms_problem(settings),
        "whatsapp": twilio or _whatsapp_problem(settings),
    }


def _twilio_problem(s: Settings) -> str | None:
    if not (s.twilio_account_sid and s.twilio_auth_token):
        return "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set"
    if not _ACCOUNT_SID.match(s.twilio_account_sid):
        return "TWILIO_ACCOUNT_SID is not an account SID (AC followed by 32 hex digits)"
    return _url_problem("TWILIO_API_BASE_URL", s.twilio_api_base_url)


def _sms_problem(s: Settings) -> str | None:
    if s.twilio_messaging_service_sid:
        if not _SERVICE_SID.match(s.twilio_messaging_service_sid):
            return "TWILIO_MESSAGING_SERVICE_SID is not a SID (MG followed by 32 hex digits)"
        return None
    if not s.twilio_sms_from:
        return "neither TWILIO_MESSAGING_SERVICE_SID nor TWILIO_SMS_FROM is set"
    if not (_E164.match(s.twilio_sms_from) or _SENDER_ID.match(s.twilio_sms_from)):
        return "TWILIO_SMS_FROM is not an E.164 number (+905321234567) or a sender ID"
    return None


def _whatsapp_problem(s: Settings) -> str | None:
    if not s.twilio_whatsapp_from:
        return "TWILIO_WHATSAPP_FROM is not set"
    if not _E164.match(s.twilio_whatsapp_from.removeprefix("whatsapp:")):
        return "TWILIO_WHATSAPP_FROM is not an E.164 number (whatsapp:+905321234567)"
    return None


def _email_problem(s: Settings) -> str | None:
    if not s.sendgrid_api_key:
        return "SENDGRID_API_KEY is not set"
    if not s.sendgrid_from_email:
        return "SENDGRID_FROM_EMAIL is not set"
    if not _EMAIL.match(s.sendgrid_from_email):
        return "SENDGRID_FROM_EMAIL is not an email address"
    if s.sendgrid_template_id and not _TEMPLATE_ID.match(s.sendgrid_template_id):
        return "SENDGRID_TEMPLATE_ID is not a dynamic template id (d- and 32 hex digits)"
    return _url_problem("SENDGRID_API_HOST", s.sendgrid_api_host)


def _url_problem(name: str, url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{name} is not an http(s) URL"
    return None


def build_senders(settings: Settings) -> dict[str, Sender]:
    """The senders for every channel that is on."""
    if settings.delivery_mode == "console":
        return {c: ConsoleSender(c) for c in CHANNELS}
    from reminders.channels import providers  # the SDKs load only when they are used

    status = channel_status(settings)
    for channel, reason in status.items():
        if reason is not None:
            log.warning("channel_off", channel=channel, reason=reason)
    return providers.build(settings, [c for c in CHANNELS if status[c] is None])
