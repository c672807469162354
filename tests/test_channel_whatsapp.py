"""The WhatsApp channel: approved Content templates through the real twilio SDK, never a Body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jsonschema import Draft7Validator

from reminders.channels import ChannelError, ErrorKind, OutboundMessage
from reminders.channels.twilio_common import Twilio
from reminders.channels.whatsapp import WhatsAppSender
from reminders.settings import Settings
from tests.fakes import FakeTwilio
from tests.fakes.twilio import SCHEMA
from tests.provider_setup import CONTENT_SID, PUBLIC_URL, WHATSAPP_FROM, outbound, provider_settings

PATIENT = "+905321234567"
VARIABLES = {"1": "Ayşe", "2": "4 Mar 2026"}


def wa_sender(settings: Settings, fake: FakeTwilio, **overrides: object) -> WhatsAppSender:
    s = provider_settings(settings, fake, **overrides)
    assert s.twilio_whatsapp_from
    return WhatsAppSender(Twilio(s), from_number=s.twilio_whatsapp_from)


def template_message(to: str = PATIENT, **fields: Any) -> OutboundMessage:
    return outbound("whatsapp", to, content_sid=CONTENT_SID, variables=VARIABLES, **fields)


def test_it_sends_the_approved_template_with_its_variables_and_no_body(settings, twilio) -> None:
    receipt = wa_sender(settings, twilio).send(template_message(delivery_id="wa1"))
    [message] = twilio.messages
    assert message.params["ContentSid"] == CONTENT_SID
    assert json.loads(message.params["ContentVariables"]) == VARIABLES
    assert "Body" not in message.params
    assert message.params["StatusCallback"] == f"{PUBLIC_URL}/webhooks/twilio/status?d=wa1"
    assert (receipt.provider_id, receipt.status) == (message.sid, "queued")


def test_addresses_carry_the_whatsapp_prefix(settings, twilio) -> None:
    wa_sender(settings, twilio).send(template_message())
    params = twilio.messages[0].params
    assert (params["To"], params["From"]) == (f"whatsapp:{PATIENT}", f"whatsapp:{WHATSAPP_FROM}")


@pytest.mark.parametrize("configured", [WHATSAPP_FROM, f"whatsapp:{WHATSAPP_FROM}"])
def test_a_sender_with_or_without_the_prefix_gets_it_once(settings, twilio, configured) -> None:
    sender = wa_sender(settings, twilio, twilio_whatsapp_from=configured)
    sender.send(template_message(to=f"whatsapp:{PATIENT}"))
    params = twilio.messages[0].params
    assert (params["To"], params["From"]) == (f"whatsapp:{PATIENT}", f"whatsapp:{WHATSAPP_FROM}")


def test_content_variables_are_a_json_string_kept_in_unicode(settings, twilio) -> None:
    wa_sender(settings, twilio).send(template_message())
    assert twilio.messages[0].params["ContentVariables"] == '{"1": "Ayşe", "2": "4 Mar 2026"}'


def test_without_an_approved_template_nothing_is_sent(settings, twilio) -> None:
    with pytest.raises(ChannelError) as info:
        wa_sender(settings, twilio).send(outbound("whatsapp", PATIENT, text="free text"))
    assert info.value.kind == ErrorKind.MISCONFIGURED
    assert twilio.requests == []


def test_a_number_not_on_whatsapp_is_permanent(settings, twilio) -> None:
    twilio.fail_to(f"whatsapp:{PATIENT}", code=63003)
    with pytest.raises(ChannelError) as info:
        wa_sender(settings, twilio).send(template_message())
    assert (info.value.kind, info.value.code) == (ErrorKind.PERMANENT, "63003")


def test_a_rejected_variable_mapping_is_a_misconfiguration(settings, twilio) -> None:
    twilio.fail_next(400, 21656)
    with pytest.raises(ChannelError) as info:
        wa_sender(settings, twilio).send(template_message())
    assert (info.value.kind, info.value.code) == (ErrorKind.MISCONFIGURED, "21656")


def test_what_twilio_receives_matches_the_create_message_schema(settings, twilio) -> None:
    wa_sender(settings, twilio).send(template_message())
    [request] = twilio.requests
    assert list(Draft7Validator(SCHEMA).iter_errors(request.params)) == []
