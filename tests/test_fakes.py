"""The provider fakes, driven through the real twilio and sendgrid SDKs over loopback HTTP."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
from python_http_client import exceptions as sg_errors
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.mail import CustomArg, Mail
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tests.fakes import FakeSendGrid, FakeTwilio, Reply, twilio_error

SENDER, PATIENT, SERVICE = "+15005550006", "+905321234567", "MG" + "a1" * 16
TEMPLATE = "HX" + "b2" * 16


@pytest.fixture(autouse=True)
def _loopback_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    for name in ("TWILIO_EDGE", "TWILIO_REGION", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def client_for(fake: FakeTwilio, timeout: float = 5.0, **kwargs: Any) -> Client:
    client = Client(
        fake.account_sid, fake.auth_token, http_client=TwilioHttpClient(timeout=timeout, **kwargs)
    )
    client.api.base_url = fake.base_url
    return client


def sg_client(fake: FakeSendGrid, timeout: float = 5.0) -> SendGridAPIClient:
    sg = SendGridAPIClient(fake.api_key, host=fake.base_url)
    sg.client.timeout = timeout
    return sg


def mail(**fields: Any) -> dict[str, Any]:
    body = {
        "personalizations": [{"to": [{"email": "ayse@example.com"}]}],
        "from": {"email": "clinic@example.org"},
        "subject": "Your injection",
        "content": [{"type": "text/plain", "value": "See you"}],
    }
    return {**body, **fields}


class Receiver:
    """A loopback server standing in for the service's webhook endpoints."""

    def __init__(self, status: int = 200) -> None:
        receiver = self
        self.posts: list[tuple[str, dict[str, str], bytes]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


# Twilio ------------------------------------------------------------------------------------
def test_it_creates_an_sms_that_the_sdk_parses(twilio: FakeTwilio) -> None:
    message = client_for(twilio).messages.create(to=PATIENT, from_=SENDER, body="Hello")

    assert message.sid.startswith("SM") and len(message.sid) == 34
    assert (message.status, message.num_segments, message.to) == ("queued", "1", PATIENT)
    assert message.date_created is not None and message.date_created.tzinfo is not None
    assert message.error_code is None and message.direction == "outbound-api"
    [sent] = twilio.messages
    assert sent.sid == message.sid and sent.body == "Hello"
    [request] = twilio.requests
    assert request.params == {"To": PATIENT, "From": SENDER, "Body": "Hello"}
    assert request.status == 201 and request.headers["Authorization"].startswith("Basic ")


def test_the_message_json_round_trips_through_the_sdk(twilio: FakeTwilio) -> None:
    client = client_for(twilio)
    response = client.messages.create_with_http_info(to=PATIENT, from_=SENDER, body="Hi")

    resource = twilio.messages[0].resource
    assert response.status_code == 201
    assert response.data.sid == resource["sid"]
    assert (
        response.data.date_updated.strftime("%a, %d %b %Y %H:%M:%S +0000")
        == resource["date_updated"]
    )
    assert set(resource) == {
        "account_sid",
        "api_version",
        "body",
        "date_created",
        "date_sent",
        "date_updated",
        "direction",
        "error_code",
        "error_message",
        "from",
        "messaging_service_sid",
        "num_media",
        "num_segments",
        "price",
        "price_unit",
        "sid",
        "status",
        "subresource_uris",
        "to",
        "uri",
    }


def test_it_answers_accepted_with_a_messaging_service(twilio: FakeTwilio) -> None:
    message = client_for(twilio).messages.create(
        to=PATIENT, messaging_service_sid=SERVICE, body="Hello"
    )

    assert (message.status, message.from_, message.num_segments) == ("accepted", None, "0")
    assert message.messaging_service_sid == SERVICE


def test_it_accepts_a_whatsapp_content_template(twilio: FakeTwilio) -> None:
    message = client_for(twilio).messages.create(
        to=f"whatsapp:{PATIENT}",
        from_=f"whatsapp:{SENDER}",
        content_sid=TEMPLATE,
        content_variables=json.dumps({"1": "Ayşe", "2": "12 Dec"}),
    )

    assert message.status == "queued" and message.to == f"whatsapp:{PATIENT}"
    [sent] = twilio.messages
    assert sent.content_sid == TEMPLATE and sent.content_variables == {"1": "Ayşe", "2": "12 Dec"}


def test_media_makes_an_mms(twilio: FakeTwilio) -> None:
    message = client_for(twilio).messages.create(
        to=PATIENT,
        from_=SENDER,
        media_url=["https://example.org/a.png", "https://example.org/b.png"],
    )

    assert message.sid.startswith("MM")
    assert message.num_media == "2"
    assert twilio.requests[0].params["MediaUrl"] == [
        "https://example.org/a.png",
        "https://example.org/b.png",
    ]


def test_it_waits_for_requests_and_forgets_on_reset(twilio: FakeTwilio) -> None:
    twilio.fail_to(PATIENT)
    client = client_for(twilio)
    later = threading.Timer(0.1, lambda: client.messages.create(to=SENDER, from_=SENDER, body="x"))
    later.start()

    [request] = twilio.wait_for_requests(1, timeout=5)
    later.join()
    twilio.reset()
    client.messages.create(to=PATIENT, from_=SENDER, body="x")

    assert request.params["To"] == SENDER
    assert [m.to for m in twilio.messages] == [PATIENT]
    with pytest.raises(TimeoutError):
        twilio.wait_for_requests(2, timeout=0.05)


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("a" * 160, "1"),
        ("a" * 161, "2"),
        ("a" * 306, "2"),
        ("a" * 307, "3"),
        ("{" * 80, "1"),
        ("{" * 81, "2"),
        ("ı" * 70, "1"),
        ("ı" * 71, "2"),
        ("a" * 159 + "\u00a0", "3"),
    ],
)
def test_it_counts_segments_like_twilio(twilio: FakeTwilio, body: str, segments: str) -> None:
    message = client_for(twilio).messages.create(to=PATIENT, from_=SENDER, body=body)

    assert message.num_segments == segments


def test_it_rejects_bad_credentials_with_20003(twilio: FakeTwilio) -> None:
    client = Client(twilio.account_sid, "wrong", http_client=TwilioHttpClient(timeout=5))
    client.api.base_url = twilio.base_url

    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(to=PATIENT, from_=SENDER, body="Hello")

    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert twilio.messages == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"to": "", "from_": SENDER, "body": "x"}, 21604),
        ({"body": "x"}, 21603),
        ({"from_": SENDER}, 21619),
        ({"to": "0532 123", "from_": SENDER, "body": "x"}, 21211),
        ({"from_": "not a number!", "body": "x"}, 21212),
        ({"messaging_service_sid": "MG123", "body": "x"}, 21705),
        ({"from_": SENDER, "content_sid": "HX123"}, 21655),
        ({"from_": SENDER, "content_sid": TEMPLATE, "content_variables": "{1: x}"}, 21656),
        ({"from_": SENDER, "content_sid": TEMPLATE, "content_variables": '{"1": ""}'}, 21656),
        ({"from_": SENDER, "content_sid": TEMPLATE, "content_variables": '{"1": "a\\nb"}'}, 21656),
        ({"from_": SENDER, "content_sid": TEMPLATE, "content_variables": '{"1": "a\\tb"}'}, 21656),
        ({"from_": SENDER, "body": "x", "content_variables": '{"1": "a"}'}, 21656),
        ({"to": f"whatsapp:{PATIENT}", "from_": SENDER, "body": "x"}, 21910),
        ({"from_": f"whatsapp:{SENDER}", "body": "x"}, 21910),
        ({"from_": SENDER, "body": "x", "validity_period": 0}, 90007),
        ({"from_": SENDER, "body": "x", "validity_period": 36001}, 90007),
        ({"from_": SENDER, "body": "x", "status_callback": "https://bad_host.example/cb"}, 21609),
        ({"from_": SENDER, "body": "x", "status_callback": "ftp://example.org/cb"}, 21609),
        ({"from_": SENDER, "body": "x" * 1601}, 21617),
    ],
)
def test_it_rejects_schema_and_rule_violations(
    twilio: FakeTwilio, fields: dict[str, Any], code: int
) -> None:
    with pytest.raises(TwilioRestException) as caught:
        client_for(twilio).messages.create(**{"to": PATIENT, **fields})

    assert (caught.value.status, caught.value.code) == (400, code)
    assert twilio.messages == []


@pytest.mark.parametrize("code", [21211, 21614, 21408, 21610])
def test_it_fails_one_recipient_permanently(twilio: FakeTwilio, code: int) -> None:
    twilio.fail_to(PATIENT, code=code)
    client = client_for(twilio)

    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(to=PATIENT, from_=SENDER, body="x")
    client.messages.create(to="+905329999999", from_=SENDER, body="x")

    assert (caught.value.status, caught.value.code) == (400, code)
    assert [m.to for m in twilio.messages] == ["+905329999999"]


def test_it_throttles_with_429_and_the_caller_sees_retry_after(twilio: FakeTwilio) -> None:
    twilio.fail_next(status=429, code=20429, times=2, headers={"Retry-After": "2"})
    seen: list[str | None] = []

    def remember(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        seen.append(response.headers.get("Retry-After"))

    client = client_for(twilio, request_hooks={"response": [remember]})
    for _ in range(2):
        with pytest.raises(TwilioRestException) as caught:
            client.messages.create(to=PATIENT, from_=SENDER, body="x")
        assert (caught.value.status, caught.value.code) == (429, 20429)
    last = client.http_client._test_only_last_response
    assert last is not None and last.headers["Retry-After"] == "2"
    client.messages.create(to=PATIENT, from_=SENDER, body="x")

    assert seen == ["2", "2", None]
    assert len(twilio.messages) == 1
    assert [r.params["To"] for r in twilio.requests] == [PATIENT] * 3  # parsed before scripting
    assert [r.status for r in twilio.requests] == [429, 429, 201]


def test_error_bodies_never_carry_type_or_title(twilio: FakeTwilio) -> None:
    twilio.fail_next(status=500, code=20500)
    url = f"{twilio.base_url}/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    auth = (twilio.account_sid, twilio.auth_token)

    answers = [requests.post(url, data={"To": PATIENT}, auth=auth, timeout=5) for _ in range(2)]
    answers.append(requests.post(url, data={}, auth=("AC" + "0" * 32, "x"), timeout=5))

    for answer in answers:
        assert set(answer.json()) == {"code", "message", "more_info", "status"}
        assert answer.json()["status"] == answer.status_code
    assert [a.status_code for a in answers] == [500, 400, 401]
    assert answers[2].headers["WWW-Authenticate"].startswith("Basic")


def test_type_and_title_in_an_error_would_make_the_sdk_raise_another_exception(
    twilio: FakeTwilio,
) -> None:
    problem = {"type": "https://x/e", "title": "Bad", "status": 400, "code": 21211}
    twilio.set_handler(lambda r: Reply(400, json.dumps(problem).encode()))

    with pytest.raises(TwilioServiceException):  # why the fake never sends type or title
        client_for(twilio).messages.create(to=PATIENT, from_=SENDER, body="x")


def test_a_hang_raises_read_timeout_and_may_still_accept(twilio: FakeTwilio) -> None:
    client = client_for(twilio, timeout=0.3)
    twilio.hang_next(5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.messages.create(to=PATIENT, from_=SENDER, body="dropped")
    twilio.hang_next(5, accept=True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.messages.create(to=PATIENT, from_=SENDER, body="accepted late")

    assert [m.body for m in twilio.messages] == ["accepted late"]
    assert [r.status for r in twilio.requests] == [None, None]


def test_an_outage_fails_every_request_until_it_ends(twilio: FakeTwilio) -> None:
    twilio.outage(status=503, until=time.monotonic() + 0.3)
    client = client_for(twilio)
    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(to=PATIENT, from_=SENDER, body="x")
    time.sleep(0.35)
    client.messages.create(to=PATIENT, from_=SENDER, body="x")

    assert (caught.value.status, caught.value.code) == (503, 20503)
    assert len(twilio.messages) == 1


def test_a_handler_scripts_any_answer(twilio: FakeTwilio) -> None:
    twilio.set_handler(lambda r: twilio_error(500, 20500) if b"boom" in r.body else None)
    client = client_for(twilio)
    with pytest.raises(TwilioRestException) as caught:
        client.messages.create(to=PATIENT, from_=SENDER, body="boom")
    client.messages.create(to=PATIENT, from_=SENDER, body="fine")

    assert caught.value.code == 20500 and [m.body for m in twilio.messages] == ["fine"]


def test_a_stopped_fake_gives_a_connection_error() -> None:
    fake = FakeTwilio().start()
    client = client_for(fake)
    fake.stop()

    with pytest.raises(requests.exceptions.ConnectionError):
        client.messages.create(to=PATIENT, from_=SENDER, body="x")


def test_it_signs_the_known_answer_from_providers_md() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    fake = FakeTwilio(auth_token="12345")

    assert fake.sign("https://mycompany.com/myapp.php?foo=1&bar=2", params) == (
        "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    )


def test_it_posts_signed_status_callbacks_sent_then_delivered() -> None:
    with Receiver() as service, FakeTwilio(auto_callbacks=True) as fake:
        client = client_for(fake)
        fake.fail_later("+905320000003", error_code=30003)
        for to in (PATIENT, "+905320000003"):
            client.messages.create(
                to=to, from_=SENDER, body="x", status_callback=service.url("/cb")
            )
        client.messages.create(
            to=f"whatsapp:{PATIENT}",
            from_=f"whatsapp:{SENDER}",
            body="free-form",
            status_callback=service.url("/cb"),
        )
        fake.stop()  # joins the callback threads

    validator = RequestValidator(fake.auth_token)
    by_sid: dict[str, list[tuple[str, str | None]]] = {}
    for _path, headers, body in service.posts:
        params = dict(parse_qsl(body.decode()))
        assert validator.validate(service.url("/cb"), params, headers["X-Twilio-Signature"])
        by_sid.setdefault(params["MessageSid"], []).append(
            (params["MessageStatus"], params.get("ErrorCode"))
        )
    assert [by_sid[m.sid] for m in fake.messages] == [
        [("sent", None), ("delivered", None)],
        [("sent", None), ("undelivered", "30003")],
        [("failed", "63016")],
    ]
    assert all(c.status == 200 for c in fake.callbacks)


def test_it_posts_signed_inbound_messages_and_status_on_demand(twilio: FakeTwilio) -> None:
    with Receiver() as service:
        message = client_for(twilio).messages.create(
            to=PATIENT, from_=SENDER, body="x", status_callback=service.url("/cb?clinic=1")
        )
        delivered = twilio.post_status(message.sid, "delivered")
        twilio.post_status(message.sid, "sent")  # out of order, as Twilio may do
        inbound = twilio.post_inbound(service.url("/in"), PATIENT, "STOP", opt_out_type="STOP")

    validator = RequestValidator(twilio.auth_token)
    assert delivered.status == inbound.status == 200
    for path, headers, body in service.posts:
        params = dict(parse_qsl(body.decode()))
        assert validator.validate(service.url(path), params, headers["X-Twilio-Signature"])
    assert dict(parse_qsl(service.posts[2][2].decode()))["OptOutType"] == "STOP"


# SendGrid ----------------------------------------------------------------------------------
def test_it_accepts_mail_with_202_and_a_message_id(sendgrid: FakeSendGrid) -> None:
    message = Mail(
        from_email="clinic@example.org",
        to_emails="ayse@example.com",
        subject="Your injection",
        plain_text_content="See you",
        html_content="<p>See you</p>",
    )
    message.custom_arg = [CustomArg("reminder_id", "42")]
    response = sg_client(sendgrid).send(message)

    assert (response.status_code, response.body) == (202, b"")
    message_id = response.headers["X-Message-Id"]
    assert len(message_id) == 22
    [sent] = sendgrid.mails
    assert (sent.message_id, sent.recipients) == (message_id, ["ayse@example.com"])
    assert sent.body["custom_args"] == {"reminder_id": "42"}
    assert sendgrid.requests[0].headers["Authorization"] == f"Bearer {sendgrid.api_key}"


def test_sandbox_mode_answers_200_and_sends_nothing(sendgrid: FakeSendGrid) -> None:
    body = mail(mail_settings={"sandbox_mode": {"enable": True}})
    response = sg_client(sendgrid).client.mail.send.post(request_body=body)

    assert response.status_code == 200 and sendgrid.mails == []


def test_a_dynamic_template_needs_no_subject_or_content(sendgrid: FakeSendGrid) -> None:
    body = mail(template_id="d-1234", subject=None, content=None)
    body = {k: v for k, v in body.items() if v is not None}
    body["personalizations"][0]["dynamic_template_data"] = {"name": "Ayşe"}

    assert sg_client(sendgrid).send(body).status_code == 202


def test_a_bad_key_raises_unauthorized(sendgrid: FakeSendGrid) -> None:
    sg = SendGridAPIClient("SG.wrong", host=sendgrid.base_url)
    sg.client.timeout = 5
    with pytest.raises(sg_errors.UnauthorizedError) as caught:
        sg.send(mail())

    assert caught.value.status_code == 401
    [error] = json.loads(caught.value.body)["errors"]
    assert error["field"] is None and error["help"] is None and error["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.pop("from"), "from"),
        (lambda b: b.update({"from": {"email": "not-an-address"}}), "from.email"),
        (lambda b: b.update({"personalizations": []}), "personalizations"),
        (
            lambda b: b["personalizations"][0].update(to=[{"email": "x"}]),
            "personalizations.0.to.0.email",
        ),
        (
            lambda b: b["personalizations"][0].update(custom_args={"n": 1}),
            "personalizations.0.custom_args.n",
        ),
        (lambda b: b.update(custom_args="id=1"), "custom_args"),
        (lambda b: b.pop("subject"), "subject"),
        (lambda b: b.pop("content"), "content"),
        (
            lambda b: b.update(
                content=[
                    {"type": "text/html", "value": "<p>"},
                    {"type": "text/plain", "value": "p"},
                ]
            ),
            "content",
        ),
        (lambda b: b.update(categories=[str(i) for i in range(11)]), "categories"),
        (
            lambda b: b["personalizations"][0].update(
                to=[{"email": f"p{i}@example.com"} for i in range(1001)]
            ),
            "personalizations",
        ),
    ],
)
def test_it_rejects_schema_violations_naming_the_field(
    sendgrid: FakeSendGrid, change: Callable[[dict[str, Any]], object], field: str
) -> None:
    body = mail()
    change(body)
    with pytest.raises(sg_errors.BadRequestsError) as caught:
        sg_client(sendgrid).send(body)

    assert field in [e["field"] for e in caught.value.to_dict["errors"]]
    assert sendgrid.mails == []


def test_an_unverified_sender_is_forbidden() -> None:
    with FakeSendGrid(verified_senders={"clinic@example.org"}) as fake:
        sg = sg_client(fake)
        assert sg.send(mail()).status_code == 202
        with pytest.raises(sg_errors.ForbiddenError) as caught:
            sg.send(mail(**{"from": {"email": "other@example.org"}}))

    assert caught.value.to_dict["errors"][0]["field"] == "from"


def test_a_429_shows_the_rate_limit_reset_to_the_caller(sendgrid: FakeSendGrid) -> None:
    reset = str(int(time.time()) + 2)
    sendgrid.fail_next(status=429, times=1, headers={"X-RateLimit-Reset": reset})
    sg = sg_client(sendgrid)
    with pytest.raises(sg_errors.TooManyRequestsError) as caught:
        sg.send(mail())

    assert caught.value.status_code == 429 and caught.value.headers["X-RateLimit-Reset"] == reset
    assert sg.send(mail()).status_code == 202


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, sg_errors.BadRequestsError),
        (403, sg_errors.ForbiddenError),
        (413, sg_errors.PayloadTooLargeError),
        (500, sg_errors.InternalServerError),
        (503, sg_errors.ServiceUnavailableError),
    ],
)
def test_each_scripted_status_raises_its_sdk_error(
    sendgrid: FakeSendGrid, status: int, error: type[sg_errors.HTTPError]
) -> None:
    sendgrid.fail_next(status=status)
    with pytest.raises(error) as caught:
        sg_client(sendgrid).send(mail())

    assert caught.value.status_code == status and "errors" in caught.value.to_dict


def test_a_body_over_the_size_limit_is_413() -> None:
    with FakeSendGrid(max_body_bytes=1000) as fake, pytest.raises(sg_errors.PayloadTooLargeError):
        sg_client(fake).send(mail(content=[{"type": "text/plain", "value": "x" * 2000}]))


def test_fail_to_rejects_the_sends_naming_that_recipient(sendgrid: FakeSendGrid) -> None:
    sendgrid.fail_to("ayse@example.com", status=400, field="personalizations.0.to.0.email")
    sg = sg_client(sendgrid)
    with pytest.raises(sg_errors.BadRequestsError):
        sg.send(mail())
    other = mail(personalizations=[{"to": [{"email": "mehmet@example.com"}]}])

    assert sg.send(other).status_code == 202


def test_a_hang_raises_timeout_error_and_an_outage_503(sendgrid: FakeSendGrid) -> None:
    sg = sg_client(sendgrid, timeout=0.3)
    sendgrid.hang_next(5)
    with pytest.raises(TimeoutError):
        sg.send(mail())
    sendgrid.outage(503)
    with pytest.raises(sg_errors.ServiceUnavailableError):
        sg.send(mail())
    sendgrid.end_outage()

    assert sg.send(mail()).status_code == 202


def test_its_event_signature_is_verified_by_the_sdk_helper(sendgrid: FakeSendGrid) -> None:
    sg_client(sendgrid).send(mail(custom_args={"reminder_id": "42"}))
    [sent] = sendgrid.mails
    events = [sendgrid.event(sent, "ayse@example.com", "delivered")]
    with Receiver() as service:
        assert sendgrid.signed_event_post(service.url("/events"), events).status == 200
    [(_, headers, body)] = service.posts
    verifier = EventWebhook(sendgrid.public_key_b64)
    signature = headers["X-Twilio-Email-Event-Webhook-Signature"]
    ts = headers["X-Twilio-Email-Event-Webhook-Timestamp"]

    assert verifier.verify_signature(body.decode(), signature, ts)
    assert not verifier.verify_signature(body.decode().replace("42", "43"), signature, ts)
    [event] = json.loads(body)
    assert event["reminder_id"] == "42" and event["sg_message_id"].startswith(sent.message_id)
    assert base64.b64decode(sendgrid.public_key_b64)[:2] == b"\x30\x59"  # DER SPKI, P-256


# both fakes --------------------------------------------------------------------------------
def test_both_fakes_measure_the_peak_request_rate(
    twilio: FakeTwilio, sendgrid: FakeSendGrid
) -> None:
    client, sg = client_for(twilio), sg_client(sendgrid)
    for burst in range(2):
        for _ in range(3 + burst):
            client.messages.create(to=PATIENT, from_=SENDER, body="x")
            sg.send(mail())
        time.sleep(1.05 * (1 - burst))

    assert twilio.max_rate() == sendgrid.max_rate() == 4.0
    assert twilio.max_rate(window=10) == 0.7
    assert twilio.max_rate(where=lambda r: r.params["From"] == "+15550000000") == 0


def test_stopping_joins_every_thread_even_with_a_request_hanging() -> None:
    before = set(threading.enumerate())
    fake = FakeTwilio().start()
    fake.hang_next(30)
    client = client_for(fake, timeout=0.2)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.messages.create(to=PATIENT, from_=SENDER, body="x")
    started = time.monotonic()
    fake.stop()

    assert time.monotonic() - started < 2
    assert set(threading.enumerate()) == before
    assert fake.server_errors == []
