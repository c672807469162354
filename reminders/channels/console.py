"""The console channel: prints what would be sent (the demo and dry runs)."""

from __future__ import annotations

import sys
import uuid
from typing import TextIO

from reminders.channels import OutboundMessage, Receipt


class ConsoleSender:
    """Writes each message to a stream instead of a provider."""

    def __init__(self, channel: str, stream: TextIO | None = None) -> None:
        self.channel = channel
        self._stream = stream

    def send(self, message: OutboundMessage) -> Receipt:
        stream = self._stream or sys.stdout
        content = message.content
        lines = [f"--- {self.channel} to {message.to} (reminder {message.reminder_id})"]
        if content.subject:
            lines.append(f"Subject: {content.subject}")
        if content.content_sid or content.content_variables:
            lines.append(
                f"Content: {content.content_sid or '(no ContentSid)'} {content.content_variables}"
            )
        lines.append(content.text)
        stream.write("\n".join(lines) + "\n")
        stream.flush()
        return Receipt(provider_id=f"console-{uuid.uuid4().hex[:16]}", status="sent")
