"""Email through SendGrid's Mail Send API (``POST /v3/mail/send``).

The staff template's text and HTML parts (or, when ``SENDGRID_TEMPLATE_ID`` names a dynamic
template, the same parts as its ``dynamic_template_data``), our ids in the personalization's
``custom_args`` (the event webhook echoes them back), the unsubscribe group when configured and
the message's attachments. SendGrid's answers become ChannelErrors::

    python_http_client HTTPError
    ├── 400 naming only recipient fields       PERMANENT      (this address never works)
    ├── 400 otherwise, 401, 403, 404, 413      MISCONFIGURED  (our key, sender or payload)
    └── 408, 429, 5xx                          TRANSIENT      (X-RateLimit-Reset honoured)
    URLError (refused, connect timeout)        TRANSIENT      (the request never went out)
    TimeoutError, OSError, HTTPException       IN_DOUBT       (sent, no answer: it may go out)
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
import urllib.error
from collections.abc import Callable
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Asm,
    Attachment,
    Content,
    CustomArg,
    Disposition,
    FileContent,
    FileName,
    FileType,
    From,
    GroupId,
    Mail,
    Personalization,
    To,
)
from sendgrid.helpers.mail.exceptions import SendGridException

from reminders.channels import ChannelError, ErrorKind, OutboundMessage, Receipt, retry_after
from reminders.settings import Settings
from reminders.templating import Rendered

_RECIPIENT_FIELD = re.compile(r"^personalizations(\.\d+)?\.(to|cc|bcc)\b")


class EmailSender:
    """Sends one reminder email per call through the official ``sendgrid`` SDK."""

    channel = "email"

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        if not (settings.sendgrid_api_key and settings.sendgrid_from_email):
            raise ValueError("SENDGRID_API_KEY and SENDGRID_FROM_EMAIL are needed for email")
        key = settings.sendgrid_api_key.get_secret_value()
        self._sg = SendGridAPIClient(key, host=settings.sendgrid_api_host.rstrip("/"))
        self._sg.client.timeout = settings.provider_timeout  # the SDK's default waits forever
        # The SDK would add this to its header dict (shared by every dispatch worker) on the
        # first send, while other threads read it; set it before any thread does.
        self._sg.client.request_headers.setdefault("Content-Type", "application/json")
        self._from = settings.sendgrid_from_email
        default_name = Settings.model_fields["clinic_name"].default
        self._from_name = settings.clinic_name if settings.clinic_name != default_name else None
        self._template_id = settings.sendgrid_template_id
        self._group_id = settings.sendgrid_unsubscribe_group_id
        self._clock = clock

    def send(self, message: OutboundMessage) -> Receipt:
        try:
            body = self.build(message)
        except SendGridException as exc:  # the helpers refuse content that looks like a key
            raise ChannelError(ErrorKind.MISCONFIGURED, str(exc), code="content") from None
        try:
            response = self._sg.send(body)
        except HTTPError as exc:
            raise self.classify(exc.status_code, exc.body, exc.headers) from None
        except urllib.error.URLError as exc:  # urllib wraps what fails before the request is sent
            raise ChannelError(
                ErrorKind.TRANSIENT, f"SendGrid unreachable: {type(exc).__name__}", code="network"
            ) from None
        except (OSError, http.client.HTTPException) as exc:  # a read timeout, a dropped answer
            text = f"SendGrid did not answer ({type(exc).__name__}): the mail may have been queued"
            raise ChannelError(ErrorKind.IN_DOUBT, text, code="no_answer") from None
        message_id = response.headers.get("X-Message-Id") or ""
        return Receipt(provider_id=message_id, status="accepted")

    def build(self, message: OutboundMessage) -> dict[str, Any]:
        """The Mail Send request body for ``message``."""
        mail = Mail()
        mail.from_email = _address(From(), self._from, self._from_name)
        person = Personalization()
        person.add_to(_address(To(), message.to))
        person.add_custom_arg(CustomArg("delivery", message.delivery_id))
        person.add_custom_arg(CustomArg("reminder", str(message.reminder_id)))
        self._add_content(mail, person, message.content)
        mail.add_personalization(person)
        if self._group_id is not None:
            mail.asm = Asm(GroupId(self._group_id))
        for item in message.attachments:
            mail.add_attachment(_attachment(item.filename, item.mime_type, item.content))
        body: dict[str, Any] = mail.get()
        return body

    def _add_content(self, mail: Mail, person: Personalization, content: Rendered) -> None:
        """Text then HTML parts, or the same parts as a dynamic template's data."""
        if self._template_id:
            mail.template_id = self._template_id
            parts = {"subject": content.subject, "text": content.text, "html": content.html}
            person.dynamic_template_data = {k: v for k, v in parts.items() if v}
            return
        mail.subject = content.subject or ""
        mail.add_content(Content("text/plain", content.text))
        if content.html:
            mail.add_content(Content("text/html", content.html))

    def classify(self, status: int, body: bytes | str | None, headers: Any) -> ChannelError:
        """The ChannelError for an error answer."""
        errors = _errors(body)
        text = f"SendGrid {status}: " + ("; ".join(m for m, _ in errors) or "error")
        if status in (408, 429) or status >= 500:
            wait = retry_after(headers, self._clock())
            return ChannelError(ErrorKind.TRANSIENT, text, code=str(status), retry_after=wait)
        fields = [f for _, f in errors]
        if status == 400 and fields and all(f and _RECIPIENT_FIELD.match(f) for f in fields):
            return ChannelError(ErrorKind.PERMANENT, text, code=str(status))
        return ChannelError(ErrorKind.MISCONFIGURED, text, code=str(status))


def _address(target: Any, email: str, name: str | None = None) -> Any:
    """Fill a From/To as given: their constructors would read a string without ``@`` as a
    name and ``"A <b@c>"`` as name and address."""
    target.email = email
    if name:
        target.name = name
    return target


def _attachment(filename: str, mime_type: str, content: bytes) -> Attachment:
    return Attachment(
        FileContent(base64.b64encode(content).decode("ascii")),
        FileName(filename),
        FileType(mime_type),
        Disposition("attachment"),
    )


def _errors(body: bytes | str | None) -> list[tuple[str, str | None]]:
    """(message, field) of each error in SendGrid's ``{"errors": [...]}`` body."""
    try:
        data = json.loads(body or b"")
        return [(str(e.get("message") or ""), e.get("field")) for e in data["errors"]]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []
