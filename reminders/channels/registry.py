"""Which senders a configuration turns on, and why the others are off."""

from __future__ import annotations

from reminders.channels import Sender
from reminders.channels.console import ConsoleSender
from reminders.settings import Settings

CHANNELS = ("email", "sms", "whatsapp")


def channel_status(settings: Settings) -> dict[str, str | None]:
    """For each channel: None when it can send, else the reason it is off."""
    if settings.delivery_mode == "console":
        return dict.fromkeys(CHANNELS)
    twilio = None
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        twilio = "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set"
    sms = twilio
    if not sms and not (settings.twilio_messaging_service_sid or settings.twilio_sms_from):
        sms = "neither TWILIO_MESSAGING_SERVICE_SID nor TWILIO_SMS_FROM is set"
    whatsapp = twilio or (
        None if settings.twilio_whatsapp_from else "TWILIO_WHATSAPP_FROM is not set"
    )
    email = None
    if not settings.sendgrid_api_key:
        email = "SENDGRID_API_KEY is not set"
    elif not settings.sendgrid_from_email:
        email = "SENDGRID_FROM_EMAIL is not set"
    return {"email": email, "sms": sms, "whatsapp": whatsapp}


def build_senders(settings: Settings) -> dict[str, Sender]:
    """The senders for every channel that is on."""
    if settings.delivery_mode == "console":
        return {c: ConsoleSender(c) for c in CHANNELS}
    from reminders.channels import providers  # the SDKs load only when they are used

    status = channel_status(settings)
    return providers.build(settings, [c for c in CHANNELS if status[c] is None])
