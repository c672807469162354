"""WhatsApp through Twilio: approved Content templates only, never a free-text ``Body``.

Reminders are business-initiated, so WhatsApp delivers them only as templates approved in
advance: ``ContentSid`` plus ``ContentVariables``, a JSON string built from the template's
variable mapping (``{"1": "Ayşe", "2": "12 Mar 2026"}``).
"""

from __future__ import annotations

import json

from reminders.channels import ChannelError, ErrorKind, OutboundMessage, Receipt
from reminders.channels.twilio_common import Twilio, whatsapp_address


class WhatsAppSender:
    """Sends the approved template of a rendered message from one WhatsApp sender."""

    channel = "whatsapp"

    def __init__(self, twilio: Twilio, *, from_number: str) -> None:
        self._twilio = twilio
        self._from = whatsapp_address(from_number)

    def send(self, message: OutboundMessage) -> Receipt:
        content = message.content
        if not content.content_sid:
            # Without an approved template WhatsApp would drop the message (63016): our setup.
            raise ChannelError(
                ErrorKind.MISCONFIGURED, "no approved WhatsApp ContentSid", code="content_sid"
            )
        variables = json.dumps(content.content_variables, ensure_ascii=False)
        created = self._twilio.create(
            message,
            to=whatsapp_address(message.to),
            from_=self._from,
            content_sid=content.content_sid,
            content_variables=variables,
        )
        details = {"content_sid": content.content_sid}
        return Receipt(provider_id=created.sid, status=created.status, details=details)
