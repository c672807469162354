"""SIGTERM to ``reminders run`` while every dispatch worker is inside a slow provider call.

``tests/test_service.py`` stops the process while its sends wait for the rate limiter (the
console channel, no provider call in flight), and stops :class:`Service` in-process while a
call hangs. Here the real process sends through the real Twilio SDK to a fake Twilio that
answers slowly: the process exits within 10 s with code 0 and leaves nothing ``claimed``; a
call that answers within the shutdown wait is recorded as sent, one that does not is handed to
the in-doubt rule, and what never reached the provider goes back to ``pending``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from reminders.models import Delivery, Reminder
from reminders.runtime import Runtime
from tests.fakes import FakeTwilio, RecordedRequest, Reply
from tests.provider_setup import SMS_FROM
from tests.support.service import BIN, ServiceProcess, seed_due, service_env

CONCURRENCY = 4
BACKLOG = 12


@pytest.fixture
def released() -> Iterator[threading.Event]:
    """Set at the end of the test, so the fake's held answers let go of its threads."""
    event = threading.Event()
    yield event
    event.set()


def slow_answers(
    seconds: float, release: threading.Event
) -> Callable[[RecordedRequest], Reply | None]:
    """A fake handler: each request is held ``seconds`` (or until ``release``), then served."""

    def handler(_request: RecordedRequest) -> Reply | None:
        release.wait(seconds)
        return None

    return handler


def _env(runtime: Runtime, twilio: FakeTwilio) -> dict[str, str]:
    env = service_env(runtime.engine.url.render_as_string(hide_password=False))
    return {
        **env,
        "REMINDERS_DELIVERY_MODE": "live",
        "REMINDERS_PUBLIC_URL": f"http://127.0.0.1:{env['REMINDERS_HTTP_PORT']}",
        "REMINDERS_DISPATCH_CONCURRENCY": str(CONCURRENCY),
        "REMINDERS_PROVIDER_TIMEOUT": "60",
        "REMINDERS_LOG_LEVEL": "INFO",
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_SMS_FROM": SMS_FROM,
        "TWILIO_API_BASE_URL": twilio.base_url,
    }


def _state(engine: Engine) -> tuple[Counter[str], Counter[str]]:
    with Session(engine) as s:
        reminders = Counter(s.scalars(select(Reminder.status)))
        deliveries = Counter(s.scalars(select(Delivery.status)))
    return reminders, deliveries


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("answer_seconds", "finished"),
    [(2.0, True), (40.0, False)],
    ids=["answers-within-the-shutdown-wait", "answers-long-after"],
)
def test_sigterm_while_every_worker_waits_on_the_provider_exits_within_10_s_leaving_none_claimed(
    runtime, tmp_path: Path, released, answer_seconds, finished
) -> None:
    seed_due(runtime.engine, BACKLOG, prefix="stop", planned=True)
    with FakeTwilio() as twilio:
        twilio.set_handler(slow_answers(answer_seconds, released))
        argv = [str(BIN / "reminders"), "run"]
        service = ServiceProcess(argv, _env(runtime, twilio), tmp_path, "stop").start()
        try:
            service.wait_for("every worker in a call", lambda: len(twilio.requests) >= 4, 60)
            at_signal = len(twilio.requests)  # no worker is free to start another call now
            stopped = service.terminate()
        finally:
            service.kill()
        in_flight = len(twilio.requests)
        released.set()

    reminders, deliveries = _state(runtime.engine)
    assert (stopped.code, stopped.seconds < 10) == (0, True), service.tail()
    assert in_flight >= CONCURRENCY  # every worker was inside a call at SIGTERM
    assert in_flight == at_signal  # and no call started after it, even once workers were free
    assert reminders["claimed"] == 0 and deliveries["sending"] == 0
    left = BACKLOG - in_flight  # never reached the provider: given back
    if finished:  # the answers came within the wait: recorded as sent
        assert reminders == {"sent": in_flight, "pending": left}
        assert deliveries == {"queued": in_flight}
    else:  # still inside the call at the end of the wait: left to the in-doubt rule
        assert reminders == {"in_doubt": in_flight, "pending": left}
        assert deliveries == {"in_doubt": in_flight}
    assert service.events("service_stopped")
