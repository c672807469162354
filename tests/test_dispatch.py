"""Dispatch on a real database: claims, leases, the in-doubt rule, retries, fallback, expiry,
the send window, templates and opt-outs. Senders are the recording test channel."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select, text, update

from reminders import consents, queries
from reminders.channels import ChannelError, ErrorKind, OutboundMessage
from reminders.channels.recording import RecordingSender
from reminders.dispatch import Dispatcher
from reminders.models import Consent, Delivery, DeliveryEvent, Reminder, Template, Treatment
from reminders.ratelimit import RateLimiter
from reminders.retry import RetryPolicy
from reminders.runtime import Runtime
from tests import factories

LEASE = dt.timedelta(seconds=300)
GRACE = dt.timedelta(seconds=900)
Senders = dict[str, RecordingSender]


class FixedRandom(random.Random):
    """A random source that always draws ``value`` (to pin the jitter)."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def due(
    rt: Runtime,
    now: dt.datetime,
    *,
    expires: dt.timedelta = dt.timedelta(days=7),
    at: dt.datetime | None = None,
    **patient: Any,
) -> int:
    """A pending `due` reminder of a new patient, due at ``at`` (default ``now``)."""
    with rt.sessions() as s, s.begin():
        p = factories.patient(s, **patient)
        t = factories.treatment(s, p, dt.date(2025, 12, 10), needs_plan=False)
        r = Reminder(
            treatment_id=t.id,
            patient_id=p.id,
            protocol=t.protocol,
            step="due",
            status="pending",
            due_at=at or now,
            expires_at=(at or now) + expires,
            next_attempt_at=at or now,
            attempts=0,
        )
        s.add(r)
        s.flush()
        return r.id


def reminder(rt: Runtime, rid: int) -> Reminder:
    with rt.sessions() as s:
        return s.get_one(Reminder, rid)


def deliveries(rt: Runtime, rid: int) -> list[tuple[str, str, bool, str | None]]:
    """(channel, status, permanent, error_code) of each attempt, in order."""
    with rt.sessions() as s:
        rows = s.scalars(select(Delivery).where(Delivery.reminder_id == rid).order_by(Delivery.id))
        return [(d.channel, d.status, d.permanent, d.error_code) for d in rows]


def fail(kind: ErrorKind, code: str, retry_after: float | None = None) -> Callable[..., Any]:
    error = ChannelError(kind, f"provider says {code}", code=code, retry_after=retry_after)
    return lambda _message: error


def tuned(rt: Runtime, **settings: Any) -> Runtime:
    """The same database and senders with some settings changed."""
    return dataclasses.replace(rt, settings=rt.settings.model_copy(update=settings))


@pytest.fixture
def make_dispatcher(runtime: Runtime) -> Iterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []
    fast = tuned(runtime, sms_rate=1000.0)  # the default 1 SMS/s would only slow the tests

    def make(rt: Runtime = fast, owner: str = "d1", **retry: Any) -> Dispatcher:
        policy = RetryPolicy(**{"base_seconds": 30, "max_attempts": 3, **retry})
        made.append(Dispatcher(rt, owner, policy))
        return made[-1]

    yield make
    for d in made:
        d.close(timeout=1)


@pytest.fixture
def dispatcher(make_dispatcher: Callable[..., Dispatcher]) -> Dispatcher:
    return make_dispatcher()


# --- sending and claiming -------------------------------------------------------------------


def test_a_due_reminder_goes_out_once_on_the_first_channel(runtime, dispatcher, senders, now):
    rid = due(runtime, now)
    assert dispatcher.run_once(now=now) == {"sent": 1}
    assert dispatcher.run_once(now=now + dt.timedelta(hours=1)) == {}
    row = reminder(runtime, rid)
    assert (row.status, row.channel, row.sent_at, row.claimed_by) == ("sent", "sms", now, None)
    assert [m.reminder_id for m in senders["sms"].sent] == [rid]
    assert senders["email"].attempts == []
    assert deliveries(runtime, rid) == [("sms", "accepted", False, None)]
    with runtime.sessions() as s:
        events = s.scalars(select(DeliveryEvent.status).order_by(DeliveryEvent.id)).all()
    assert events == ["sending", "accepted"]  # the row existed before the provider call


def test_the_attempt_row_is_committed_before_the_provider_is_called(
    runtime, dispatcher, senders, now
):
    due(runtime, now)
    seen: list[str] = []

    def provider(message: OutboundMessage) -> None:
        with runtime.sessions() as s:  # another connection: only committed rows are visible
            row = s.scalars(select(Delivery).where(Delivery.public_id == message.delivery_id))
            seen.append(row.one().status)

    senders["sms"].script = provider
    assert dispatcher.run_once(now=now) == {"sent": 1}
    assert seen == ["sending"]


def test_a_channel_without_consent_is_skipped(runtime, dispatcher, senders, now):
    rid = due(runtime, now, channels="sms|email", consent=["email"])
    assert dispatcher.run_once(now=now) == {"sent": 1}
    assert senders["sms"].attempts == []
    assert reminder(runtime, rid).channel == "email"


def test_a_claim_takes_the_oldest_due_reminders_up_to_the_batch_size(runtime, now):
    first = due(runtime, now, at=now - dt.timedelta(minutes=3))
    second = due(runtime, now, at=now - dt.timedelta(minutes=2))
    third = due(runtime, now, at=now - dt.timedelta(minutes=1))
    due(runtime, now, at=now + dt.timedelta(minutes=1))  # not yet due
    with runtime.sessions() as s, s.begin():
        assert queries.claim_due(s, "a", now=now, limit=2, lease=LEASE) == [first, second]
    with runtime.sessions() as s, s.begin():
        assert queries.claim_due(s, "b", now=now, limit=2, lease=LEASE) == [third]
    row = reminder(runtime, first)
    assert (row.status, row.claimed_by, row.lease_until) == ("claimed", "a", now + LEASE)


def test_a_claim_commits_without_waiting_for_the_disk_and_nothing_after_it_does(runtime, now):
    """A claim lost to a crash leaves its reminders pending (the attempts' commit, which waits
    for the disk, comes before any call): the claim's own commit need not wait, and only it."""
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("synchronous_commit: PostgreSQL")
    due(runtime, now)
    with runtime.sessions() as s, s.begin():
        assert s.scalar(text("SHOW synchronous_commit")) == "on"
        assert len(queries.claim_due(s, "a", now=now, limit=2, lease=LEASE)) == 1
        assert s.scalar(text("SHOW synchronous_commit")) == "off"
    with runtime.sessions() as s, s.begin():  # the next transaction on the same connection
        assert s.scalar(text("SHOW synchronous_commit")) == "on"


def test_a_pass_claims_batch_after_batch_until_nothing_is_due(
    runtime, make_dispatcher, senders, now
):
    ids = [due(runtime, now) for _ in range(5)]
    dispatcher = make_dispatcher(tuned(runtime, dispatch_batch_size=2, sms_rate=1000.0))
    assert dispatcher.run_once(now=now) == {"sent": 5}
    assert sorted(m.reminder_id for m in senders["sms"].sent) == ids


def test_a_reminder_claimed_by_another_dispatcher_is_not_touched(runtime, dispatcher, now):
    rid = due(runtime, now)
    with runtime.sessions() as s, s.begin():
        queries.claim_due(s, "other", now=now, limit=10, lease=LEASE)
    assert dispatcher.process(rid, now=now) == "lost_claim"
    assert dispatcher.run_once(now=now) == {}
    assert reminder(runtime, rid).claimed_by == "other"


# --- leases and the in-doubt rule ------------------------------------------------------------


def housekeeping(rt: Runtime, now: dt.datetime) -> tuple[int, int, int]:
    with rt.sessions() as s, s.begin():
        released, doubtful = queries.release_stale(s, now=now, grace=GRACE)
        return released, doubtful, queries.resolve_in_doubt(s, now=now)


def claim_as_dead_dispatcher(rt: Runtime, now: dt.datetime, *, sending: bool) -> None:
    with rt.sessions() as s, s.begin():
        for rid in queries.claim_due(s, "dead", now=now, limit=10, lease=LEASE):
            if sending:
                queries.start_delivery(s, rid, channel="sms", address="+905431970000", now=now)


def test_a_claim_whose_lease_ran_out_goes_back_to_the_queue(runtime, dispatcher, senders, now):
    rid = due(runtime, now)
    claim_as_dead_dispatcher(runtime, now, sending=False)
    assert housekeeping(runtime, now + LEASE) == (0, 0, 0)  # the lease has not run out yet
    assert reminder(runtime, rid).status == "claimed"
    later = now + LEASE + dt.timedelta(seconds=1)
    assert housekeeping(runtime, later) == (1, 0, 0)
    row = reminder(runtime, rid)
    assert (row.status, row.claimed_by, row.lease_until) == ("pending", None, None)
    assert dispatcher.run_once(now=later) == {"sent": 1}
    assert len(senders["sms"].sent) == 1


def test_a_send_in_flight_when_its_dispatcher_died_waits_in_doubt_then_is_resent(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now)
    claim_as_dead_dispatcher(runtime, now, sending=True)
    expired = now + LEASE + dt.timedelta(seconds=1)
    assert housekeeping(runtime, expired) == (0, 1, 0)
    row = reminder(runtime, rid)
    assert (row.status, row.next_attempt_at) == ("in_doubt", expired + GRACE)
    assert deliveries(runtime, rid) == [("sms", "in_doubt", False, None)]
    assert dispatcher.run_once(now=expired + GRACE / 2) == {}  # waiting for a callback
    assert housekeeping(runtime, expired + GRACE / 2) == (0, 0, 0)
    assert housekeeping(runtime, expired + GRACE) == (0, 0, 1)  # no word: abandoned
    assert dispatcher.run_once(now=expired + GRACE) == {"sent": 1}
    assert [d[1] for d in deliveries(runtime, rid)] == ["abandoned", "accepted"]
    assert len(senders["sms"].sent) == 1


def test_an_in_doubt_send_that_the_provider_confirms_is_never_resent(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now)
    claim_as_dead_dispatcher(runtime, now, sending=True)
    expired = now + LEASE + dt.timedelta(seconds=1)
    housekeeping(runtime, expired)
    with runtime.sessions() as s, s.begin():  # the provider's status callback arrives
        delivery = s.scalars(select(Delivery).where(Delivery.reminder_id == rid)).one()
        queries.settle_in_doubt(s, delivery, accepted=True, now=expired)
    assert housekeeping(runtime, expired + GRACE) == (0, 0, 0)
    assert dispatcher.run_once(now=expired + GRACE) == {}
    assert reminder(runtime, rid).status == "sent"
    assert senders["sms"].attempts == []


def test_a_send_that_outlives_its_lease_but_succeeds_counts_as_sent(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now)
    late = now + LEASE + dt.timedelta(seconds=1)

    def slow_provider(_message: OutboundMessage) -> None:
        housekeeping(runtime, late)  # another replica recovers the lease mid-call

    senders["sms"].script = slow_provider
    assert dispatcher.run_once(now=now) == {"sent": 1}
    assert reminder(runtime, rid).status == "sent"
    assert deliveries(runtime, rid) == [("sms", "accepted", False, None)]
    assert housekeeping(runtime, late + GRACE) == (0, 0, 0)
    assert dispatcher.run_once(now=late + GRACE) == {}
    assert len(senders["sms"].attempts) == 1


def test_a_send_that_got_no_answer_waits_in_doubt_instead_of_retrying_or_falling_back(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now)
    senders["sms"].script = fail(ErrorKind.IN_DOUBT, "no_answer")
    assert dispatcher.run_once(now=now) == {"in_doubt": 1}
    row = reminder(runtime, rid)
    assert (row.status, row.claimed_by, row.attempts) == ("in_doubt", None, 0)
    assert row.next_attempt_at == now + GRACE
    assert deliveries(runtime, rid) == [("sms", "in_doubt", False, "no_answer")]
    assert senders["email"].attempts == []
    assert housekeeping(runtime, now + GRACE) == (0, 0, 1)  # no callback came: sent again
    senders["sms"].script = None
    assert dispatcher.run_once(now=now + GRACE) == {"sent": 1}
    assert [d[1] for d in deliveries(runtime, rid)] == ["abandoned", "accepted"]


def test_closing_gives_back_claims_not_yet_sent(runtime, dispatcher, now):
    rid = due(runtime, now)
    with runtime.sessions() as s, s.begin():
        queries.claim_due(s, dispatcher.owner, now=now, limit=10, lease=LEASE)
    dispatcher.close(timeout=1)
    row = reminder(runtime, rid)
    assert (row.status, row.claimed_by) == ("pending", None)


def test_closing_with_a_send_stuck_in_flight_leaves_it_in_doubt_not_claimed(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now)
    entered, release = threading.Event(), threading.Event()

    def stuck(_message: OutboundMessage) -> None:
        entered.set()
        release.wait(10)

    senders["sms"].script = stuck
    worker = threading.Thread(target=dispatcher.run_once, kwargs={"now": now})
    worker.start()
    assert entered.wait(5)
    dispatcher.close(timeout=0.2)
    row = reminder(runtime, rid)
    assert (row.status, row.claimed_by) == ("in_doubt", None)
    assert deliveries(runtime, rid) == [("sms", "in_doubt", False, None)]
    release.set()  # the provider answers after all: that settles it as sent
    worker.join(5)
    with runtime.sessions() as s:  # the worker thread records the answer after run_once gave up
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
        while s.get_one(Reminder, rid, populate_existing=True).status != "sent":
            assert dt.datetime.now(dt.UTC) < deadline
            s.rollback()
    assert deliveries(runtime, rid) == [("sms", "accepted", False, None)]


# --- retries ---------------------------------------------------------------------------------


def test_a_transient_failure_is_retried_later_with_backoff_and_jitter(
    runtime, make_dispatcher, senders, now
):
    rid = due(runtime, now)
    senders["sms"].script = fail(ErrorKind.TRANSIENT, "503")
    dispatcher = make_dispatcher(rng=FixedRandom(0.5))  # jitter factor 0.5 + 0.5/2 = 0.75
    assert dispatcher.run_once(now=now) == {"retry": 1}
    row = reminder(runtime, rid)
    assert (row.status, row.attempts, row.claimed_by) == ("pending", 1, None)
    assert row.next_attempt_at == now + dt.timedelta(seconds=22.5)  # 30 s x 0.75
    assert "503" in (row.last_error or "")
    assert deliveries(runtime, rid) == [("sms", "failed", False, "503")]
    assert dispatcher.run_once(now=now + dt.timedelta(seconds=22)) == {}  # not before
    assert dispatcher.run_once(now=row.next_attempt_at) == {"retry": 1}
    assert reminder(runtime, rid).next_attempt_at == row.next_attempt_at + dt.timedelta(seconds=45)


def test_the_provider_retry_after_is_honoured(runtime, make_dispatcher, senders, now):
    rid = due(runtime, now)
    senders["sms"].script = fail(ErrorKind.TRANSIENT, "429", retry_after=600)
    dispatcher = make_dispatcher()
    assert dispatcher.run_once(now=now) == {"retry": 1}
    assert reminder(runtime, rid).next_attempt_at == now + dt.timedelta(seconds=600)


def test_a_reminder_fails_after_the_attempt_limit(runtime, make_dispatcher, senders, now):
    rid = due(runtime, now)
    senders["sms"].script = fail(ErrorKind.TRANSIENT, "500")
    dispatcher = make_dispatcher(max_attempts=3)
    outcomes = [dispatcher.run_once(now=now + dt.timedelta(hours=h)) for h in range(4)]
    assert outcomes == [{"retry": 1}, {"retry": 1}, {"failed": 1}, {}]
    row = reminder(runtime, rid)
    assert (row.status, row.reason, row.attempts) == ("failed", "max_attempts", 2)
    assert len(senders["sms"].attempts) == 3
    assert senders["email"].attempts == []  # a transient failure is not a reason to switch


def test_a_retry_that_would_land_after_the_send_window_waits_for_the_morning(
    runtime, make_dispatcher, senders, now
):
    evening = utc("2026-03-04T16:59:50")  # 19:59:50 in Istanbul
    rid = due(runtime, evening)
    senders["sms"].script = fail(ErrorKind.TRANSIENT, "503")
    assert make_dispatcher().run_once(now=evening) == {"retry": 1}
    assert reminder(runtime, rid).next_attempt_at == utc("2026-03-05T06:00")  # 09:00 local


def test_a_retry_that_would_land_after_expiry_expires_the_reminder(
    runtime, make_dispatcher, senders, now
):
    rid = due(runtime, now, expires=dt.timedelta(seconds=20))
    senders["sms"].script = fail(ErrorKind.TRANSIENT, "503")
    assert make_dispatcher(rng=FixedRandom(0.99)).run_once(now=now) == {"expired": 1}
    assert (reminder(runtime, rid).status, reminder(runtime, rid).reason) == (
        "expired",
        "retry_past_expiry",
    )


@pytest.mark.parametrize(
    ("attempt", "draw", "retry_after", "expected"),
    [
        (1, 0.0, None, 15.0),  # base 30 s, half of it at the lowest draw
        (1, 0.999999, None, 30.0),
        (3, 0.0, None, 60.0),  # 30 x 2^2 = 120, at least half
        (10, 0.0, None, 300.0),  # capped at max 600: at least 300
        (1, 0.0, 90.0, 90.0),  # never sooner than the provider asked
    ],
)
def test_the_retry_delay_doubles_with_jitter_up_to_a_cap(attempt, draw, retry_after, expected):
    policy = RetryPolicy(30, 600, 12, rng=FixedRandom(draw))
    assert policy.delay(attempt, retry_after) == pytest.approx(expected, abs=1e-3)


def test_jitter_spreads_retries_of_the_same_attempt() -> None:
    policy = RetryPolicy(30, 600, 12, rng=random.Random(4))
    delays = {policy.delay(2) for _ in range(20)}
    assert len(delays) > 10 and all(30 <= d <= 60 for d in delays)


# --- channels: fallback, opt-outs, pauses ----------------------------------------------------


def test_a_permanent_failure_falls_back_to_the_next_channel_at_once(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now)
    senders["sms"].script = fail(ErrorKind.PERMANENT, "21211")
    assert dispatcher.run_once(now=now) == {"sent": 1}
    assert deliveries(runtime, rid) == [
        ("sms", "failed", True, "21211"),
        ("email", "accepted", False, None),
    ]
    assert (reminder(runtime, rid).status, reminder(runtime, rid).channel) == ("sent", "email")


def test_a_reminder_fails_when_every_channel_failed_permanently(runtime, dispatcher, senders, now):
    rid = due(runtime, now)
    senders["sms"].script = fail(ErrorKind.PERMANENT, "21614")
    senders["email"].script = fail(ErrorKind.PERMANENT, "bounce")
    assert dispatcher.run_once(now=now) == {"failed": 1}
    row = reminder(runtime, rid)
    assert (row.status, row.reason) == ("failed", "all_channels_failed")
    assert [d[0] for d in deliveries(runtime, rid)] == ["sms", "email"]


def test_an_opt_out_reported_by_the_provider_is_recorded_and_falls_back(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now)
    senders["sms"].script = fail(ErrorKind.OPTED_OUT, "21610")
    assert dispatcher.run_once(now=now) == {"sent": 1}
    with runtime.sessions() as s:
        patient_id = s.get_one(Reminder, rid).patient_id
        sms = s.scalars(
            select(Consent).where(Consent.patient_id == patient_id, Consent.channel == "sms")
        ).one()
        assert (sms.opted_out_at, sms.opt_out_source) == (now, "provider")
        t = s.scalars(select(Treatment).where(Treatment.patient_id == patient_id)).one()
    with runtime.sessions() as s, s.begin():  # the patient's next reminder
        s.add(
            Reminder(
                treatment_id=t.id,
                patient_id=patient_id,
                protocol=t.protocol,
                step="last_call",
                due_at=now,
                expires_at=now + dt.timedelta(days=1),
                next_attempt_at=now,
            )
        )
    senders["sms"].attempts.clear()
    assert dispatcher.run_once(now=now) == {"sent": 1}
    assert senders["sms"].attempts == []  # straight to email


def test_a_misconfigured_channel_is_paused_and_the_next_channel_used(
    runtime, dispatcher, senders, now
):
    first = due(runtime, now)
    senders["sms"].script = fail(ErrorKind.MISCONFIGURED, "20003")
    assert dispatcher.run_once(now=now) == {"sent": 1}
    assert deliveries(runtime, first) == [
        ("sms", "failed", False, "20003"),
        ("email", "accepted", False, None),
    ]
    assert dispatcher.pauses.paused("sms")
    second = due(runtime, now)
    only_sms = due(runtime, now, channels="sms")
    assert dispatcher.run_once(now=now) == {"sent": 1, "waiting_for_channel": 1}
    assert len(senders["sms"].attempts) == 1  # no retry storm on the bad key
    assert [d[0] for d in deliveries(runtime, second)] == ["email"]
    row = reminder(runtime, only_sms)
    assert (row.status, row.next_attempt_at) == ("pending", now + dt.timedelta(minutes=15))


def test_an_opt_out_recorded_after_planning_cancels_the_reminder(runtime, dispatcher, senders, now):
    rid = due(runtime, now, channels="sms")
    with runtime.sessions() as s, s.begin():
        patient = s.get_one(factories.Patient, reminder(runtime, rid).patient_id)
        consents.opt_out(s, patient, "sms", source="sms_stop", now=now)
    assert dispatcher.run_once(now=now) == {"cancelled": 1}
    assert (reminder(runtime, rid).status, reminder(runtime, rid).reason) == (
        "cancelled",
        "no_channel",
    )
    assert senders["sms"].attempts == [] and deliveries(runtime, rid) == []


def test_a_patient_made_inactive_after_planning_hears_nothing(runtime, dispatcher, senders, now):
    rid = due(runtime, now)
    with runtime.sessions() as s, s.begin():
        s.get_one(factories.Patient, reminder(runtime, rid).patient_id).active = False
    assert dispatcher.run_once(now=now) == {"cancelled": 1}
    assert reminder(runtime, rid).reason == "inactive"
    assert senders["sms"].attempts == []


def test_a_reminder_of_a_superseded_treatment_is_cancelled_before_the_planner_runs(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now)
    with runtime.sessions() as s, s.begin():  # treated again; the planner has not run yet
        old = s.get_one(Reminder, rid)
        patient = s.get_one(factories.Patient, old.patient_id)
        factories.treatment(s, patient, now.date())
    assert dispatcher.run_once(now=now) == {"cancelled": 1}
    assert reminder(runtime, rid).reason == "superseded"
    assert senders["sms"].attempts == []


# --- expiry and the send window --------------------------------------------------------------


def test_a_reminder_whose_moment_has_passed_expires_instead_of_going_out_late(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now - dt.timedelta(days=2), expires=dt.timedelta(days=1))
    assert dispatcher.run_once(now=now) == {"expired": 1}
    row = reminder(runtime, rid)
    assert (row.status, row.reason) == ("expired", "stale")
    assert senders["sms"].attempts == [] and deliveries(runtime, rid) == []


def test_a_reminder_due_at_two_in_the_night_in_new_york_waits_for_nine(
    runtime, dispatcher, senders
):
    night = utc("2026-01-14T07:00")  # 02:00 EST
    rid = due(runtime, night, timezone="America/New_York")
    assert dispatcher.run_once(now=night) == {"waiting_for_send_window": 1}
    row = reminder(runtime, rid)
    assert (row.status, row.next_attempt_at, row.attempts) == (
        "pending",
        utc("2026-01-14T14:00"),  # 09:00 EST
        0,
    )
    assert senders["sms"].attempts == []
    assert dispatcher.run_once(now=utc("2026-01-14T13:59")) == {}
    assert dispatcher.run_once(now=utc("2026-01-14T14:00")) == {"sent": 1}


def test_a_reminder_that_would_expire_before_the_window_opens_expires(runtime, dispatcher, senders):
    night = utc("2026-01-14T07:00")  # 02:00 EST; it expires at 08:00 EST
    rid = due(runtime, night, timezone="America/New_York", expires=dt.timedelta(hours=6))
    assert dispatcher.run_once(now=night) == {"expired": 1}
    assert reminder(runtime, rid).reason == "send_window"


# --- templates -------------------------------------------------------------------------------


def staff_template(rt: Runtime, channel: str, text: str) -> None:
    with rt.sessions() as s, s.begin():
        s.add(
            Template(
                step="due", channel=channel, language="en", version=1, text=text, author="t@x.org"
            )
        )


def test_a_template_that_does_not_render_falls_back_to_the_next_channel(
    runtime, dispatcher, senders, now
):
    staff_template(runtime, "sms", "Hello {{ patient.nickname }}")
    rid = due(runtime, now)
    assert dispatcher.run_once(now=now) == {"sent": 1}
    assert deliveries(runtime, rid) == [
        ("sms", "failed", True, "template"),
        ("email", "accepted", False, None),
    ]
    assert senders["sms"].attempts == []
    with runtime.sessions() as s:
        message = s.scalars(select(Delivery.error_message)).first()
    assert message is not None and "nickname" in message


def test_a_template_failure_on_the_only_channel_fails_the_reminder(
    runtime, dispatcher, senders, now
):
    staff_template(runtime, "sms", "{% for x in %}")
    rid = due(runtime, now, channels="sms")
    assert dispatcher.run_once(now=now) == {"failed": 1}
    assert (reminder(runtime, rid).status, reminder(runtime, rid).reason) == (
        "failed",
        "all_channels_failed",
    )


def test_whatsapp_without_an_approved_content_sid_falls_back_and_never_sends_free_text(
    runtime, dispatcher, senders, now
):
    rid = due(runtime, now, channels="whatsapp|email", whatsapp="+905431970001")
    assert dispatcher.run_once(now=now) == {"sent": 1}
    assert senders["whatsapp"].attempts == []
    assert [d[:2] for d in deliveries(runtime, rid)] == [
        ("whatsapp", "failed"),
        ("email", "accepted"),
    ]


def test_the_message_is_rendered_in_the_patients_language_or_the_default(
    runtime, dispatcher, senders, now
):
    turkish = due(runtime, now, language="tr", given_name="Ayşe")
    german = due(runtime, now, language="de_AT", given_name="Hans")  # no German templates
    dispatcher.run_once(now=now)
    texts = {m.reminder_id: m.content.text for m in senders["sms"].sent}
    assert texts[turkish].startswith("Ayşe") and "Lütfen randevu alın" in texts[turkish]
    assert texts[german].startswith("Hans") and "Please book" in texts[german]


# --- the rate limit --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_the_rate_limiter_spaces_messages_and_honours_a_hold() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, clock=clock, sleep=clock.sleep)
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.5, 1.0]
    limiter.hold_until(110.0)
    assert limiter.acquire() == 10.0
    assert clock.slept == [0.5, 1.0, 10.0]


def test_a_rate_limit_wait_ends_when_the_dispatcher_stops() -> None:
    limiter = RateLimiter(0.01)  # one message per 100 s
    limiter.acquire()
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = dt.datetime.now(dt.UTC)
    assert limiter.acquire(stop) > 90
    assert dt.datetime.now(dt.UTC) - started < dt.timedelta(seconds=5)


def test_a_stopping_dispatcher_does_not_call_the_provider_after_a_rate_limit_wait(
    runtime, make_dispatcher, senders, now
):
    ids = [due(runtime, now) for _ in range(2)]
    dispatcher = make_dispatcher(tuned(runtime, sms_rate=0.01, dispatch_concurrency=1))
    worker = threading.Thread(target=dispatcher.run_once, kwargs={"now": now})
    worker.start()
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    while sum(len(deliveries(runtime, i)) for i in ids) < 2:  # the second waits for its slot
        assert dt.datetime.now(dt.UTC) < deadline
    dispatcher.close(timeout=2)
    worker.join(5)
    assert len(senders["sms"].attempts) == 1
    statuses = sorted(reminder(runtime, i).status for i in ids)
    assert statuses == ["pending", "sent"]
    with runtime.sessions() as s:
        codes = s.scalars(select(Delivery.error_code).order_by(Delivery.id)).all()
    assert codes == [None, "shutdown"]


def test_the_release_after_close_does_not_touch_other_owners(runtime, dispatcher, now):
    rid = due(runtime, now)
    with runtime.sessions() as s, s.begin():
        queries.claim_due(s, "someone-else", now=now, limit=1, lease=LEASE)
    dispatcher.close(timeout=1)
    assert reminder(runtime, rid).claimed_by == "someone-else"
    with runtime.sessions() as s, s.begin():
        s.execute(update(Reminder).values(status="cancelled", claimed_by=None))
