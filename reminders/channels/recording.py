"""A recording sender for tests: keeps every message, fails on demand."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from reminders.channels import ChannelError, OutboundMessage, Receipt

Script = Callable[[OutboundMessage], ChannelError | None]


class RecordingSender:
    """Records messages; ``script`` may return a ChannelError to raise for a message."""

    def __init__(self, channel: str, script: Script | None = None) -> None:
        self.channel = channel
        self.script = script
        self.sent: list[OutboundMessage] = []
        self.attempts: list[OutboundMessage] = []
        self._lock = threading.Lock()

    def send(self, message: OutboundMessage) -> Receipt:
        with self._lock:
            self.attempts.append(message)
        error = self.script(message) if self.script else None
        if error is not None:
            raise error
        with self._lock:
            self.sent.append(message)
        return Receipt(provider_id=f"rec-{uuid.uuid4().hex}", status="accepted")
