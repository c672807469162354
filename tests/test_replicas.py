"""Several replicas on one PostgreSQL database: they share the work, and nothing is sent twice
or lost. Each replica is a real ``reminders run`` process with its own connections; the
console channel prints every message it sends to that process's stdout, so the count comes from
what went out, not only from what the database says."""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session

from reminders import migrate
from reminders.db import make_engine
from reminders.models import Delivery, Reminder
from tests.conftest import POSTGRES_URL, create_postgres_database, drop_postgres_database
from tests.support.service import (
    BIN,
    ServiceProcess,
    due_reminder_ids,
    seed_due,
    service_env,
    statuses,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="needs PostgreSQL (REMINDERS_TEST_POSTGRES_URL)"),
]
PLANNED_BY_THE_SERVICE = 1700
LEFT_BY_A_DEAD_REPLICA = 300  # 2,000 due in all


@pytest.fixture
def empty_database() -> Iterator[str]:
    url = create_postgres_database(POSTGRES_URL, prefix="reminders_replicas")
    yield url
    drop_postgres_database(url)


@pytest.fixture
def database(empty_database: str) -> Iterator[Engine]:
    engine = make_engine(empty_database)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def test_replicas_that_start_at_once_upgrade_the_schema_once(empty_database) -> None:
    engines = [make_engine(empty_database) for _ in range(4)]
    errors: list[BaseException] = []

    def upgrade(engine: Engine) -> None:
        try:
            migrate.upgrade(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert all(migrate.at_head(e) for e in engines)
    for engine in engines:
        engine.dispose()


def test_only_one_replica_at_a_time_holds_a_job_lock(database) -> None:
    other = make_engine(database.url.render_as_string(hide_password=False))
    with migrate.exclusive(database, "planning") as first:
        with migrate.exclusive(other, "planning") as second:
            assert (first, second) == (True, False)
        with migrate.exclusive(other, "housekeeping") as unrelated:
            assert unrelated
    with migrate.exclusive(other, "planning") as after:
        assert after
    other.dispose()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_replicas_drain_a_backlog_with_no_duplicate_and_none_lost(database, tmp_path) -> None:
    planned = seed_due(database, PLANNED_BY_THE_SERVICE, prefix="plan")
    orphaned = _left_claimed_by_a_dead_replica(database)
    replicas = [_replica(database, tmp_path, f"replica{i}") for i in (1, 2)]
    try:
        for replica in replicas:
            replica.wait_ready()
        replicas[0].wait_for("the whole backlog sent", lambda: _all_sent(database), 180)
        exits = [replica.terminate() for replica in replicas]
    finally:
        for replica in replicas:
            replica.kill()
    expected = due_reminder_ids(database, planned) | orphaned
    assert len(expected) == PLANNED_BY_THE_SERVICE + LEFT_BY_A_DEAD_REPLICA

    printed = [replica.printed() for replica in replicas]
    total = sum(printed, Counter())
    assert [i for i, n in total.items() if n > 1] == []  # no duplicate
    assert set(total) == expected  # none lost
    assert all(len(p) > 0 for p in printed), "both replicas took a share of the work"
    assert _deliveries_per_reminder(database) == {1: len(expected)}
    assert statuses(database, expected) == {"sent": len(expected)}
    assert _last_calls_planned(database) == PLANNED_BY_THE_SERVICE  # one cycle each, once
    assert [(e.code, e.seconds < 10) for e in exits] == [(0, True), (0, True)]
    for replica in replicas:
        assert [line for line in replica.logs() if line["level"] in ("error", "critical")] == []


def _replica(engine: Engine, workdir: Path, name: str) -> ServiceProcess:
    url = engine.url.render_as_string(hide_password=False)
    env = service_env(url, REMINDERS_LEASE_SECONDS="60", REMINDERS_LOG_LEVEL="INFO")
    return ServiceProcess([str(BIN / "reminders"), "run"], env, workdir, name).start()


def _left_claimed_by_a_dead_replica(engine: Engine) -> set[int]:
    """Due reminders claimed by a replica that died: its lease ran out a minute ago."""
    treatments = seed_due(engine, LEFT_BY_A_DEAD_REPLICA, prefix="dead", planned=True)
    ids = due_reminder_ids(engine, treatments)
    expired = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    with Session(engine) as session, session.begin():
        session.execute(
            update(Reminder)
            .where(Reminder.id.in_(ids))
            .values(status="claimed", claimed_by="gone:1:dead", lease_until=expired)
        )
    return ids


def _all_sent(engine: Engine) -> bool:
    with Session(engine) as session:
        waiting = session.scalar(
            select(func.count())
            .select_from(Reminder)
            .where(Reminder.step == "due", Reminder.status != "sent")
        )
        planned = session.scalar(select(func.count()).where(Reminder.step == "due"))
    return waiting == 0 and planned == PLANNED_BY_THE_SERVICE + LEFT_BY_A_DEAD_REPLICA


def _deliveries_per_reminder(engine: Engine) -> dict[int, int]:
    """{number of deliveries: how many reminders have that many}, over sent deliveries."""
    with Session(engine) as session:
        per_reminder = session.execute(
            select(Delivery.reminder_id, func.count())
            .where(Delivery.status == "sent")
            .group_by(Delivery.reminder_id)
        ).all()
    return dict(Counter(n for _, n in per_reminder))


def _last_calls_planned(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).where(Reminder.step == "last_call")) or 0)
