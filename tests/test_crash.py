"""``kill -9`` of ``reminders run`` at random moments while it drains 5,000 due SMS reminders
through the fake Twilio on PostgreSQL, restarted after each kill, then left to finish.

A moment is a random number of messages the fake accepts from that process (not a random
number of seconds), so every kill lands in the middle of a drain however fast the machine is:
timed kills let a fast machine drain the whole backlog before the last ones.

What the database and the fake provider say afterwards: every reminder went out (none lost);
a message went out twice only for a delivery that was in flight (``sending``) at a kill, never
more such duplicates per kill than the dispatch concurrency, and each of those deliveries was
settled by the in-doubt rule: by the provider's late status callback (posted after every other
restart, as a provider that accepted the message would) or, with no word within the grace
period, ``abandoned`` and sent again. Counts are printed and kept in
``tests/artifacts/crash_counts.json``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from reminders import migrate
from reminders.db import make_engine
from reminders.models import Delivery, Patient, Reminder
from tests.conftest import POSTGRES_URL, create_postgres_database, drop_postgres_database
from tests.fakes import FakeTwilio
from tests.fault_support import Counts, report, wait_until
from tests.provider_setup import SMS_FROM
from tests.support.service import BIN, ServiceProcess, due_reminder_ids, seed_due, service_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="needs PostgreSQL (REMINDERS_TEST_POSTGRES_URL)"),
]
BACKLOG = 5000
KILLS = 10
SEED = 20260304  # the kill moments; printed with the counts
MOST_PER_RUN = 300  # a kill comes after 1 to this many messages from that process
CONCURRENCY = 8
LEASE, GRACE = 5, 5  # seconds: REMINDERS_LEASE_SECONDS, REMINDERS_IN_DOUBT_GRACE_SECONDS


@pytest.fixture
def database() -> Iterator[Engine]:
    url = create_postgres_database(POSTGRES_URL, prefix="reminders_crash")
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()
    drop_postgres_database(url)


@dataclass
class Kill:
    """What one ``kill -9`` cut off: the deliveries that were ``sending`` at that moment."""

    after_messages: int  # the fake accepted this many from the killed process, then the kill
    after_seconds: float  # from its first message
    in_doubt: dict[int, str] = field(default_factory=dict)  # delivery id -> its public id
    reminders: set[int] = field(default_factory=set)
    callbacks: int = 0  # late status callbacks posted for the ones the provider had


def _service(engine: Engine, twilio: FakeTwilio, workdir: Path) -> dict[str, str]:
    env = service_env(engine.url.render_as_string(hide_password=False))
    public = f"http://127.0.0.1:{env['REMINDERS_HTTP_PORT']}"
    return {
        **env,
        "REMINDERS_DELIVERY_MODE": "live",
        "REMINDERS_PUBLIC_URL": public,
        "REMINDERS_LOG_LEVEL": "WARNING",
        "REMINDERS_DISPATCH_CONCURRENCY": str(CONCURRENCY),
        "REMINDERS_DISPATCH_BATCH_SIZE": "100",
        "REMINDERS_LEASE_SECONDS": str(LEASE),
        "REMINDERS_IN_DOUBT_GRACE_SECONDS": str(GRACE),
        "REMINDERS_PROVIDER_TIMEOUT": "5",
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_SMS_FROM": SMS_FROM,
        "TWILIO_API_BASE_URL": twilio.base_url,
    }


def _sending(engine: Engine, seen: set[int]) -> dict[int, tuple[int, str]]:
    """Deliveries left ``sending`` (not already counted at an earlier kill)."""
    with Session(engine) as s:
        rows = s.execute(
            select(Delivery.id, Delivery.reminder_id, Delivery.public_id).where(
                Delivery.status == "sending"
            )
        ).all()
    return {d: (r, p) for d, r, p in rows if d not in seen}


def _post_late_callbacks(twilio: FakeTwilio, kill: Kill) -> None:
    """The provider's word for the cut-off deliveries it had accepted: ``delivered``."""
    by_delivery = {m.status_callback: m for m in twilio.messages if m.status_callback}
    for public_id in kill.in_doubt.values():
        message = next(
            (m for url, m in by_delivery.items() if url.endswith(f"?d={public_id}")), None
        )
        if message is not None:
            assert twilio.post_status(message.sid, "delivered").status == 200
            kill.callbacks += 1


def _unsent(engine: Engine, ids: set[int]) -> int:
    with Session(engine) as s:
        query = select(func.count()).where(Reminder.id.in_(ids), Reminder.status != "sent")
        return int(s.scalar(query) or 0)


def _final_statuses(engine: Engine, delivery_ids: set[int]) -> dict[int, str]:
    with Session(engine) as s:
        rows = s.execute(select(Delivery.id, Delivery.status).where(Delivery.id.in_(delivery_ids)))
        return {i: st for i, st in rows}


def _attempts(engine: Engine, reminder_ids: set[int]) -> dict[int, list[str]]:
    """Each reminder's delivery statuses, oldest first."""
    with Session(engine) as s:
        rows = s.execute(
            select(Delivery.reminder_id, Delivery.status)
            .where(Delivery.reminder_id.in_(reminder_ids))
            .order_by(Delivery.id)
        )
        found: dict[int, list[str]] = {}
        for rid, st in rows:
            found.setdefault(rid, []).append(st)
        return found


def _run_and_kill(
    engine: Engine, twilio: FakeTwilio, env: dict[str, str], workdir: Path
) -> list[Kill]:
    rng, kills, seen = random.Random(SEED), [], set()
    for i in range(KILLS):
        process = ServiceProcess([str(BIN / "reminders"), "run"], env, workdir, f"run{i}").start()
        if kills and len(kills) % 2 == 0:  # every other restart, the provider's late word
            process.wait_ready()
            _post_late_callbacks(twilio, kills[-1])
        before = twilio.received
        _wait_until_sending(process, twilio, before)
        started, moment = time.monotonic(), rng.randint(1, MOST_PER_RUN)
        _wait_until_received(process, twilio, before + moment)
        process.kill()
        seconds = time.monotonic() - started
        _wait_for_its_connections_to_end(engine)
        cut = _sending(engine, seen)
        seen.update(cut)
        kill = Kill(moment, round(seconds, 2), {d: p for d, (_, p) in cut.items()})
        kill.reminders = {r for r, _ in cut.values()}
        kills.append(kill)
    return kills


def _wait_for_its_connections_to_end(engine: Engine) -> None:
    """Until PostgreSQL has ended the dead process's sessions: a COMMIT it sent just before the
    kill still lands, so what was in doubt is only known once they are gone."""
    engine.dispose()  # the test's own pooled connections: only the dead process's are left
    others = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )

    def gone() -> bool:
        with engine.connect() as conn:
            return conn.scalar(others) == 0

    wait_until(gone, 30, "the killed process's database sessions to end", 0.05)


def _wait_until_sending(process: ServiceProcess, twilio: FakeTwilio, before: int) -> None:
    """Until this process has sent its first message (it starts up in a few seconds)."""
    process.wait_for("a send", lambda: twilio.received > before, 60)


def _wait_until_received(process: ServiceProcess, twilio: FakeTwilio, count: int) -> None:
    """Until the fake has ``count`` messages in all, looking every 2 ms."""
    process.wait_for(f"message {count}", lambda: twilio.received >= count, 60, poll=0.002)


@pytest.mark.timeout(420)
def test_kill_9_at_random_moments_loses_nothing_and_duplicates_only_what_was_in_doubt(
    database, tmp_path
) -> None:
    ids = due_reminder_ids(database, seed_due(database, BACKLOG, prefix="crash", planned=True))
    with FakeTwilio() as twilio:
        env = _service(database, twilio, tmp_path)
        kills = _run_and_kill(database, twilio, env, tmp_path)
        last = ServiceProcess([str(BIN / "reminders"), "run"], env, tmp_path, "final").start()
        try:
            last.wait_ready()
            if len(kills) % 2 == 0:
                _post_late_callbacks(twilio, kills[-1])
            wait_until(lambda: _unsent(database, ids) == 0, 300, "the backlog drained", 1.0)
            exit_ = last.terminate()
        finally:
            last.kill()
        got = Counter(m.to for m in twilio.messages)

    tally = _tally(database, ids, kills, got)
    report(
        "crash_counts",
        "crash",
        tally.counts,
        seed=SEED,
        kills=[
            {"after": k.after_messages, "after_s": k.after_seconds, "in_doubt": len(k.in_doubt)}
            for k in kills
        ],
        settled_by_callback=sum(k.callbacks for k in kills),
        abandoned_and_resent=list(tally.settled.values()).count("abandoned"),
    )

    assert (tally.counts.sent, tally.counts.lost) == (BACKLOG, 0)
    assert tally.twice <= tally.doubted  # a duplicate only where a send was in flight at a kill
    for kill in kills:
        assert len(kill.in_doubt) <= CONCURRENCY
        assert len(tally.twice & kill.reminders) <= CONCURRENCY
    assert set(tally.settled.values()) <= {"delivered", "abandoned"}, tally.settled
    for rid, attempts in tally.history.items():  # each settled: a callback, or a later send
        extra = tally.got[tally.phones[rid]] - 1
        assert attempts[-1] in ("delivered", "queued"), attempts
        assert extra <= attempts.count("abandoned"), attempts  # only a resent one went twice
        assert extra <= sum(rid in k.reminders for k in kills)
    assert exit_.code == 0
    assert tally.counts.in_doubt > 0, "no kill landed on a send in flight"


@dataclass
class Tally:
    counts: Counts
    got: Counter[str]  # messages the fake accepted, per phone
    phones: dict[int, str]  # reminder id -> phone
    twice: set[int]  # reminders that reached the phone more than once
    doubted: set[int]  # reminders with a delivery in flight at some kill
    settled: dict[int, str]  # each of those deliveries' final status
    history: dict[int, list[str]]  # each of those reminders' delivery statuses


def _tally(engine: Engine, ids: set[int], kills: list[Kill], got: Counter[str]) -> Tally:
    phones, unsent = _phones(engine, ids), _unsent(engine, ids)
    doubted = {r for k in kills for r in k.reminders}
    twice = {rid for rid, phone in phones.items() if got[phone] > 1}
    counts = Counts(
        reminders=len(ids),
        sent=sum(1 for rid in ids if got[phones[rid]] >= 1) - unsent,
        duplicated=sum(got[phones[rid]] - 1 for rid in twice),
        lost=sum(1 for rid in ids if got[phones[rid]] == 0) + unsent,
        in_doubt=sum(len(k.in_doubt) for k in kills),
    )
    settled = _final_statuses(engine, {d for k in kills for d in k.in_doubt})
    return Tally(counts, got, phones, twice, doubted, settled, _attempts(engine, doubted))


def _phones(engine: Engine, ids: set[int]) -> dict[int, str]:
    with Session(engine) as s:
        rows = s.execute(
            select(Reminder.id, Patient.phone)
            .join(Patient, Patient.id == Reminder.patient_id)
            .where(Reminder.id.in_(ids))
        )
        return {rid: phone or "" for rid, phone in rows}
