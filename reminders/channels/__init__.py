"""Channels: one small sender per way of reaching a patient.

Every sender implements :class:`Sender`. Provider SDK exceptions never leave a sender; they
become a :class:`ChannelError` whose ``kind`` tells the engine what to do::

    ChannelError
    ├── TRANSIENT      retry the same channel later (429, 5xx, timeouts, connection errors)
    ├── PERMANENT      this address will never work: fall back to the next channel
    ├── OPTED_OUT      the recipient said STOP at the provider: record it, fall back
    └── MISCONFIGURED  our credentials or sender are wrong: pause the channel, alert, no retry storm
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from reminders.templating import Rendered


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    OPTED_OUT = "opted_out"
    MISCONFIGURED = "misconfigured"


class ChannelError(Exception):
    """A provider refused or failed a message; ``kind`` decides retry, fallback or pause."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind, self.code, self.retry_after = kind, code, retry_after


@dataclass(frozen=True)
class OutboundMessage:
    """What a channel sends: already rendered, addressed, and tagged with our ids."""

    channel: str
    to: str
    content: Rendered
    delivery_id: str  # unguessable public id, echoed back by provider callbacks
    reminder_id: int
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Attachment:
    filename: str
    mime_type: str
    content: bytes


@dataclass(frozen=True)
class Receipt:
    """A provider accepted the message."""

    provider_id: str
    status: str = "accepted"
    details: dict[str, Any] = field(default_factory=dict)


class Sender(Protocol):
    """Sends one message on one channel or raises ChannelError."""

    channel: str

    def send(self, message: OutboundMessage) -> Receipt: ...
