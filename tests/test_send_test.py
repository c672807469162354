"""``reminders send-test`` against the fake providers, and which channels a configuration turns
on (``check-config``, ``build_senders``)."""

from __future__ import annotations

import base64
import json

import icalendar
import pytest
from click.testing import CliRunner, Result

from reminders.channels.cli import send_test
from reminders.channels.registry import build_senders, channel_status
from reminders.settings import Settings
from tests.conftest import CONFIG
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.provider_setup import (
    CONTENT_SID,
    FROM_EMAIL,
    PUBLIC_URL,
    SERVICE_SID,
    SMS_FROM,
    WHATSAPP_FROM,
    provider_settings,
)

PROVIDER_VARIABLES = (
    "SENDGRID_API_KEY",
    "SENDGRID_FROM_EMAIL",
    "SENDGRID_API_HOST",
    "SENDGRID_TEMPLATE_ID",
    "SENDGRID_UNSUBSCRIBE_GROUP_ID",
    "TWILIO_ACCOUNT_SID",
    "TWILIO_AUTH_TOKEN",
    "TWILIO_MESSAGING_SERVICE_SID",
    "TWILIO_SMS_FROM",
    "TWILIO_WHATSAPP_FROM",
    "TWILIO_API_BASE_URL",
    "REMINDERS_DELIVERY_MODE",
)


def environment(
    database_url: str,
    twilio: FakeTwilio | None = None,
    sendgrid: FakeSendGrid | None = None,
    **extra: str,
) -> dict[str, str | None]:
    env: dict[str, str | None] = dict.fromkeys(PROVIDER_VARIABLES)
    env |= {
        "REMINDERS_DATABASE_URL": database_url,
        "REMINDERS_CONFIG_DIR": str(CONFIG),
        "REMINDERS_LOG_FORMAT": "console",
        "REMINDERS_PUBLIC_URL": PUBLIC_URL,
    }
    if twilio is not None:
        env |= {
            "TWILIO_ACCOUNT_SID": twilio.account_sid,
            "TWILIO_AUTH_TOKEN": twilio.auth_token,
            "TWILIO_API_BASE_URL": twilio.base_url,
            "TWILIO_SMS_FROM": SMS_FROM,
            "TWILIO_WHATSAPP_FROM": f"whatsapp:{WHATSAPP_FROM}",
        }
    if sendgrid is not None:
        env |= {
            "SENDGRID_API_KEY": sendgrid.api_key,
            "SENDGRID_API_HOST": sendgrid.base_url,
            "SENDGRID_FROM_EMAIL": FROM_EMAIL,
        }
    return env | extra


def run(env: dict[str, str | None], *args: str) -> Result:
    """``reminders send-test ARGS``."""
    return CliRunner().invoke(send_test, list(args), env=env, catch_exceptions=False)


def test_it_sends_an_sms_to_a_national_number_and_prints_the_answer(database_url, twilio) -> None:
    result = run(environment(database_url, twilio), "--channel", "sms",
                 "--to", "0532 123 45 67")  # fmt: skip
    assert result.exit_code == 0, result.output
    [message] = twilio.messages
    assert message.to == "+905321234567"
    assert "sms to +90*******567: queued" in result.output
    assert f"provider id: {message.sid}" in result.output


def test_it_prints_the_turkish_templates_ucs2_segments(database_url, twilio) -> None:
    result = run(environment(database_url, twilio), "--channel", "sms",
                 "--to", "+905321234567", "--language", "tr")  # fmt: skip
    assert result.exit_code == 0, result.output
    [message] = twilio.messages
    assert "ı" in (message.body or "")
    assert "encoding: UCS-2" in result.output
    assert f"segments: {message.resource['num_segments']}" in result.output


def test_it_sends_an_email_with_its_calendar_and_prints_the_message_id(
    database_url, sendgrid
) -> None:
    result = run(environment(database_url, sendgrid=sendgrid), "--channel", "email",
                 "--to", "ayse@example.com")  # fmt: skip
    assert result.exit_code == 0, result.output
    [mail] = sendgrid.mails
    assert mail.recipients == ["ayse@example.com"]
    assert f"provider id: {mail.message_id}" in result.output
    [attachment] = mail.body["attachments"]
    calendar = icalendar.Calendar.from_ical(base64.b64decode(attachment["content"]))
    assert len(calendar.walk("VEVENT")) == 1


def test_it_sends_whatsapp_as_the_approved_template_it_is_given(database_url, twilio) -> None:
    result = run(environment(database_url, twilio), "--channel", "whatsapp",
                 "--to", "+905321234567", "--content-sid", CONTENT_SID)  # fmt: skip
    assert result.exit_code == 0, result.output
    [message] = twilio.messages
    assert (message.to, message.content_sid, message.body) == (
        "whatsapp:+905321234567",
        CONTENT_SID,
        None,
    )
    assert json.loads(message.params["ContentVariables"])["1"] == "Ayşe"


def test_whatsapp_without_an_approved_template_sends_nothing(database_url, twilio) -> None:
    result = run(environment(database_url, twilio), "--channel", "whatsapp",
                 "--to", "+905321234567")  # fmt: skip
    assert result.exit_code == 1
    assert "pass --content-sid" in result.output
    assert twilio.requests == []


def test_a_provider_refusal_is_printed_with_its_kind_and_code(database_url, twilio) -> None:
    twilio.fail_to("+905321234567", code=21614)
    result = run(environment(database_url, twilio), "--channel", "sms",
                 "--to", "+905321234567")  # fmt: skip
    assert result.exit_code == 1
    assert "refused" in result.output
    assert "kind: permanent" in result.output
    assert "code: 21614" in result.output


def test_a_channel_that_is_off_is_refused_with_its_reason(database_url) -> None:
    result = run(environment(database_url), "--channel", "sms", "--to", "+905321234567")
    assert result.exit_code == 1
    assert "channel sms is off: TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set" in (
        result.output
    )


def test_a_number_that_is_not_one_is_a_usage_error(database_url, twilio) -> None:
    result = run(environment(database_url, twilio), "--channel", "sms", "--to", "12")
    assert result.exit_code == 2
    assert "'12' is not a valid phone number" in result.output
    assert twilio.requests == []


def test_check_config_says_which_channels_are_off_and_why(database_url, sendgrid) -> None:
    env = environment(database_url, sendgrid=sendgrid, TWILIO_WHATSAPP_FROM="+905321234567")
    from reminders.cli import main

    result = CliRunner().invoke(main, ["check-config"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "channel email: on" in result.output
    off = "off (TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set)"
    assert f"channel sms: {off}" in result.output
    assert f"channel whatsapp: {off}" in result.output


def test_without_credentials_the_provider_channels_are_off(settings: Settings) -> None:
    assert build_senders(settings) == {}
    assert all(reason for reason in channel_status(settings).values())


def test_only_the_configured_channels_get_a_sender(settings, sendgrid) -> None:
    email_only = provider_settings(settings, sendgrid=sendgrid)
    assert list(build_senders(email_only)) == ["email"]


@pytest.mark.parametrize(
    ("overrides", "channel", "reason"),
    [
        ({"twilio_account_sid": "SK" + "0" * 32}, "sms", "TWILIO_ACCOUNT_SID is not an account"),
        ({"twilio_sms_from": None}, "sms", "neither TWILIO_MESSAGING_SERVICE_SID nor"),
        ({"twilio_sms_from": "05321234567"}, "sms", "TWILIO_SMS_FROM is not an E.164"),
        ({"twilio_messaging_service_sid": "MG123"}, "sms", "TWILIO_MESSAGING_SERVICE_SID is not"),
        ({"twilio_whatsapp_from": "whatsapp:0532"}, "whatsapp", "TWILIO_WHATSAPP_FROM is not"),
        ({"twilio_api_base_url": "api.twilio.com"}, "whatsapp", "TWILIO_API_BASE_URL is not"),
        ({"sendgrid_from_email": "clinic"}, "email", "SENDGRID_FROM_EMAIL is not an email"),
        ({"sendgrid_template_id": "welcome"}, "email", "SENDGRID_TEMPLATE_ID is not a dynamic"),
        ({"sendgrid_api_host": "ftp://x"}, "email", "SENDGRID_API_HOST is not an http(s) URL"),
    ],
)
def test_a_malformed_setting_turns_its_channel_off_with_a_reason(
    settings, twilio, sendgrid, overrides, channel, reason
) -> None:
    configured = provider_settings(settings, twilio, sendgrid, **overrides)
    status = channel_status(configured)
    assert (status[channel] or "").startswith(reason)
    assert channel not in build_senders(configured)


def test_a_messaging_service_alone_turns_sms_on(settings, twilio) -> None:
    configured = provider_settings(
        settings, twilio, twilio_sms_from=None, twilio_messaging_service_sid=SERVICE_SID
    )
    assert channel_status(configured)["sms"] is None
