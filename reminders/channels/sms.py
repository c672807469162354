"""SMS through Twilio: from a Messaging Service or a number, segments counted before sending."""

from __future__ import annotations

from reminders.channels import OutboundMessage, Receipt, segments
from reminders.channels.twilio_common import Twilio


class SmsSender:
    """Sends the rendered text; the receipt records its segment count and encoding."""

    channel = "sms"

    def __init__(
        self, twilio: Twilio, *, messaging_service_sid: str | None, from_number: str | None
    ) -> None:
        if not (messaging_service_sid or from_number):
            raise ValueError("an SMS sender needs a Messaging Service or a number")
        self._twilio = twilio
        self._sender = (
            {"messaging_service_sid": messaging_service_sid}
            if messaging_service_sid
            else {"from_": from_number}
        )

    def send(self, message: OutboundMessage) -> Receipt:
        body = message.content.text
        counted = segments.count(body)
        created = self._twilio.create(message, to=message.to, body=body, **self._sender)
        details = {"segments": counted.segments, "encoding": counted.encoding}
        return Receipt(provider_id=created.sid, status=created.status, details=details)
