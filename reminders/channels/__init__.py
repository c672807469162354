"""Channels: one small sender per way of reaching a patient.

Every sender implements :class:`Sender`. Provider SDK exceptions never leave a sender; they
become a :class:`ChannelError` whose ``kind`` tells the engine what to do::

    ChannelError
    ├── TRANSIENT      retry the same channel later (429, 5xx, connection refused, connect timeout)
    ├── IN_DOUBT       the request went out but no answer came back (read timeout): the
    │                  provider may have accepted it, so it waits for a callback, not a retry
    ├── PERMANENT      this address will never work: fall back to the next channel
    ├── OPTED_OUT      the recipient said STOP at the provider: record it, fall back
    └── MISCONFIGURED  our credentials or sender are wrong: pause the channel, alert, no retry storm
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime  # not `import email`: a submodule is named so
from typing import Any, Protocol

from reminders.templating import Rendered


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"
    IN_DOUBT = "in_doubt"
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
    # Seconds left, at the call, for it to reach the patient (until the send window's end or
    # the reminder's expiry, whichever is first): Twilio drops it if still queued then
    # (``ValidityPeriod``). None: no limit of ours.
    valid_for: float | None = None


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


def retry_after(headers: Mapping[str, str] | None, now: float) -> float | None:
    """Seconds a provider asked us to wait: ``Retry-After`` (seconds or an HTTP date), else
    ``X-RateLimit-Reset`` (epoch seconds); ``now`` is the wall clock (``time.time()``)."""
    if not headers:
        return None
    raw = (headers.get("Retry-After") or "").strip()
    if raw:
        if raw.isdigit():
            return float(raw)
        try:
            return max(parsedate_to_datetime(raw).timestamp() - now, 0.0)
        except (TypeError, ValueError):
            pass
    reset = (headers.get("X-RateLimit-Reset") or "").strip()
    if reset.isdigit():
        return max(float(reset) - now, 0.0)
    return None
