"""Twilio webhooks against the real app: status callbacks (ranked statuses, late failures
through the retry and fallback policy) and inbound messages (STOP, START, HELP, replies), every
request signed by the SDK's RequestValidator for the public URL (with its port) while it arrives
at http://testserver, as behind a proxy."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from reminders.feedback import Feedback
from reminders.models import Template
from reminders.runtime import Runtime, build_runtime
from reminders.settings import ConfigError, load_settings
from reminders.web.app import create_app
from tests import factories
from tests.fakes import FakeTwilio
from tests.provider_setup import CONTENT_SID
from tests.webhook_support import (
    INBOUND_PATH,
    NOW,
    PUBLIC_URL,
    STATUS_PATH,
    consent,
    dispatch,
    history,
    inbound_params,
    phone_of,
    plan_due,
    replies,
    send_due,
    state,
    status_params,
    status_path,
    twilio_post,
    web_settings,
)

CLINIC_PHONE = "+90 212 000 00 00"


@pytest.fixture
def twilio() -> FakeTwilio:
    return FakeTwilio()  # not started: its auth token signs the webhooks


@pytest.fixture
def web(runtime: Runtime, settings, twilio: FakeTwilio) -> Runtime:
    runtime.settings = web_settings(
        settings, twilio, clinic_name="Example Clinic", clinic_phone=CLINIC_PHONE
    )
    runtime.clock = lambda: NOW
    return runtime


@pytest.fixture
def client(web: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(web)) as test_client:
        yield test_client


def post_status(client, twilio, sent, status, code=None, *, by_sid_only=False):
    path = status_path(None if by_sid_only else sent.public_id)
    return twilio_post(client, twilio, path, status_params(sent.provider_id, status, code))


def metric(rt: Runtime, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


# status callbacks ------------------------------------------------------------------------------


def test_a_delivered_callback_marks_the_delivery_delivered(web, client, twilio) -> None:
    sent = send_due(web)
    answer = post_status(client, twilio, sent, "delivered")
    assert (answer.status_code, answer.content) == (200, b"")
    reminder, [delivery] = state(web, sent.reminder_id)
    assert (reminder.status, delivery.status) == ("sent", "delivered")
    assert history(web, delivery.id)[-1] == ("delivered", "twilio", None)


def test_replayed_and_reordered_callbacks_never_move_a_status_backwards(web, client, twilio):
    sent = send_due(web)
    for status in ("delivered", "sent", "queued", "delivered", "sent"):
        assert post_status(client, twilio, sent, status).status_code == 200
    assert state(web, sent.reminder_id)[1][0].status == "delivered"
    assert post_status(client, twilio, sent, "read").status_code == 200
    assert post_status(client, twilio, sent, "failed", 30003).status_code == 200
    reminder, [delivery] = state(web, sent.reminder_id)
    assert (reminder.status, delivery.status, delivery.permanent) == ("sent", "read", False)
    from_twilio = [e for e in history(web, delivery.id) if e[1] == "twilio"]
    assert from_twilio == [("delivered", "twilio", None), ("read", "twilio", None)]


def test_callbacks_in_order_each_leave_an_event(web, client, twilio) -> None:
    sent = send_due(web)
    for status in ("queued", "sending", "sent", "delivered"):
        post_status(client, twilio, sent, status)
    statuses = [s for s, source, _ in history(web, sent.delivery_id) if source == "twilio"]
    assert statuses == ["queued", "sent", "delivered"]  # Twilio's "sending" ranks as queued


def test_a_callback_without_our_id_is_matched_by_its_message_sid(web, client, twilio) -> None:
    sent = send_due(web)
    assert post_status(client, twilio, sent, "delivered", by_sid_only=True).status_code == 200
    assert state(web, sent.reminder_id)[1][0].status == "delivered"


def test_a_callback_for_an_unknown_delivery_is_answered_200_and_counted(web, client, twilio):
    params = status_params("SM" + "f" * 32, "delivered")
    answer = twilio_post(client, twilio, status_path("0" * 32), params)
    assert answer.status_code == 200
    assert metric(web, "reminders_webhook_events_total", source="twilio_status", outcome="unknown")


@pytest.mark.parametrize(
    "code", [30003, 30004, 30005, 30006, 30007, 99999, None], ids=lambda c: f"code-{c}"
)
def test_a_late_permanent_failure_falls_back_to_the_next_channel(
    web, client, twilio, senders, code
):
    sent = send_due(web)
    assert post_status(client, twilio, sent, "undelivered", code).status_code == 200
    reminder, [sms] = state(web, sent.reminder_id)
    assert (reminder.status, reminder.next_attempt_at, reminder.sent_at) == ("pending", NOW, None)
    assert (sms.status, sms.permanent, sms.error_code) == (
        "undelivered",
        True,
        str(code or "undelivered"),
    )
    dispatch(web)
    reminder, [_, email] = state(web, sent.reminder_id)
    assert (reminder.status, reminder.channel, email.channel) == ("sent", "email", "email")
    assert len(senders["sms"].sent) == 1 and len(senders["email"].sent) == 1
    kind = {"channel": "sms", "kind": "permanent", "code": str(code or "")}
    assert metric(web, "reminders_provider_errors_total", **kind) == 1


@pytest.mark.parametrize("code", [30001, 30008, 30036])
def test_a_late_transient_failure_retries_the_same_channel_after_a_backoff(
    web, client, twilio, senders, code
) -> None:
    sent = send_due(web)
    assert post_status(client, twilio, sent, "failed", code).status_code == 200
    reminder, [sms] = state(web, sent.reminder_id)
    assert (reminder.status, reminder.attempts, sms.permanent) == ("pending", 1, False)
    base = web.settings.retry_base_seconds
    assert NOW + dt.timedelta(seconds=base / 2) <= reminder.next_attempt_at
    assert reminder.next_attempt_at <= NOW + dt.timedelta(seconds=base)
    dispatch(web, reminder.next_attempt_at)
    assert [m.channel for m in senders["sms"].sent] == ["sms", "sms"] and not senders["email"].sent


def test_a_late_transient_failure_in_the_evening_waits_for_the_morning(web, client, twilio):
    evening = dt.datetime(2026, 3, 4, 16, 59, 50, tzinfo=dt.UTC)  # 19:59:50 in Istanbul
    web.clock = lambda: evening
    sent = send_due(web, evening)
    post_status(client, twilio, sent, "failed", 30001)
    reminder, _ = state(web, sent.reminder_id)
    assert reminder.next_attempt_at == dt.datetime(2026, 3, 5, 6, 0, tzinfo=dt.UTC)  # 09:00


def test_a_late_failure_once_the_reminder_has_expired_only_records_it(web, client, twilio) -> None:
    sent = send_due(web)
    expires = state(web, sent.reminder_id)[0].expires_at
    web.clock = lambda: expires + dt.timedelta(minutes=1)
    post_status(client, twilio, sent, "undelivered", 30005)
    reminder, [delivery] = state(web, sent.reminder_id)
    assert (reminder.status, delivery.status) == ("sent", "undelivered")
    assert "30005" in (reminder.last_error or "")


def test_a_stop_reported_by_a_callback_records_the_opt_out_and_falls_back(web, client, twilio):
    sent = send_due(web)
    post_status(client, twilio, sent, "failed", 21610)
    row = consent(web, sent.patient_id, "sms")
    assert row is not None and row.opted_out_at == NOW and row.opt_out_source == "twilio"
    assert state(web, sent.reminder_id)[0].status == "pending"


def test_whatsapp_free_text_outside_the_session_is_our_fault_and_falls_back(
    web, client, twilio, senders
) -> None:
    with web.sessions() as s, s.begin():
        s.add(
            Template(
                step="due",
                channel="whatsapp",
                language="en",
                version=1,
                text="Due {{ 1 }}",
                content_sid=CONTENT_SID,
                variables={"1": "{{ patient.given_name }}"},
                author="staff@example.org",
            )
        )
    sent = send_due(web, channels="whatsapp|sms", whatsapp="+905431979999")
    assert sent.channel == "whatsapp"
    post_status(client, twilio, sent, "failed", 63016)
    dispatch(web)
    reminder, [whatsapp, sms] = state(web, sent.reminder_id)
    assert (whatsapp.status, whatsapp.permanent, sms.channel) == ("failed", True, "sms")
    assert reminder.status == "sent" and reminder.channel == "sms"
    kind = {"channel": "whatsapp", "kind": "misconfigured", "code": "63016"}
    assert metric(web, "reminders_provider_errors_total", **kind) == 1


def test_a_late_failure_of_an_earlier_attempt_does_not_reopen_the_reminder(
    web, client, twilio
) -> None:
    sent = send_due(web)
    post_status(client, twilio, sent, "undelivered", 30003)
    dispatch(web)  # sent again by email
    post_status(client, twilio, sent, "failed", 30005)  # a repeat, reordered
    reminder, deliveries = state(web, sent.reminder_id)
    assert reminder.status == "sent" and [d.channel for d in deliveries] == ["sms", "email"]


# signatures --------------------------------------------------------------------------------


def _forged(twilio, sent, params):
    other = FakeTwilio(auth_token="0" * 32)
    return {
        "missing": None,
        "another_token": other.sign(PUBLIC_URL + status_path(sent.public_id), params),
        "the_url_behind_the_proxy": twilio.sign(
            "http://testserver" + status_path(sent.public_id), params
        ),
        "another_port": twilio.sign(
            "https://reminders.example.org:9443" + status_path(sent.public_id), params
        ),
        "another_delivery": twilio.sign(PUBLIC_URL + status_path("f" * 32), params),
        "other_fields": twilio.sign(
            PUBLIC_URL + status_path(sent.public_id), {**params, "MessageStatus": "sent"}
        ),
        "garbage": "not base64 at all",
    }


@pytest.mark.parametrize(
    "forgery",
    ["missing", "another_token", "the_url_behind_the_proxy", "another_port",
     "another_delivery", "other_fields", "garbage"],
)  # fmt: skip
def test_a_status_callback_without_a_valid_signature_is_refused_and_changes_nothing(
    web, client, twilio, forgery
) -> None:
    sent = send_due(web)
    params = status_params(sent.provider_id, "undelivered", 30003)
    signature = _forged(twilio, sent, params)[forgery]
    headers = {"X-Twilio-Signature": signature} if signature else {}
    answer = client.post(status_path(sent.public_id), data=params, headers=headers)
    assert answer.status_code == 403
    reminder, [delivery] = state(web, sent.reminder_id)
    assert (reminder.status, delivery.status) == ("sent", "accepted")
    reason = "missing_signature" if forgery == "missing" else "bad_signature"
    rejected = {"source": "twilio_status", "reason": reason}
    assert metric(web, "reminders_webhook_rejected_total", **rejected) == 1


def test_the_signature_covers_the_public_url_with_its_port_and_query(web, client, twilio):
    sent = send_due(web)
    url = "https://reminders.example.org:8443" + status_path(sent.public_id)
    params = status_params(sent.provider_id, "delivered")
    answer = client.post(
        status_path(sent.public_id),
        data=params,
        headers={"X-Twilio-Signature": twilio.sign(url, params)},
    )
    assert answer.status_code == 200 and state(web, sent.reminder_id)[1][0].status == "delivered"


def test_without_a_public_url_the_url_of_the_request_is_checked(web, settings, twilio) -> None:
    web.settings = web_settings(settings, twilio, public_url=None)
    sent = send_due(web)
    with TestClient(create_app(web)) as client:
        answer = twilio_post(
            client, twilio, status_path(sent.public_id),
            status_params(sent.provider_id, "delivered"), public_url="http://testserver",
        )  # fmt: skip
    assert answer.status_code == 200 and state(web, sent.reminder_id)[1][0].status == "delivered"


def test_without_a_twilio_auth_token_every_webhook_is_refused(web, settings, twilio) -> None:
    web.settings = web_settings(settings, None)
    with TestClient(create_app(web)) as client:
        answer = twilio_post(client, twilio, INBOUND_PATH, inbound_params("+905431970001", "STOP"))
    assert answer.status_code == 403 and not replies(web)


@pytest.mark.parametrize(
    "params",
    [
        {"MessageSid": "SM1"},
        {"MessageStatus": "sent"},
        {"MessageSid": " ", "MessageStatus": "sent"},
    ],
)
def test_a_signed_callback_missing_a_field_is_a_bad_request(web, client, twilio, params) -> None:
    assert twilio_post(client, twilio, STATUS_PATH, params).status_code == 400


def test_a_body_that_is_not_a_form_is_a_bad_request(web, client) -> None:
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"}
    answer = client.post(STATUS_PATH, content=b"\xff\xfe\x00", headers=headers)
    assert answer.status_code == 400


# never a 500 -----------------------------------------------------------------------------------


def test_an_unexpected_error_is_logged_answered_200_and_changes_nothing(
    web, client, twilio, monkeypatch
) -> None:
    sent = send_due(web)

    def broken(*_args: object, **_kwargs: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Feedback, "apply", broken)
    assert post_status(client, twilio, sent, "undelivered", 30003).status_code == 200
    assert state(web, sent.reminder_id)[1][0].status == "accepted"
    assert metric(web, "reminders_webhook_events_total", source="twilio_status", outcome="error")


def test_a_database_that_cannot_be_reached_gets_503_so_the_provider_retries(
    settings, twilio, tmp_path
) -> None:
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'db.sqlite'}"
    rt = build_runtime(web_settings(settings, twilio, database_url=missing))
    try:
        with TestClient(create_app(rt)) as client:
            answer = twilio_post(
                client, twilio, INBOUND_PATH, inbound_params("+905431970001", "hi")
            )
    finally:
        rt.close()
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "60"


# inbound ---------------------------------------------------------------------------------------


def new_patient(rt: Runtime, **fields) -> tuple[int, str]:
    with rt.sessions() as s, s.begin():
        p = factories.patient(s, **fields)
        return p.id, p.phone


@pytest.mark.parametrize(
    "body",
    ["STOP", "stop", " Unsubscribe ", "quit", "Stop.", "STOPALL", "RET", "ret", "İptal", "iptal"],
)
def test_a_stop_word_opts_the_number_out_of_sms(web, client, twilio, body) -> None:
    patient_id, phone = new_patient(web)
    answer = twilio_post(client, twilio, INBOUND_PATH, inbound_params(phone, body))
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/xml")
    assert answer.text == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    row = consent(web, patient_id, "sms")
    assert row is not None and row.opted_out_at == NOW and row.opt_out_source == "twilio"
    [reply] = replies(web)
    assert (reply.kind, reply.patient_id, reply.channel) == ("stop", patient_id, "sms")


def test_a_whatsapp_stop_opts_out_of_whatsapp_only(web, client, twilio) -> None:
    patient_id, _ = new_patient(web, channels="whatsapp|sms", whatsapp="+905431978888")
    twilio_post(client, twilio, INBOUND_PATH, inbound_params("whatsapp:+905431978888", "STOP"))
    whatsapp, sms = consent(web, patient_id, "whatsapp"), consent(web, patient_id, "sms")
    assert whatsapp is not None and whatsapp.opted_out_at == NOW
    assert sms is not None and sms.usable


@pytest.mark.parametrize(("stop", "start"), [("STOP", "start"), ("ret", "Başla")])
def test_start_undoes_a_stop(web, client, twilio, stop, start) -> None:
    patient_id, phone = new_patient(web)
    twilio_post(client, twilio, INBOUND_PATH, inbound_params(phone, stop))
    web.clock = lambda: NOW + dt.timedelta(days=1)
    twilio_post(client, twilio, INBOUND_PATH, inbound_params(phone, start))
    row = consent(web, patient_id, "sms")
    assert row is not None and row.usable and row.granted_source == "twilio"
    assert [r.kind for r in replies(web)] == ["stop", "start"]


def test_twilio_advanced_opt_out_type_wins_over_the_body(web, client, twilio) -> None:
    patient_id, phone = new_patient(web)
    params = inbound_params(phone, "Please stop these", opt_out_type="STOP")
    twilio_post(client, twilio, INBOUND_PATH, params)
    row = consent(web, patient_id, "sms")
    assert row is not None and row.opted_out_at == NOW


def test_stop_inside_a_sentence_is_a_reply_for_staff_not_an_opt_out(web, client, twilio) -> None:
    patient_id, phone = new_patient(web)
    twilio_post(client, twilio, INBOUND_PATH, inbound_params(phone, "please don't stop, call me"))
    row = consent(web, patient_id, "sms")
    assert row is not None and row.usable
    [reply] = replies(web)
    assert (reply.kind, reply.body, reply.patient_id) == (
        "other",
        "please don't stop, call me",
        patient_id,
    )


@pytest.mark.parametrize("opt_out_type", [None, "HELP"])
def test_help_answers_with_the_clinic_contact_line(web, client, twilio, opt_out_type) -> None:
    _, phone = new_patient(web)
    params = inbound_params(phone, "help", opt_out_type=opt_out_type)
    answer = twilio_post(client, twilio, INBOUND_PATH, params)
    assert answer.status_code == 200
    assert "<Message>Example Clinic" in answer.text and CLINIC_PHONE in answer.text
    assert [r.kind for r in replies(web)] == ["help"]


@pytest.mark.parametrize(
    ("language", "body", "expected"),
    [
        ("tr", "HELP", "Example Clinic: tedavi hatırlatmaları. Yardım için +90 212 000 00 00"),
        ("tr_TR", "yardım", "Example Clinic: tedavi hatırlatmaları"),
        ("en", "YARDIM", "Example Clinic: treatment reminders. For help call +90 212 000 00 00"),
        ("pt_BR", "HELP", "Example Clinic: treatment reminders."),  # no Portuguese text: English
    ],
)
def test_help_is_answered_in_the_patients_language(
    web, client, twilio, language, body, expected
) -> None:
    _, phone = new_patient(web, language=language)
    answer = twilio_post(client, twilio, INBOUND_PATH, inbound_params(phone, body))
    assert answer.status_code == 200
    assert f"<Message>{expected}" in answer.text


@pytest.mark.parametrize(
    ("body", "default", "expected"),
    [
        ("YARDIM", "en", "Yardım için +90 212 000 00 00 numarasını arayın."),
        ("HELP", "en", "For help call +90 212 000 00 00."),
        ("HELP", "tr", "Yardım için +90 212 000 00 00 numarasını arayın."),
    ],
)
def test_help_from_an_unknown_number_follows_the_keyword_then_the_clinic(
    web, client, twilio, body, default, expected
) -> None:
    web.settings = web.settings.model_copy(update={"default_language": default})
    answer = twilio_post(client, twilio, INBOUND_PATH, inbound_params("+15555550100", body))
    assert answer.status_code == 200 and expected in answer.text


def test_help_without_a_clinic_phone_says_to_contact_the_clinic(web, client, twilio) -> None:
    web.settings = web.settings.model_copy(update={"clinic_phone": ""})
    _, phone = new_patient(web, language="tr")
    answer = twilio_post(client, twilio, INBOUND_PATH, inbound_params(phone, "YARDIM"))
    assert "Yardım için kliniğe başvurun." in answer.text


def test_a_repeated_inbound_message_is_stored_once(web, client, twilio) -> None:
    _, phone = new_patient(web)
    params = inbound_params(phone, "Can you call me?")
    for _ in range(3):
        assert twilio_post(client, twilio, INBOUND_PATH, params).status_code == 200
    assert len(replies(web)) == 1


def test_a_message_from_an_unknown_number_is_kept_without_a_patient(web, client, twilio) -> None:
    twilio_post(client, twilio, INBOUND_PATH, inbound_params("+15555550100", "STOP"))
    [reply] = replies(web)
    assert (reply.kind, reply.patient_id) == ("stop", None)


def test_a_stop_opts_out_every_patient_with_that_number(web, client, twilio) -> None:
    first, phone = new_patient(web)
    second, _ = new_patient(web, phone=phone)
    twilio_post(client, twilio, INBOUND_PATH, inbound_params(phone, "STOP"))
    assert all(not consent(web, p, "sms").usable for p in (first, second))


def test_an_unsigned_stop_changes_nothing(web, client, twilio) -> None:
    patient_id, phone = new_patient(web)
    answer = client.post(INBOUND_PATH, data=inbound_params(phone, "STOP"))
    assert answer.status_code == 403
    assert consent(web, patient_id, "sms").usable and not replies(web)


# an opt-out between planning and sending -------------------------------------------------------


def test_a_stop_after_planning_sends_the_reminder_by_the_next_channel(
    web, client, twilio, senders
) -> None:
    reminder_id = plan_due(web)
    assert state(web, reminder_id)[0].status == "pending"
    twilio_post(client, twilio, INBOUND_PATH, inbound_params(phone_of(web, reminder_id), "STOP"))
    dispatch(web)
    assert not senders["sms"].attempts and len(senders["email"].sent) == 1
    assert state(web, reminder_id)[0].channel == "email"


def test_a_stop_after_planning_cancels_a_reminder_with_no_other_channel(
    web, client, twilio, senders
) -> None:
    reminder_id = plan_due(web, channels="sms")
    twilio_post(client, twilio, INBOUND_PATH, inbound_params(phone_of(web, reminder_id), "STOP"))
    dispatch(web)
    reminder, deliveries = state(web, reminder_id)
    assert (reminder.status, reminder.reason, deliveries) == ("cancelled", "no_channel", [])
    assert not senders["sms"].attempts


@pytest.mark.parametrize(
    "url", ["reminders.example.org", "ftp://reminders.example.org", "https://x.org/?a=1"]
)
def test_a_public_url_providers_could_not_sign_stops_the_service_naming_it(url) -> None:
    with pytest.raises(ConfigError, match="REMINDERS_PUBLIC_URL"):
        load_settings({"REMINDERS_PUBLIC_URL": url})
