"""Provider-backed senders (SendGrid, Twilio). Filled in by the channels work."""

from __future__ import annotations

from reminders.channels import Sender
from reminders.settings import Settings


def build(settings: Settings, channels: list[str]) -> dict[str, Sender]:
    raise NotImplementedError("provider channels are not built yet")
