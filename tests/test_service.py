"""The service as ops run it: ``reminders run`` in its own process (sends, answers /healthz,
stops on SIGTERM within 10 s leaving nothing claimed), the one-shot commands, and
:meth:`Service.stop` with a provider call that hangs."""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select

from reminders import migrate
from reminders.channels import OutboundMessage
from reminders.cli import main
from reminders.db import make_engine, make_sessionmaker
from reminders.models import Delivery, Reminder
from reminders.runtime import Runtime
from reminders.service import Service
from tests import factories
from tests.conftest import CONFIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def midday_zone(now: dt.datetime) -> str:
    """A fixed-offset zone where it is about noon at ``now`` (inside any send window)."""
    offset = (12 - now.hour + 12) % 24 - 12
    return f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-3 is UTC+3


class Process:
    """A ``reminders`` command in its own process, its output read line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reminders", *args],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.output.append(line)
            if line.startswith(prefix):
                return line
        self.stop()
        raise AssertionError(f"no line starting {prefix!r}; output:\n" + "\n".join(self.output))

    def drain(self) -> list[str]:
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return self.output

    def signal(self, signum: int) -> tuple[int, float]:
        """Send ``signum``; returns (exit code, seconds it took to exit)."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=30)
        return code, time.monotonic() - started

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    """A migrated SQLite file of its own (the process under test opens it too)."""
    url = f"sqlite:///{tmp_path / 'service.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    yield url, engine
    engine.dispose()


def seed_due(engine: Engine, count: int, now: dt.datetime) -> list[int]:
    """``count`` SMS reminders due a minute ago, for patients where it is midday."""
    with make_sessionmaker(engine)() as s, s.begin():
        ids = []
        for _ in range(count):
            p = factories.patient(s, channels="sms", timezone=midday_zone(now))
            t = factories.treatment(s, p, dt.date(2025, 1, 1), needs_plan=False)
            moment = now - dt.timedelta(minutes=1)
            r = Reminder(
                treatment_id=t.id,
                patient_id=p.id,
                protocol=t.protocol,
                step="due",
                due_at=moment,
                expires_at=now + dt.timedelta(days=1),
                next_attempt_at=moment,
            )
            s.add(r)
            s.flush()
            ids.append(r.id)
        return ids


def statuses(engine: Engine) -> Counter[str]:
    with make_sessionmaker(engine)() as s:
        return Counter(s.scalars(select(Reminder.status)))


def service_env(url: str, port: int, **more: str) -> dict[str, str]:
    return {
        "REMINDERS_DATABASE_URL": url,
        "REMINDERS_CONFIG_DIR": str(CONFIG),
        "REMINDERS_DELIVERY_MODE": "console",
        "REMINDERS_HTTP_PORT": str(port),
        "REMINDERS_DISPATCH_INTERVAL": "0.5",
        "REMINDERS_LOG_FORMAT": "json",
        **more,
    }


def get(url: str, seconds: float = 10) -> str:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_service_sends_what_is_due_answers_health_and_stops_cleanly_on_sigterm(
    fresh, tmp_path
) -> None:
    url, engine = fresh
    # One SMS per 4 s: the first goes out at once, the rest are claimed and waiting at SIGTERM.
    seed_due(engine, 5, dt.datetime.now(dt.UTC))
    port = free_port()
    env = service_env(url, port, REMINDERS_SMS_RATE="0.25")
    service = Process(["run"], env, tmp_path)
    try:
        service.wait_for("--- sms to", 30)
        assert get(f"http://127.0.0.1:{port}/healthz") == "ok"
        assert get(f"http://127.0.0.1:{port}/readyz") == "ready"
        code, seconds = service.signal(signal.SIGTERM)
    finally:
        service.stop()
    printed = sum(line.startswith("--- sms to") for line in service.drain())
    assert code == 0, service.output
    assert seconds < 10
    found = statuses(engine)
    assert found["claimed"] == 0
    assert found["sent"] == printed >= 1
    assert found["pending"] == 5 - printed  # given back, to go out on the next start
    assert any('"service_stopped"' in line for line in service.output)


def test_the_service_stops_on_sigint_too(fresh, tmp_path) -> None:
    url, _ = fresh
    port = free_port()
    service = Process(["run"], service_env(url, port), tmp_path)
    try:
        assert get(f"http://127.0.0.1:{port}/healthz", seconds=30) == "ok"
        code, seconds = service.signal(signal.SIGINT)
    finally:
        service.stop()
    assert (code, seconds < 10) == (0, True)


def test_stop_finishes_within_ten_seconds_while_a_provider_call_hangs(runtime, senders) -> None:
    now = dt.datetime.now(dt.UTC)
    (rid,) = seed_due(runtime.engine, 1, now)
    entered, release = threading.Event(), threading.Event()

    def hangs(_message: OutboundMessage) -> None:
        entered.set()
        release.wait(30)

    senders["sms"].script = hangs
    service = Service(runtime, owner="stuck")
    try:
        service.start()
        assert entered.wait(15)
        started = time.monotonic()
        service.stop()
        assert time.monotonic() - started < 10
        with runtime.sessions() as s:
            row = s.get_one(Reminder, rid)
            assert (row.status, row.claimed_by) == ("in_doubt", None)
            assert s.scalars(select(Delivery.status)).all() == ["in_doubt"]
    finally:
        service.stop()
        release.set()
    eventually(lambda: status_of(runtime, rid) == "sent")  # the late answer settles it


def test_the_signal_stops_dispatch_at_once_before_the_http_server_has_drained(runtime) -> None:
    """uvicorn waits up to 3 s for open connections after SIGTERM before ``run`` returns; the
    server's signal handler stops the dispatcher first, so nothing due is claimed meanwhile."""
    import uvicorn

    from reminders.web.server import Server

    now = dt.datetime.now(dt.UTC)
    (rid,) = seed_due(runtime.engine, 1, now)
    service = Service(runtime, owner="signalled")
    server = Server(uvicorn.Config(lambda *_: None), on_exit=service.request_stop)
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit
    assert service.dispatcher.run_once(now=now) == Counter()
    assert status_of(runtime, rid) == "pending"
    service.stop()  # what `reminders run` does once uvicorn returns: still a clean stop
    assert status_of(runtime, rid) == "pending"


def test_the_scheduler_runs_three_coalesced_single_instance_jobs_in_memory(runtime) -> None:
    service = Service(runtime, owner="jobs")
    service.start()
    try:
        jobs = {job.id: job for job in service.scheduler.get_jobs()}
        assert set(jobs) == {"planning", "dispatch", "housekeeping"}
        assert all(j.coalesce and j.max_instances == 1 for j in jobs.values())
        assert jobs["dispatch"].trigger.interval.total_seconds() == 10  # the default
        assert type(service.scheduler._jobstores["default"]).__name__ == "MemoryJobStore"
    finally:
        service.stop()
    assert not service.scheduler.running


def status_of(runtime: Runtime, rid: int) -> str:
    with runtime.sessions() as s:
        return s.get_one(Reminder, rid).status


def eventually(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def cli() -> Iterator[Callable[..., Result]]:
    """Runs a command in this process; puts back the logging setup that commands replace."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, structlog.get_config())
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str]) -> Result:
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    yield invoke
    root.handlers[:], level, config = saved
    root.setLevel(level)
    structlog.configure(**config)


def test_migrate_brings_an_empty_database_to_head(cli, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    done = cli("migrate", env={"REMINDERS_DATABASE_URL": url, "REMINDERS_CONFIG_DIR": str(CONFIG)})
    assert done.exit_code == 0, done.output
    engine = make_engine(url)
    try:
        assert migrate.at_head(engine)
    finally:
        engine.dispose()


def test_tick_plans_and_sends_once_at_the_given_moment(cli, fresh) -> None:
    url, engine = fresh
    with make_sessionmaker(engine)() as s, s.begin():  # due step on 2026-03-04, 10:00 Istanbul
        factories.treatment(s, factories.patient(s), dt.date(2026, 3, 4) - dt.timedelta(days=84))
    env = service_env(url, free_port())
    first = cli("tick", "--now", "2026-03-04T11:30:00+03:00", env=env)
    assert first.exit_code == 0, first.output
    assert first.stdout.count("--- sms to") == 1
    assert "planned_groups=1" in first.stdout and "sent=1" in first.stdout
    again = cli("tick", "--now", "2026-03-04T08:40:00", env=env)  # no offset: UTC
    assert again.exit_code == 0, again.output
    assert "--- sms" not in again.stdout and "sent=" not in again.stdout
    assert statuses(engine) == {"sent": 1, "pending": 1}  # due sent, last_call ahead


def test_tick_refuses_a_moment_that_is_not_iso_8601(cli, fresh) -> None:
    url, _ = fresh
    done = cli("tick", "--now", "next tuesday", env=service_env(url, 1))
    assert done.exit_code == 2
    assert "is not ISO-8601" in done.stderr


def test_tick_on_a_database_without_the_schema_says_to_migrate(cli, tmp_path) -> None:
    done = cli("tick", env=service_env(f"sqlite:///{tmp_path / 'empty.db'}", 1))
    assert done.exit_code == 1
    assert "run `reminders migrate`" in done.stderr


def test_check_config_says_which_channels_are_on_and_why_not(cli, fresh) -> None:
    url, _ = fresh
    env = {"REMINDERS_DATABASE_URL": url, "REMINDERS_CONFIG_DIR": str(CONFIG)}
    live = cli("check-config", env={**env, "REMINDERS_DELIVERY_MODE": "live"})
    assert live.exit_code == 0, live.output
    assert "channel sms: off (TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are not set)" in live.stdout
    assert "channel email: off (SENDGRID_API_KEY is not set)" in live.stdout
    assert "database: at head" in live.stdout
    assert "chronic_migraine" in live.stdout
    console = cli("check-config", env={**env, "REMINDERS_DELIVERY_MODE": "console"})
    assert "channel sms: on" in console.stdout


def test_a_bad_setting_stops_a_command_with_one_line_naming_it(cli) -> None:
    env = {"REMINDERS_CONFIG_DIR": str(CONFIG), "REMINDERS_SEND_WINDOW_START": "9 o'clock"}
    for command in ("check-config", "run", "tick"):
        done = cli(command, env=env)
        assert done.exit_code == 1
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "REMINDERS_SEND_WINDOW_START" in lines[0], done.stderr
