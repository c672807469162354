"""Provider-backed senders: email through SendGrid, SMS and WhatsApp through Twilio.

Built once by the composition root for the channels :mod:`reminders.channels.registry` found
configured; SMS and WhatsApp share one Twilio client (one connection pool).
"""

from __future__ import annotations

from reminders.channels import Sender
from reminders.channels.email import EmailSender
from reminders.channels.sms import SmsSender
from reminders.channels.twilio_common import Twilio
from reminders.channels.whatsapp import WhatsAppSender
from reminders.settings import Settings


def build(settings: Settings, channels: list[str]) -> dict[str, Sender]:
    """A sender for each of ``channels`` (each must be configured)."""
    senders: dict[str, Sender] = {}
    twilio = Twilio(settings) if {"sms", "whatsapp"} & set(channels) else None
    if "email" in channels:
        senders["email"] = EmailSender(settings)
    if "sms" in channels and twilio is not None:
        senders["sms"] = SmsSender(
            twilio,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            from_number=settings.twilio_sms_from,
        )
    if "whatsapp" in channels and twilio is not None and settings.twilio_whatsapp_from:
        senders["whatsapp"] = WhatsAppSender(twilio, from_number=settings.twilio_whatsapp_from)
    return senders
