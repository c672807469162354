"""Fake Twilio Messaging API on 127.0.0.1, for driving the real ``twilio`` SDK in tests.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` (HTTP Basic, form body) answers 201 with
the Message JSON or an error ``{"code", "message", "more_info", "status"}`` (no ``type``/``title``:
twilio >= 9.10 would raise TwilioServiceException). Bodies are checked against the vendored
CreateMessageRequest schema and the rules of PROVIDERS.md (``_validate`` lists the codes).

    with FakeTwilio(auto_callbacks=True) as fake:
        client = Client(fake.account_sid, fake.auth_token, http_client=TwilioHttpClient(timeout=5))
        client.api.base_url = fake.base_url

Scripting, besides ``FakeServer``'s ``hang_next``, ``set_handler``, ``end_outage``, ``reset``:
``fail_next(status=429, code=20429, times=1, headers=None, message=None)``;
``fail_to(number, status=400, code=21211, message=None)``: permanent, per recipient;
``fail_later(number, error_code=30003, status="undelivered")``: told by status callback;
``outage(status=503, until=None, code=None)``: until ``time.monotonic()`` reaches ``until``.

Webhooks to the service, signed with ``auth_token``: ``sign``, ``post_webhook``,
``callback_params``, ``post_status``, ``post_inbound``. With ``auto_callbacks=True`` an accepted
message with a StatusCallback gets ``sent`` then ``delivered`` posted (or its ``fail_later``
status; a WhatsApp Body without ContentSid: ``failed`` 63016), recorded in ``callbacks``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from jsonschema import Draft7Validator  # type: ignore[import-untyped]
from twilio.request_validator import RequestValidator

from tests.fakes._server import FakeServer, RecordedRequest, Reply, WebhookResult, post

_SPEC = Path(__file__).parent / "specs" / "twilio_create_message_request.json"
SCHEMA = json.loads(_SPEC.read_text())["schema"]
_VALIDATOR = Draft7Validator(SCHEMA)
_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SENDER_ID = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$|^\d{3,8}$")  # alphanumeric, short code
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€\f")
_FIELD_CODES = {"MessagingServiceSid": 21705, "ContentSid": 21655, "ValidityPeriod": 90007}
_DEFAULT_CODES = {401: 20003, 404: 20404, 405: 20004, 429: 20429, 500: 20500, 503: 20503}
_WA = "whatsapp:"


def twilio_error(
    status: int, code: int | None = None, message: str | None = None, headers: Any = None
) -> Reply:
    """A Reply with Twilio's error body (also for ``set_handler`` handlers)."""
    code = code or _DEFAULT_CODES.get(status, status)
    more_info = f"https://www.twilio.com/docs/errors/{code}"
    body = {"code": code, "message": message or f"Error {code}", "more_info": more_info}
    payload = json.dumps({**body, "status": status}).encode()
    return Reply(status, payload, {"Content-Type": "application/json", **(headers or {})})


def num_segments(body: str) -> int:
    """SMS segments: 160/153 GSM-7 characters (extension ones count twice), else 70/67 UCS-2."""
    if all(c in _GSM7 or c in _GSM7_EXT for c in body):
        units, single, multi = sum(2 if c in _GSM7_EXT else 1 for c in body), 160, 153
    else:
        units, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / multi)


@dataclass
class TwilioMessage:
    """A message the fake accepted: its form ``params`` and the ``resource`` JSON answered."""

    sid: str
    to: str
    body: str | None
    content_sid: str | None
    content_variables: dict[str, Any] | None
    status_callback: str | None
    params: dict[str, Any]
    resource: dict[str, Any]
    received_at: float
    status: str


@dataclass
class CallbackAttempt:
    """A status callback posted by ``auto_callbacks``; ``status`` None: could not connect."""

    sid: str
    url: str
    params: dict[str, str]
    status: int | None
    error: str | None = None


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class FakeTwilio(FakeServer):
    """Fake Twilio Messaging API; see the module docstring for behaviour and scripting."""

    def __init__(
        self, account_sid: str | None = None, auth_token: str | None = None, *,
        auto_callbacks: bool = False, service_sender: str = "+15017122661",
    ) -> None:  # fmt: skip
        super().__init__()
        self.account_sid = account_sid or _sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.auto_callbacks = auto_callbacks
        self.service_sender = service_sender  # the From a Messaging Service picks
        self._messages: list[TwilioMessage] = []
        self._fail_to: dict[str, Reply] = {}
        self._fail_later: dict[str, tuple[int, str]] = {}
        self.callbacks: list[CallbackAttempt] = []

    @property
    def messages(self) -> list[TwilioMessage]:
        """Snapshot of the accepted messages, oldest first."""
        with self._lock:
            return list(self._messages)

    def reset(self) -> None:
        super().reset()
        with self._lock:
            for records in (self._messages, self._fail_to, self._fail_later, self.callbacks):
                records.clear()

    # scripting ---------------------------------------------------------------------------
    def fail_next(
        self, status: int = 429, code: int | None = 20429, times: int = 1, *,
        headers: dict[str, str] | None = None, message: str | None = None,
    ) -> None:  # fmt: skip
        """Answer the next ``times`` requests with this error (before auth and validation)."""
        self._push_failures(twilio_error(status, code, message, headers), times)

    def fail_to(
        self, number: str, status: int = 400, code: int = 21211, message: str | None = None
    ) -> None:
        """Reject every valid create to ``number`` (e.g. 21211, 21614, 21408, 21610)."""
        with self._lock:
            self._fail_to[number] = twilio_error(status, code, message or f"Error {code}: {number}")

    def fail_later(self, number: str, error_code: int = 30003, status: str = "undelivered") -> None:
        """Accept messages to ``number`` but report ``status`` + ErrorCode by status callback."""
        with self._lock:
            self._fail_later[number] = (error_code, status)

    def outage(
        self, status: int = 503, until: float | None = None, code: int | None = None
    ) -> None:
        """Fail every request until monotonic time ``until`` (None: until ``end_outage()``)."""
        self._set_outage(twilio_error(status, code, "Service Unavailable"), until)

    # webhooks towards the service ---------------------------------------------------------
    def sign(self, url: str, params: dict[str, str]) -> str:
        """X-Twilio-Signature for a form POST of ``params`` to ``url``."""
        return str(RequestValidator(self.auth_token).compute_signature(url, params))

    def post_webhook(
        self, url: str, params: dict[str, str], *, signature: str | None = None
    ) -> WebhookResult:
        """Form-POST ``params`` to ``url`` with X-Twilio-Signature (``signature`` overrides)."""
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        headers["User-Agent"] = "TwilioProxy/1.1"
        headers["X-Twilio-Signature"] = signature or self.sign(url, params)
        return post(url, urlencode(params).encode(), headers)

    def callback_params(
        self, sid: str, status: str, error_code: int | None = None
    ) -> dict[str, str]:
        """Status callback form fields for accepted message ``sid``."""
        msg = next(m for m in self.messages if m.sid == sid)
        sender = msg.params.get("From") or self._channel(msg.to) + self.service_sender
        # fmt: off
        params = {"SmsSid": sid, "SmsStatus": status, "MessageStatus": status, "To": msg.to,
                  "MessageSid": sid, "AccountSid": self.account_sid, "From": sender,
                  "ApiVersion": "2010-04-01"}
        # fmt: on
        if msg.params.get("MessagingServiceSid"):
            params["MessagingServiceSid"] = msg.params["MessagingServiceSid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        if status == "delivered" and not msg.to.startswith(_WA):  # carriers add fields unasked
            params["RawDlrDoneDate"] = datetime.now(UTC).strftime("%y%m%d%H%M")
        return params

    def post_status(
        self, sid: str, status: str, error_code: int | None = None, *, url: str | None = None
    ) -> WebhookResult:
        """Post a signed status callback for ``sid`` (to its StatusCallback by default)."""
        msg = next(m for m in self.messages if m.sid == sid)
        target = url or msg.status_callback
        if target is None:
            raise ValueError(f"{sid} has no StatusCallback")
        msg.status = status
        return self.post_webhook(target, self.callback_params(sid, status, error_code))

    def post_inbound(
        self, url: str, from_: str, body: str, *, to: str | None = None,
        opt_out_type: str | None = None,
    ) -> WebhookResult:  # fmt: skip
        """Post a signed inbound message (``opt_out_type``: STOP, START or HELP)."""
        sid, to = _sid("SM"), to or self._channel(from_) + self.service_sender
        # fmt: off
        params = {"MessageSid": sid, "SmsMessageSid": sid, "SmsSid": sid, "SmsStatus": "received",
                  "AccountSid": self.account_sid, "From": from_, "To": to, "Body": body,
                  "NumMedia": "0", "NumSegments": "1", "ApiVersion": "2010-04-01"}
        # fmt: on
        if opt_out_type:
            params["OptOutType"] = opt_out_type
        return self.post_webhook(url, params)

    @staticmethod
    def _channel(address: str) -> str:
        return _WA if address.startswith(_WA) else ""

    def _run_callbacks(self, msg: TwilioMessage) -> None:
        with self._lock:
            later = self._fail_later.get(msg.to) or self._fail_later.get(msg.to.removeprefix(_WA))
        steps: list[tuple[str, int | None]] = [("sent", None), ("delivered", None)]
        if msg.to.startswith(_WA) and msg.content_sid is None:
            steps = [("failed", 63016)]  # free-form WhatsApp outside the 24-hour window
        elif later is not None:
            steps = [("sent", None), (later[1], later[0])]
        for status, code in steps:  # runs to the end even if stop() was called meanwhile
            params, url = self.callback_params(msg.sid, status, code), msg.status_callback or ""
            msg.status = status
            try:
                answer = self.post_webhook(url, params)
                attempt = CallbackAttempt(msg.sid, url, params, answer.status)
            except OSError as error:
                attempt = CallbackAttempt(msg.sid, url, params, None, repr(error))
            with self._lock:
                self.callbacks.append(attempt)

    # request processing -------------------------------------------------------------------
    def _parse(self, request: RecordedRequest) -> dict[str, Any]:
        form = parse_qs(request.body.decode(errors="replace"), keep_blank_values=True)
        arrays = {k for k, v in SCHEMA["properties"].items() if v["type"] == "array"}
        return {k: (v if k in arrays else v[0]) for k, v in form.items()}

    def _process(self, request: RecordedRequest) -> Reply:
        match = _PATH.match(request.path)
        not_found = f"The requested resource {request.path} was not found"
        if match is None:
            return twilio_error(404, 20404, not_found)
        if not self._authorized(request.headers.get("Authorization", "")):
            realm = {"WWW-Authenticate": 'Basic realm="Twilio API"'}
            return twilio_error(401, 20003, "Authentication Error - invalid username", realm)
        if request.method != "POST":
            return twilio_error(405, 20004, "Method not allowed")
        if match["sid"] != self.account_sid:
            return twilio_error(404, 20404, not_found)
        params = request.params or {}
        error = _validate(params)
        if error is not None:
            return error
        with self._lock:
            to = params["To"]
            failure = self._fail_to.get(to) or self._fail_to.get(to.removeprefix(_WA))
        if failure is not None:
            return failure
        msg = self._accept(params, request.received_at)

        def after() -> None:
            if self.auto_callbacks and msg.status_callback:
                self._spawn(lambda: self._run_callbacks(msg), f"twilio-callbacks-{msg.sid}")

        headers = {"Content-Type": "application/json; charset=utf-8"}
        headers["Twilio-Request-Id"] = _sid("RQ")
        return Reply(201, json.dumps(msg.resource).encode(), headers, after)

    def _authorized(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        try:
            credentials = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            return False
        expected = f"{self.account_sid}:{self.auth_token}".encode()
        return scheme.lower() == "basic" and hmac.compare_digest(credentials, expected)

    def _accept(self, params: dict[str, Any], received_at: float) -> TwilioMessage:
        media, service = list(params.get("MediaUrl") or []), params.get("MessagingServiceSid")
        body, to, sid = params.get("Body"), params["To"], _sid("MM" if media else "SM")
        status = "accepted" if service else "queued"
        if params.get("ScheduleType") == "fixed":
            status = "scheduled"
        segments = 0 if service else 1 if to.startswith(_WA) or not body else num_segments(body)
        uri, now = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}", _now()
        # fmt: off
        resource = {
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": body or "",
            "date_created": now, "date_sent": None, "date_updated": now,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": params.get("From") or None, "messaging_service_sid": service,
            "num_media": str(len(media)), "num_segments": str(segments), "price": None,
            "price_unit": "USD", "sid": sid, "status": status, "to": to, "uri": f"{uri}.json",
            "subresource_uris": {"media": f"{uri}/Media.json", "feedback": f"{uri}/Feedback.json"},
        }
        # fmt: on
        variables = params.get("ContentVariables")
        msg = TwilioMessage(
            sid, to, body, params.get("ContentSid"), json.loads(variables) if variables else None,
            params.get("StatusCallback"), params, resource, received_at, status,
        )  # fmt: skip
        with self._lock:
            self._messages.append(msg)
        return msg


def _now() -> str:
    return format_datetime(datetime.now(UTC).replace(microsecond=0))


def _validate(params: dict[str, Any]) -> Reply | None:
    """The first violation of the schema or PROVIDERS.md, as Twilio would report it."""
    to, sender, service = params.get("To"), params.get("From"), params.get("MessagingServiceSid")
    callback, validity = params.get("StatusCallback"), params.get("ValidityPeriod")
    if not to:
        return _bad(21604, "'To' phone number is required to send a Message")
    if not sender and not service:
        return _bad(21603, "A 'From' or 'MessagingServiceSid' parameter is required")
    if not (params.get("Body") or params.get("MediaUrl") or params.get("ContentSid")):
        return _bad(21619, "A text message body, media URL or Content SID is required")
    types = {k: v["type"] for k, v in SCHEMA["properties"].items()}
    instance = {k: _coerce(types.get(k), v) for k, v in params.items()}
    for err in sorted(_VALIDATOR.iter_errors(instance), key=lambda e: list(e.path)):
        name = str(err.path[0]) if err.path else "request"
        return _bad(_FIELD_CODES.get(name, 20001), f"Invalid parameter '{name}': {err.message}")
    if not _E164.match(to.removeprefix(_WA)):
        return _bad(21211, f"Invalid 'To' Phone Number: {to}")
    if sender and not (_E164.match(sender.removeprefix(_WA)) or _SENDER_ID.match(sender)):
        return _bad(21212, f"Invalid 'From' Phone Number: {sender}")
    if sender and sender.startswith(_WA) != to.startswith(_WA):
        return _bad(21910, "Invalid 'From' and 'To' pair. They should be of the same channel")
    if callback is not None and not _good_url(callback):
        return _bad(21609, f"The StatusCallback URL {callback} is not a valid URL.")
    if validity is not None and not 1 <= int(validity) <= 36000:
        return _bad(90007, "Invalid validity period value: must be 1 to 36000 seconds")
    if params.get("ContentVariables") is not None and not _good_variables(params):
        return _bad(21656, "The ContentVariables Parameter is invalid")
    if len(params.get("Body") or "") > 1600:
        return _bad(21617, "The concatenated message body exceeds the 1600 character limit")
    return None


def _good_url(url: str) -> bool:
    """http(s) with a hostname without underscores, as Twilio requires of StatusCallback."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and "_" not in (parts.hostname or "_")
    except ValueError:
        return False


def _bad(code: int, message: str) -> Reply:
    return twilio_error(400, code, message)


def _good_variables(params: dict[str, Any]) -> bool:
    """With ContentSid, a JSON object of non-empty text or number values without \\n or \\t."""
    try:
        variables = json.loads(params["ContentVariables"])
    except json.JSONDecodeError:
        return False
    if not params.get("ContentSid") or not isinstance(variables, dict):
        return False
    values = [v for v in variables.values() if isinstance(v, str | int | float | bool)]
    texts = [str(v) for v in values if not isinstance(v, bool)]
    clean = all(t.strip() and "\n" not in t and "\t" not in t for t in texts)
    return clean and len(texts) == len(variables)


def _coerce(kind: str | None, value: Any) -> Any:
    """Form values are strings: give them the schema's type where they parse."""
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except (TypeError, ValueError):
        return value
    if kind == "boolean" and value in ("true", "false", "True", "False"):
        return value.lower() == "true"
    return value
