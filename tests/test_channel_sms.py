"""The SMS channel: the real twilio SDK against the fake Twilio, and segment counting."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from email.utils import format_datetime

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from reminders.channels import ChannelError, ErrorKind, segments
from reminders.channels.sms import SmsSender
from reminders.channels.twilio_common import Twilio, _EnvironmentOnce
from reminders.settings import Settings
from tests.fakes import FakeTwilio
from tests.fakes.twilio import SCHEMA, num_segments
from tests.provider_setup import PUBLIC_URL, SERVICE_SID, SMS_FROM, outbound, provider_settings

PATIENT = "+905321234567"
TURKISH = "Ayşe, Işıklı kliniğindeki tedavinizin zamanı geldi. Lütfen randevu alın."


def sms_sender(settings: Settings, fake: FakeTwilio, **overrides: object) -> SmsSender:
    s = provider_settings(settings, fake, **overrides)
    return SmsSender(
        Twilio(s),
        messaging_service_sid=s.twilio_messaging_service_sid,
        from_number=s.twilio_sms_from,
    )


def refusal(sender: SmsSender, to: str = PATIENT) -> ChannelError:
    with pytest.raises(ChannelError) as info:
        sender.send(outbound("sms", to))
    return info.value


def test_it_sends_from_a_number_with_a_status_callback_naming_the_delivery(
    settings, twilio
) -> None:
    receipt = sms_sender(settings, twilio).send(outbound("sms", PATIENT, delivery_id="abc123"))
    [message] = twilio.messages
    assert message.params["From"] == SMS_FROM
    assert message.params["To"] == PATIENT
    assert message.params["StatusCallback"] == f"{PUBLIC_URL}/webhooks/twilio/status?d=abc123"
    assert (receipt.provider_id, receipt.status) == (message.sid, "queued")


def test_a_messaging_service_is_preferred_to_a_number(settings, twilio) -> None:
    sender = sms_sender(settings, twilio, twilio_messaging_service_sid=SERVICE_SID)
    receipt = sender.send(outbound("sms", PATIENT))
    [message] = twilio.messages
    assert message.params["MessagingServiceSid"] == SERVICE_SID
    assert "From" not in message.params
    assert receipt.status == "accepted"


def test_there_is_no_status_callback_without_a_public_url(settings, twilio) -> None:
    sms_sender(settings, twilio, public_url=None).send(outbound("sms", PATIENT))
    assert "StatusCallback" not in twilio.messages[0].params


@pytest.mark.parametrize(
    ("valid_for", "validity"),
    [(3600.7, "3600"), (2.0, "5"), (0.2, "5"), (50_000.0, "36000"), (None, None)],
)
def test_twilio_may_hold_it_only_as_long_as_it_is_valid_for(
    settings, twilio, valid_for, validity
) -> None:
    """``ValidityPeriod``: whole seconds within the 5 (Twilio's advice) to 36,000 (its limit)
    it takes; none (its 10 h default) when the message has no limit."""
    message = dataclasses.replace(outbound("sms", PATIENT), valid_for=valid_for)
    sms_sender(settings, twilio).send(message)
    assert twilio.messages[0].params.get("ValidityPeriod") == validity


def test_a_turkish_body_is_recorded_as_ucs2_with_its_segment_count(settings, twilio) -> None:
    body = TURKISH * 2  # 146 UTF-16 units: three UCS-2 parts of 67
    receipt = sms_sender(settings, twilio).send(outbound("sms", PATIENT, text=body))
    assert receipt.details == {"segments": 3, "encoding": "UCS-2"}
    assert twilio.messages[0].resource["num_segments"] == "3"
    assert twilio.messages[0].body == body


def test_a_plain_body_is_recorded_as_one_gsm7_segment(settings, twilio) -> None:
    receipt = sms_sender(settings, twilio).send(outbound("sms", PATIENT, text="Ayse, book now."))
    assert receipt.details == {"segments": 1, "encoding": "GSM-7"}


@pytest.mark.parametrize("service", [None, SERVICE_SID])
def test_what_twilio_receives_matches_the_create_message_schema(settings, twilio, service) -> None:
    sms_sender(settings, twilio, twilio_messaging_service_sid=service).send(
        outbound("sms", PATIENT, text=TURKISH)
    )
    [request] = twilio.requests
    assert request.path == f"/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert list(Draft7Validator(SCHEMA).iter_errors(request.params)) == []


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, 21211, ErrorKind.PERMANENT),  # invalid To
        (400, 21614, ErrorKind.PERMANENT),  # not a mobile number
        (400, 21408, ErrorKind.PERMANENT),  # region not enabled
        (400, 21610, ErrorKind.OPTED_OUT),  # the recipient replied STOP
        (400, 21611, ErrorKind.TRANSIENT),  # sender queue full
        (400, 21606, ErrorKind.MISCONFIGURED),  # From is not ours
        (400, 21617, ErrorKind.MISCONFIGURED),  # our body is too long: alert, do not retry
        (403, 20008, ErrorKind.MISCONFIGURED),
        (429, 20429, ErrorKind.TRANSIENT),
        (500, 20500, ErrorKind.TRANSIENT),
        (503, 20503, ErrorKind.TRANSIENT),
    ],
)
def test_each_twilio_answer_is_classified(settings, twilio, status, code, kind) -> None:
    twilio.fail_next(status, code)
    error = refusal(sms_sender(settings, twilio))
    assert (error.kind, error.code) == (kind, str(code))
    assert twilio.messages == []


def test_a_refusal_for_one_number_is_permanent_for_that_number_only(settings, twilio) -> None:
    twilio.fail_to(PATIENT, code=21211)
    sender = sms_sender(settings, twilio)
    assert refusal(sender).kind == ErrorKind.PERMANENT
    sender.send(outbound("sms", "+905321234568"))
    assert [m.to for m in twilio.messages] == ["+905321234568"]


def test_wrong_credentials_are_a_misconfiguration(settings, twilio) -> None:
    sender = sms_sender(settings, twilio, twilio_auth_token="0" * 32)
    error = refusal(sender)
    assert (error.kind, error.code) == (ErrorKind.MISCONFIGURED, "20003")
    assert twilio.requests[0].status == 401


def test_a_429_carries_the_retry_after_it_asked_for(settings, twilio) -> None:
    twilio.fail_next(429, 20429, headers={"Retry-After": "120"})
    error = refusal(sms_sender(settings, twilio))
    assert (error.kind, error.retry_after) == (ErrorKind.TRANSIENT, 120.0)


def test_a_429_with_an_http_date_retry_after_waits_until_that_date(settings, twilio) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=300)
    twilio.fail_next(429, 20429, headers={"Retry-After": format_datetime(when, usegmt=True)})
    error = refusal(sms_sender(settings, twilio))
    assert error.retry_after is not None
    assert 290 <= error.retry_after <= 300


def test_a_429_with_a_rate_limit_reset_waits_until_then(settings, twilio) -> None:
    reset = int(time.time()) + 600
    twilio.fail_next(429, 20429, headers={"X-RateLimit-Reset": str(reset)})
    error = refusal(sms_sender(settings, twilio))
    assert error.retry_after is not None
    assert reset - time.time() - 1 <= error.retry_after <= 600


def test_a_server_that_does_not_answer_in_time_leaves_the_message_in_doubt(
    settings, twilio
) -> None:
    twilio.hang_next(5.0)
    started = time.monotonic()
    error = refusal(sms_sender(settings, twilio, provider_timeout=0.5))
    assert (error.kind, error.code) == (ErrorKind.IN_DOUBT, "no_answer")
    assert time.monotonic() - started < 3.0


def test_a_connection_dropped_after_the_request_leaves_the_message_in_doubt(
    settings, twilio
) -> None:
    twilio.hang_next(0.2)  # closes the connection without an answer, well before the timeout
    error = refusal(sms_sender(settings, twilio, provider_timeout=5.0))
    assert (error.kind, error.code) == (ErrorKind.IN_DOUBT, "no_answer")


def test_a_refused_connection_is_transient(settings, twilio) -> None:
    sender = sms_sender(settings, twilio)
    twilio.stop()
    assert refusal(sender).kind == ErrorKind.TRANSIENT


def test_the_sdks_own_environment_variables_are_ignored(settings, twilio, monkeypatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "0" * 32)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "wrong")
    monkeypatch.setenv("TWILIO_EDGE", "sydney")  # would rewrite the host into *.twilio.com
    monkeypatch.setenv("TWILIO_REGION", "au1")
    sms_sender(settings, twilio).send(outbound("sms", PATIENT))
    assert len(twilio.messages) == 1


# Segment counting --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "encoding", "parts"),
    [
        ("a" * 160, "GSM-7", 1),
        ("a" * 161, "GSM-7", 2),
        ("a" * 306, "GSM-7", 2),
        ("a" * 307, "GSM-7", 3),
        ("€" * 80, "GSM-7", 1),  # extension characters take two septets
        ("€" * 81, "GSM-7", 2),
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 3),  # an escape pair never straddles two parts
        ("ı" * 70, "UCS-2", 1),
        ("ı" * 71, "UCS-2", 2),
        ("a" * 159 + "ş", "UCS-2", 3),  # one Turkish letter makes the whole body UCS-2
        ("Ayşe\u00a0Yılmaz", "UCS-2", 1),
        ("a" * 159 + "\u00a0", "UCS-2", 3),  # so does a non-breaking space
        ("😀" * 35, "UCS-2", 1),  # a surrogate pair is two units
        ("a" * 66 + "😀" + "a" * 66, "UCS-2", 3),  # and is never split
    ],
)
def test_segments_are_counted_as_the_network_bills_them(body, encoding, parts) -> None:
    counted = segments.count(body)
    assert (counted.encoding, counted.segments) == (encoding, parts)


@given(st.text(alphabet=st.sampled_from("abcXYZ019 .,?!@£$äöñüÇ\nıİşŞğĞçÇ"), max_size=400))
def test_segment_counts_agree_with_the_fakes_reckoning(body: str) -> None:
    assert segments.count(body).segments == num_segments(body)


@given(st.text(alphabet=st.sampled_from("ab 0.@£ÇΔ€[]{}~^|\\\x1bışğ\u00a0😀\n"), max_size=400))
def test_segment_counts_match_the_codec_read_one_character_at_a_time(body: str) -> None:
    """The counter looks at each distinct character once and adds up in C; the reference here
    is the plain reading: every character through the codec, parts filled in order."""
    try:
        widths = [len(c.encode("gsm03.38")) for c in body]
        encoding, single, multi = "GSM-7", 160, 153
    except UnicodeEncodeError:
        widths = [len(c.encode("utf-16-le")) // 2 for c in body]
        encoding, single, multi = "UCS-2", 70, 67
    if "\x1b" in body:  # the escape code is no character one can send
        widths = [len(c.encode("utf-16-le")) // 2 for c in body]
        encoding, single, multi = "UCS-2", 70, 67
    parts, used = 1, 0
    for width in widths:
        if used + width > multi:
            parts, used = parts + 1, 0
        used += width
    expected = (encoding, 1 if sum(widths) <= single else parts, sum(widths))
    counted = segments.count(body)
    assert (counted.encoding, counted.segments, counted.units) == expected


def test_the_twilio_session_reads_the_proxy_and_ca_settings_once_per_host(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """requests reads them from the environment on every call; the senders' session reads
    them once per host (with NO_PROXY still applied per host), with requests' own answers."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    session, plain = _EnvironmentOnce(), requests.Session()
    api, local = "https://api.twilio.com/2010-04-01/Accounts", "https://127.0.0.1:8443/x"
    for url in (api, local):
        expected = plain.merge_environment_settings(url, {}, None, None, None)
        assert session.merge_environment_settings(url, {}, None, None, None) == expected
    proxies = session.merge_environment_settings(api, {}, None, None, None)["proxies"]
    assert proxies["https"] == "http://proxy.example:3128"
    assert session.merge_environment_settings(local, {}, None, None, None)["verify"] == str(bundle)
    monkeypatch.setenv("HTTPS_PROXY", "http://elsewhere.example:3128")
    later = session.merge_environment_settings(api + "/Messages.json", {}, None, None, None)
    assert later["proxies"]["https"] == "http://proxy.example:3128"  # read once
