"""Fake Twilio Messaging and SendGrid Mail servers on 127.0.0.1 for driving the real SDKs."""

from tests.fakes._server import RecordedRequest, Reply, WebhookResult
from tests.fakes.sendgrid import FakeSendGrid, SentMail, sendgrid_error
from tests.fakes.twilio import CallbackAttempt, FakeTwilio, TwilioMessage, twilio_error

__all__ = [
    "CallbackAttempt",
    "FakeSendGrid",
    "FakeTwilio",
    "RecordedRequest",
    "Reply",
    "SentMail",
    "TwilioMessage",
    "WebhookResult",
    "sendgrid_error",
    "twilio_error",
]
