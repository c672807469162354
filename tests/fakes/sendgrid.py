"""Fake SendGrid Mail v3 API on 127.0.0.1, for driving the real ``sendgrid`` SDK in tests.

Serves ``POST /v3/mail/send`` like SendGrid: ``Authorization: Bearer <key>`` (else 401), body
at most ``max_body_bytes`` (else 413), JSON checked against the vendored SendMail schema
(``specs/``, with the fixes listed in ``specs/README.md``) and the API's own rules (400 with every
error naming its ``field``), ``from.email`` in ``verified_senders`` when that set is given (else
403). Success: 202, empty body, ``X-Message-Id``; ``mail_settings.sandbox_mode.enable``: 200 and
nothing recorded in ``mails``. Errors: ``{"errors": [{"message", "field", "help": null}]}``.

    with FakeSendGrid(verified_senders={"clinic@example.org"}) as fake:
        sg = SendGridAPIClient(fake.api_key, host=fake.base_url)
        sg.client.timeout = 5

Scripting (see also ``_server.FakeServer``: ``hang_next``, ``set_handler``, ``end_outage``,
``reset``, ``requests``, ``wait_for_requests``, ``max_rate``):

- ``fail_next(status=429, times=1, headers=None, message=None, field=None)``; a 429 without
  ``headers`` carries ``X-RateLimit-Limit/Remaining/Reset`` (reset one second ahead)
- ``fail_to(email, status=400, message=None, field=None)``: any request naming that recipient
- ``outage(status=503, until=None)``: every request fails until ``time.monotonic() >= until``

Event webhook: the fake owns a P-256 key pair. Give ``public_key_b64`` to the service, build
events with ``event(mail, email, name, **fields)`` and post them signed with
``signed_event_post(url, events, timestamp=None)``; ``sign(body, ts)`` gives the headers' values.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jsonschema import Draft7Validator  # type: ignore[import-untyped]

from tests.fakes._server import FakeServer, RecordedRequest, Reply, WebhookResult, post

SPEC_SCHEMA = json.loads(
    (Path(__file__).parent / "specs" / "sendgrid_send_mail_request.json").read_text()
)["schema"]
SCHEMA = copy.deepcopy(SPEC_SCHEMA)  # the spec types the top-level custom_args as a string
SCHEMA["properties"]["custom_args"] = {"type": "object", "additionalProperties": {"type": "string"}}
SCHEMA["properties"]["personalizations"]["items"]["properties"]["custom_args"][
    "additionalProperties"
] = {"type": "string"}
_VALIDATOR = Draft7Validator(SCHEMA)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MESSAGES = {  # SendGrid's own wording
    "from": "The from object must be provided for every email send. It is an object that "
    "requires the email parameter, but may also contain a name parameter.",
    "personalizations": "The personalizations field is required and must have at least one "
    "personalization.",
    "subject": "The subject is required. You can get around this requirement if you use a "
    "template with a subject defined or if every personalization has a subject defined.",
    "content": "Unless a valid template_id is provided, the content parameter is required. There "
    "must be at least one defined content block.",
    "to": "The to array is required for all personalization objects, and must have at least one "
    "email object with a valid email address.",
    "email": "Does not contain a valid address.",
    "from.email": "The from email does not contain a valid address.",
    "recipients": "The total number of recipients must be no more than 1000.",
    "order": "If present, text/plain content must be first, followed by text/html content, "
    "followed by any other content.",
}
_UNVERIFIED = (
    "The from address does not match a verified Sender Identity. Mail cannot be sent until this "
    "error is resolved. Visit https://sendgrid.com/docs/for-developers/sending-email/"
    "sender-identity/ to see the Sender Identity requirements"
)


def sendgrid_error(
    status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Reply:
    """A Reply carrying SendGrid's error body (usable from ``set_handler`` handlers)."""
    return _errors(status, [(message, field)], headers)


def _errors(
    status: int, errors: list[tuple[str, str | None]], headers: dict[str, str] | None = None
) -> Reply:
    body = {"errors": [{"message": m, "field": f, "help": None} for m, f in errors]}
    return Reply(
        status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


@dataclass
class SentMail:
    """A mail send the fake accepted (202)."""

    message_id: str
    body: dict[str, Any]
    from_email: str
    recipients: list[str]  # every to, cc and bcc address, in order
    received_at: float


class FakeSendGrid(FakeServer):
    """Fake SendGrid Mail Send API; see the module docstring for behaviour and scripting."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        verified_senders: set[str] | None = None,
        max_body_bytes: int = 30 * 1024 * 1024,
    ) -> None:
        super().__init__()
        self.api_key = api_key or f"SG.{secrets.token_urlsafe(16)}.{secrets.token_urlsafe(32)}"
        self.verified_senders = verified_senders  # None: every sender is verified
        self.max_body_bytes = max_body_bytes
        self._mails: list[SentMail] = []
        self._fail_to: dict[str, Reply] = {}
        self._private_key = ec.generate_private_key(ec.SECP256R1())
        der = self._private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key_b64 = base64.b64encode(der).decode()

    @property
    def mails(self) -> list[SentMail]:
        """Snapshot of the accepted mail sends, oldest first."""
        with self._lock:
            return list(self._mails)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._mails.clear()
            self._fail_to.clear()

    # scripting ----------------------------------------------------------------------------
    def fail_next(
        self,
        status: int = 429,
        times: int = 1,
        *,
        headers: dict[str, str] | None = None,
        message: str | None = None,
        field: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests with this error (before auth and validation)."""
        if headers is None and status == 429:
            headers = {
                "X-RateLimit-Limit": "600",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(time.time()) + 1),
            }
        default = "too many requests" if status == 429 else f"HTTP {status}"
        self._push_failures(sendgrid_error(status, message or default, field, headers), times)

    def fail_to(
        self, email: str, status: int = 400, message: str | None = None, field: str | None = None
    ) -> None:
        """Reject every valid send that names ``email`` as a recipient."""
        with self._lock:
            self._fail_to[email.lower()] = sendgrid_error(
                status, message or f"Recipient {email} rejected", field
            )

    def outage(self, status: int = 503, until: float | None = None) -> None:
        """Fail every request until monotonic time ``until`` (None: until ``end_outage()``)."""
        self._set_outage(sendgrid_error(status, "service unavailable"), until)

    # event webhook ------------------------------------------------------------------------
    def sign(self, body: bytes, ts: str | None = None) -> tuple[str, str]:
        """(X-Twilio-Email-Event-Webhook-Signature, -Timestamp) for ``body`` sent at ``ts``."""
        ts = ts or str(int(time.time()))
        signature = self._private_key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode(), ts

    def signed_event_post(
        self, url: str, events: list[dict[str, Any]], timestamp: str | None = None
    ) -> WebhookResult:
        """POST ``events`` as SendGrid's signed event webhook does."""
        body = json.dumps(events).encode()
        signature, ts = self.sign(body, timestamp)
        return post(
            url,
            body,
            {
                "Content-Type": "application/json",
                "User-Agent": "SendGrid Event API",
                "X-Twilio-Email-Event-Webhook-Signature": signature,
                "X-Twilio-Email-Event-Webhook-Timestamp": ts,
            },
        )

    def event(self, mail: SentMail, email: str, name: str, **fields: Any) -> dict[str, Any]:
        """An event for recipient ``email`` of ``mail`` (custom_args included, as SendGrid does)."""
        args = dict(mail.body.get("custom_args") or {})
        for p in mail.body["personalizations"]:
            if email in [r["email"] for k in ("to", "cc", "bcc") for r in p.get(k, [])]:
                args.update(p.get("custom_args") or {})
        event = {
            **args,
            "email": email,
            "timestamp": int(time.time()),
            "event": name,
            "sg_event_id": secrets.token_urlsafe(16),
            "sg_message_id": f"{mail.message_id}.recvd-{secrets.token_hex(5)}-1-0.0",
            "smtp-id": f"<{mail.message_id}@geopod-ismtpd-1>",
        }
        if mail.body.get("categories"):
            event["category"] = list(mail.body["categories"])
        return {**event, **fields}

    # request processing ---------------------------------------------------------------------
    def _parse(self, request: RecordedRequest) -> Any:
        raw = request.body
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as error:
                raise ValueError("bad gzip body") from error
        return json.loads(raw)

    def _process(self, request: RecordedRequest) -> Reply:
        if request.path != "/v3/mail/send":
            return sendgrid_error(404, "not found")
        if request.headers.get("Authorization", "") != f"Bearer {self.api_key}":
            return sendgrid_error(
                401, "The provided authorization grant is invalid, expired, or revoked"
            )
        if request.method != "POST":
            return sendgrid_error(405, "method not allowed")
        if len(request.body) > self.max_body_bytes:
            return sendgrid_error(413, "content too large")
        try:
            body = self._parse(request)
        except ValueError:
            return sendgrid_error(400, "Bad Request")
        errors = _check(body)
        if errors:
            return _errors(400, errors)
        sender = body["from"]["email"]
        if self.verified_senders is not None and sender.lower() not in {
            s.lower() for s in self.verified_senders
        }:
            return sendgrid_error(403, _UNVERIFIED, "from")
        recipients = _recipients(body)
        with self._lock:
            failure = next(
                (self._fail_to[r.lower()] for r in recipients if r.lower() in self._fail_to), None
            )
        if failure is not None:
            return failure
        if ((body.get("mail_settings") or {}).get("sandbox_mode") or {}).get("enable") is True:
            return Reply(200)
        message_id = secrets.token_urlsafe(16)  # 22 characters, like SendGrid's
        with self._lock:
            self._mails.append(SentMail(message_id, body, sender, recipients, request.received_at))
        return Reply(202, b"", {"X-Message-Id": message_id})


def _check(body: Any) -> list[tuple[str, str | None]]:
    """Every (message, field) error SendGrid would report for this body."""
    errors: list[tuple[str, str | None]] = []
    for err in sorted(_VALIDATOR.iter_errors(body), key=lambda e: [str(p) for p in e.path]):
        path = [str(p) for p in err.path]
        if err.validator == "required":
            path.append(next(p for p in err.validator_value if p not in err.instance))
        name = ".".join(path) or None
        errors.append((_MESSAGES.get(name or "", err.message), name))
    if errors or not isinstance(body, dict):
        return errors or [("Bad Request", None)]

    def add(key: str, field: str) -> None:
        errors.append((_MESSAGES[key], field))

    personalizations, template = body["personalizations"], body.get("template_id")
    if not personalizations:
        add("personalizations", "personalizations")
    if not _EMAIL.match(body["from"]["email"]):
        add("from.email", "from.email")
    for i, p in enumerate(personalizations):
        if not p["to"]:
            add("to", f"personalizations.{i}.to")
        for kind in ("to", "cc", "bcc"):
            for j, r in enumerate(p.get(kind, [])):
                if not _EMAIL.match(r["email"]):
                    add("email", f"personalizations.{i}.{kind}.{j}.email")
    if len(_recipients(body)) > 1000:
        add("recipients", "personalizations")
    if not (template or body.get("subject") or all(p.get("subject") for p in personalizations)):
        add("subject", "subject")
    types = [c["type"] for c in body.get("content") or []]
    if not template and not types:
        add("content", "content")
    first_ok = not types or types[0] in ("text/plain", "text/html")
    if "text/plain" in types[1:] or ("text/html" in types and not first_ok):
        add("order", "content")
    return errors


def _recipients(body: dict[str, Any]) -> list[str]:
    """Every to, cc and bcc address of a valid body, in order."""
    kinds = ("to", "cc", "bcc")
    return [r["email"] for p in body["personalizations"] for k in kinds for r in p.get(k, [])]
