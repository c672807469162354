"""What the SMS and WhatsApp senders share: one Twilio client and the reading of its answers.

Credentials, base URL and timeout are always passed in; the SDK never falls back to its own
environment variables (``TWILIO_ACCOUNT_SID``, ``TWILIO_EDGE``, ...). Every answer that is not
a created message becomes a :class:`ChannelError`::

    TwilioRestException / TwilioServiceException
    ├── 21610                                    OPTED_OUT      (the recipient sent STOP)
    ├── 21211 21408 21612 21614 63003            PERMANENT      (this address never works)
    ├── 21611 20429, HTTP 429 and 5xx            TRANSIENT      (Retry-After honoured)
    └── 20003 21606 ..., any other 4xx           MISCONFIGURED  (our account, sender or payload)
    requests.ReadTimeout, a dropped connection   IN_DOUBT       (sent, no answer: it may exist)
    requests.RequestException                    TRANSIENT      (refused, connect timeout)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client
from urllib3.exceptions import ProtocolError

from reminders.channels import ChannelError, ErrorKind, OutboundMessage, retry_after
from reminders.settings import Settings

OPTED_OUT_CODES = frozenset({21610})
PERMANENT_CODES = frozenset({21211, 21408, 21612, 21614, 63003})
TRANSIENT_CODES = frozenset({20429, 21611, 20500, 20503})
MIN_VALIDITY, MAX_VALIDITY = 5, 36_000  # ValidityPeriod, seconds
# A non-empty mapping: with an empty one the SDK would read os.environ instead.
_NO_ENVIRONMENT: Mapping[str, str] = {"REMINDERS_TWILIO_CONFIG": "explicit"}


class _EnvironmentOnce(requests.Session):
    """A session that reads the proxy and CA settings of the environment (``HTTPS_PROXY``,
    ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``, ...) once per scheme and host, not on every call:
    requests does it per request, about a fifth of the dispatcher's CPU at full rate. The
    variables are set before the service starts, so what they say is the same."""

    def __init__(self) -> None:
        super().__init__()
        self._settings: dict[tuple[str, str], dict[str, Any]] = {}

    def merge_environment_settings(
        self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> dict[str, Any]:
        if proxies or stream is not None or verify is not None or cert is not None or not url:
            return dict(super().merge_environment_settings(url, proxies, stream, verify, cert))
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        found = self._settings.get(key)
        if found is None:  # two threads may both read it: the same answer
            found = dict(super().merge_environment_settings(url, proxies, stream, verify, cert))
            self._settings[key] = found
        return {**found, "proxies": dict(found["proxies"])}


class _HttpClient(TwilioHttpClient):  # type: ignore[misc]
    """The SDK's client with a timeout, keeping the last answer's headers per thread
    (the SDK's exceptions drop them, and a 429's ``Retry-After`` lives there), on a session
    that reads the environment once (:class:`_EnvironmentOnce`)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout)
        session = _EnvironmentOnce()
        session.mount("https://", HTTPAdapter(pool_maxsize=min(32, (os.cpu_count() or 1) + 4)))
        self.session = session
        self._local = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self._local.headers = None
        response: Response = super().request(*args, **kwargs)
        self._local.headers = response.headers
        return response

    @property
    def last_headers(self) -> Mapping[str, str] | None:
        headers: Mapping[str, str] | None = getattr(self._local, "headers", None)
        return headers


class Twilio:
    """One configured Twilio account: creates messages, turns failures into ChannelErrors."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        if not (settings.twilio_account_sid and settings.twilio_auth_token):
            raise ValueError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are needed for Twilio")
        self._http = _HttpClient(timeout=settings.provider_timeout)
        client = Client(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            http_client=self._http,
            environment=_NO_ENVIRONMENT,
        )
        client.api.base_url = settings.twilio_api_base_url.rstrip("/")
        self._messages = client.api.v2010.account.messages
        self._public_url = settings.public_url
        self._clock = clock

    def status_callback(self, delivery_id: str) -> str | None:
        """Where Twilio reports this delivery's status (only with a public URL)."""
        if not self._public_url:
            return None
        return f"{self._public_url.rstrip('/')}/webhooks/twilio/status?d={delivery_id}"

    def create(self, message: OutboundMessage, **params: Any) -> Any:
        """Create a message (``to``, ``body``, ``content_sid``, ...); returns the SDK's instance."""
        callback = self.status_callback(message.delivery_id)
        if callback:
            params["status_callback"] = callback
        if message.valid_for is not None:
            params["validity_period"] = validity_period(message.valid_for)
        try:
            return self._messages.create(**params)
        except (TwilioRestException, TwilioServiceException) as exc:
            raise self.classify(exc.status, exc.code, _message(exc)) from None
        except requests.RequestException as exc:
            raise unanswered(exc) from None

    def classify(self, status: int, code: int | None, text: str) -> ChannelError:
        """The ChannelError for an error answer (HTTP ``status``, Twilio ``code``)."""
        label = str(code or status)
        if code in OPTED_OUT_CODES:
            return ChannelError(ErrorKind.OPTED_OUT, text, code=label)
        if code in PERMANENT_CODES:
            return ChannelError(ErrorKind.PERMANENT, text, code=label)
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            wait = retry_after(self._http.last_headers, self._clock())
            return ChannelError(ErrorKind.TRANSIENT, text, code=label, retry_after=wait)
        return ChannelError(ErrorKind.MISCONFIGURED, text, code=label)


def validity_period(seconds: float) -> int:
    """How long Twilio may keep the message queued: ``seconds``, within the 5 s (its advice)
    to 36,000 s (its limit, and default) it takes."""
    return max(MIN_VALIDITY, min(MAX_VALIDITY, int(seconds)))


def unanswered(exc: requests.RequestException) -> ChannelError:
    """A network failure: in doubt once the request went out (a read timeout, or the connection
    dropped before the answer), transient when it never left (refused, connect timeout)."""
    dropped = isinstance(exc, requests.ConnectionError) and isinstance(
        exc.args[0] if exc.args else None, ProtocolError
    )
    if isinstance(exc, requests.ReadTimeout) or dropped:
        text = f"Twilio did not answer ({type(exc).__name__}): the message may have been created"
        return ChannelError(ErrorKind.IN_DOUBT, text, code="no_answer")
    return ChannelError(
        ErrorKind.TRANSIENT, f"Twilio unreachable: {type(exc).__name__}", code="network"
    )


def _message(exc: TwilioRestException | TwilioServiceException) -> str:
    text = getattr(exc, "msg", None) or getattr(exc, "detail", None) or getattr(exc, "title", "")
    return f"Twilio {exc.status} {exc.code}: {text}"


def whatsapp_address(number: str) -> str:
    """``+905321234567`` or ``whatsapp:+905321234567`` -> ``whatsapp:+905321234567``."""
    return "whatsapp:" + number.strip().removeprefix("whatsapp:")
