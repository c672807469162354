"""The database goes away and comes back: the service waits, says so on ``/readyz``, and picks up
where it left off by itself. A TCP proxy that the test controls stands between the service and
PostgreSQL; cutting it resets every connection and refuses new ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from reminders import migrate
from reminders.db import make_engine
from reminders.models import Reminder
from reminders.service import _guarded
from tests.conftest import POSTGRES_URL, create_postgres_database, drop_postgres_database
from tests.support.service import (
    BIN,
    ROOT,
    ServiceProcess,
    due_reminder_ids,
    free_port,
    seed_due,
    service_env,
    statuses,
)
from tests.support.tcp_proxy import TcpProxy

postgres_only = pytest.mark.skipif(
    not POSTGRES_URL, reason="needs PostgreSQL (REMINDERS_TEST_POSTGRES_URL)"
)
CONCURRENCY = 4
PASSWORD = "pw-never-in-a-log-7Qx"  # trust auth ignores it; the logs must not show it


@pytest.fixture
def database() -> Iterator[Engine]:
    if not POSTGRES_URL:
        pytest.skip("needs PostgreSQL")
    url = create_postgres_database(POSTGRES_URL, prefix="reminders_outage")
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield engine
    engine.dispose()
    drop_postgres_database(url)


def _through(proxy: TcpProxy, engine: Engine) -> str:
    """The database's URL, by way of the proxy, with a password in it."""
    url = engine.url.set(host="127.0.0.1", port=proxy.port, password=PASSWORD)
    return url.render_as_string(hide_password=False)


def _upstream(engine: Engine) -> tuple[str, int]:
    url = make_url(engine.url)
    return (url.host or "127.0.0.1", url.port or 5432)


def test_an_unreachable_database_is_tried_again_after_growing_pauses() -> None:
    engine = make_engine(f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{free_port()}/x")
    tries: list[int] = []

    def connect() -> str:
        tries.append(1)
        if len(tries) <= 6:
            engine.connect().close()  # refused: nothing listens there
        return "up"

    pauses: list[float] = []
    assert migrate.when_available(engine, connect, sleep=pauses.append) == "up"
    assert len(pauses) == 6
    ceilings = [1, 2, 4, 8, 16, 30]  # doubling, then capped
    assert all(c / 2 <= p <= c for p, c in zip(pauses, ceilings, strict=True))
    engine.dispose()


def test_errors_that_waiting_cannot_fix_are_raised_at_once(tmp_path: Path) -> None:
    missing = make_engine(f"sqlite:///{tmp_path}/no/such/folder/reminders.db")
    pauses: list[float] = []
    with pytest.raises(OperationalError):
        migrate.when_available(missing, lambda: missing.connect().close(), sleep=pauses.append)
    with pytest.raises(ZeroDivisionError):
        migrate.when_available(missing, lambda: 1 // 0, sleep=pauses.append)
    assert pauses == []


def test_a_job_that_keeps_failing_runs_less_and_less_often() -> None:
    runs: list[int] = []

    def broken() -> None:
        runs.append(1)
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))

    job = _guarded(broken, "dispatch")
    for _ in range(5):
        job()
    assert len(runs) == 2  # the next tick once, then a pause of 2 s, 4 s ... up to a minute


def test_a_job_that_works_again_is_back_on_every_tick() -> None:
    outcomes = [RuntimeError("once"), None, None]
    runs: list[int] = []

    def flaky() -> None:
        runs.append(1)
        error = outcomes.pop(0)
        if error:
            raise error

    job = _guarded(flaky, "planning")
    for _ in range(3):
        job()
    assert len(runs) == 3


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(300)
@postgres_only
def test_a_database_cut_mid_dispatch_pauses_the_work_and_the_service_recovers_by_itself(
    database, tmp_path: Path
) -> None:
    treatments = seed_due(database, 800, prefix="cut", planned=True)
    due = due_reminder_ids(database, treatments)
    with TcpProxy(_upstream(database)) as proxy:
        service = _start(["reminders", "run"], _through(proxy, database), tmp_path)
        try:
            service.wait_ready()
            service.wait_for("a few sends", lambda: len(service.printed()) >= 150, 60)
            proxy.cut()
            service.wait_for("/readyz 503", lambda: service.get("/readyz") == 503, 15)
            sent_at_cut = len(service.printed())
            service.wait_for("three failed ticks", lambda: len(_failures(service)) >= 3, 30)
            assert service.get("/healthz") == 200  # alive, only not ready
            assert service.get("/readyz") == 503
            assert len(service.printed()) - sent_at_cut <= CONCURRENCY  # nothing sent blind

            proxy.restore()
            service.wait_ready(timeout=60)
            service.wait_for("the backlog", lambda: _settled(database, due), 120)
            exit_ = service.terminate()
        finally:
            service.kill()

    printed = service.printed()
    in_doubt = _in_doubt(database, due)
    assert [i for i, n in printed.items() if n > 1] == []  # no duplicate
    assert due - set(printed) <= in_doubt  # none lost: unsent ones wait for the in-doubt rule
    assert len(in_doubt) <= CONCURRENCY
    assert statuses(database, due - in_doubt) == {"sent": len(due - in_doubt)}
    assert service.events("job_recovered")
    pauses = [f["retry_in"] for f in _failures(service)][:3]
    assert pauses == sorted(pauses) and pauses[2] > pauses[0]  # backing off, not hammering
    assert (exit_.code, exit_.seconds < 10) == (0, True)
    assert PASSWORD not in service.stderr() + service.stdout()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(300)
@postgres_only
def test_a_database_that_is_down_at_startup_is_waited_for_then_the_service_starts(
    database, tmp_path: Path
) -> None:
    treatments = seed_due(database, 20, prefix="late", planned=True)
    due = due_reminder_ids(database, treatments)
    with TcpProxy(_upstream(database), start_cut=True) as proxy:
        entrypoint = str(ROOT / "docker" / "entrypoint.sh")
        service = _start([entrypoint], _through(proxy, database), tmp_path)
        try:
            waits = lambda: service.events("database_unavailable")  # noqa: E731
            service.wait_for("three tries", lambda: len(waits()) >= 3, 30)
            proxy.restore()
            service.wait_ready(timeout=60)
            service.wait_for("the reminders", lambda: _settled(database, due), 60)
            exit_ = service.terminate()
        finally:
            service.kill()

    tries = waits()
    assert [t["attempt"] for t in tries] == list(range(1, len(tries) + 1))
    assert tries[2]["retry_in"] > tries[0]["retry_in"]  # backing off
    assert all("***" in t["database"] and t["logger"] == "reminders.migrate" for t in tries)
    assert PASSWORD not in service.stderr() + service.stdout()
    assert sorted(service.printed().elements()) == sorted(due)
    assert exit_.code == 0


def _start(argv: list[str], url: str, workdir: Path) -> ServiceProcess:
    env = service_env(
        url,
        REMINDERS_LEASE_SECONDS="5",  # claims stranded by the cut come back soon
        REMINDERS_IN_DOUBT_GRACE_SECONDS="3600",  # ... and in-doubt ones stay in doubt
        REMINDERS_DISPATCH_CONCURRENCY=str(CONCURRENCY),
        REMINDERS_SMS_RATE="100",  # slow enough to cut it mid-way
    )
    argv = [str(BIN / argv[0]) if argv[0] == "reminders" else argv[0], *argv[1:]]
    return ServiceProcess(argv, env, workdir, "service").start()


def _failures(service: ServiceProcess) -> list[dict[str, Any]]:
    return [e for e in service.events("job_failed") if e["job"] == "dispatch"]


def _settled(engine: Engine, due: set[int]) -> bool:
    """Every due reminder sent, or in doubt (its send may have reached the provider)."""
    with Session(engine) as session:
        open_ = session.scalar(
            select(func.count()).where(
                Reminder.id.in_(due), Reminder.status.not_in(("sent", "in_doubt"))
            )
        )
    return open_ == 0


def _in_doubt(engine: Engine, due: set[int]) -> set[int]:
    with Session(engine) as session:
        rows = session.scalars(
            select(Reminder.id).where(Reminder.id.in_(due), Reminder.status == "in_doubt")
        )
        return set(rows)
