"""Running ``reminders`` as its own process, the way ops do, and reading what it did.

:class:`ServiceProcess` starts a command with only the environment it is given, writes its
stdout and stderr to files, and answers the questions the tests ask: is it ready, what did it
log (JSON lines), which reminders did the console channel print, how did it exit.
:func:`seed_due` writes patients whose ``due`` reminder is due right now, wherever the test
runs on the clock (see :func:`midday_zone`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from reminders.models import Consent, Patient, Reminder, Treatment

BIN = Path(sys.executable).parent  # the test venv's scripts: `reminders`
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
_PRINTED = re.compile(r"^--- \w+ to .* \(reminder (\d+)\)$", re.MULTILINE)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_STARTED: list[ServiceProcess] = []  # every process started in the current test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(**values: str) -> dict[str, str]:
    """A bare environment (no inherited variables) plus ``values``."""
    env = {"PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "NO_PROXY": "*"}
    return {**env, **values}


def service_env(database_url: str, **values: str) -> dict[str, str]:
    """What a replica in a test gets: console channel, fast ticks, every limit out of the way
    (``values`` win)."""
    defaults = dict(
        REMINDERS_DATABASE_URL=database_url,
        REMINDERS_CONFIG_DIR=str(CONFIG),
        REMINDERS_HTTP_HOST="127.0.0.1",
        REMINDERS_HTTP_PORT=str(free_port()),
        REMINDERS_DELIVERY_MODE="console",
        REMINDERS_DISPATCH_INTERVAL="0.5",
        REMINDERS_PLANNING_INTERVAL="1",
        REMINDERS_HOUSEKEEPING_INTERVAL="1",
        REMINDERS_DISPATCH_BATCH_SIZE="50",
        REMINDERS_DISPATCH_CONCURRENCY="4",
        REMINDERS_SMS_RATE="100000",
        REMINDERS_EMAIL_RATE="100000",
        REMINDERS_WHATSAPP_RATE="100000",
    )
    return base_env(**{**defaults, **values})


@dataclass(frozen=True)
class Exit:
    code: int
    seconds: float  # from the signal to the end of the process


class ServiceProcess:
    """One ``reminders`` process with its output in ``workdir``."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.argv, self.env, self.workdir, self.name = list(argv), env, workdir, name
        self.port = int(env.get("REMINDERS_HTTP_PORT", "8000"))
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=self.workdir, stdout=out, stderr=err
            )
        _STARTED.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def get(self, path: str, timeout: float = 3.0) -> int:
        """The HTTP status of ``GET path``; 0 when nothing answers."""
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with _OPENER.open(url, timeout=timeout) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except OSError:
            return 0

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout: float, poll: float = 0.1
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if not self.running():
                raise AssertionError(f"{self.name} exited while waiting for {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {what} after {timeout} s:\n{self.tail()}")
            time.sleep(poll)

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.wait_for("/readyz 200", lambda: self.get("/readyz") == 200, timeout)

    def terminate(self, timeout: float = 10.0) -> Exit:
        """SIGTERM, as ``docker stop`` sends it; the exit code and how long the exit took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout + 5)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.tail()}") from None
        return Exit(code, time.monotonic() - started)

    def kill(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        """Every stderr line, parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs() if line.get("event") == name]

    def printed(self) -> Counter[int]:
        """How many times the console channel printed each reminder id."""
        return Counter(int(i) for i in _PRINTED.findall(self.stdout()))

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr().splitlines()[-lines:])


def kill_leftovers() -> list[str]:
    """``kill -9`` every process the current test started and left running (a test that
    failed half-way), and wait for each: the names of those that were still running."""
    left = [process for process in _STARTED if process.running()]
    for process in left:
        process.kill()
    _STARTED.clear()
    return [process.name for process in left]


def proc_cmdline(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


def midday_zone(now: dt.datetime) -> str:
    """A fixed-offset zone where ``now`` is about noon, so the send window is open."""
    offset = 12 - now.astimezone(dt.UTC).hour  # -11 .. +12 hours
    return f"Etc/GMT{-offset:+d}"  # POSIX sign: Etc/GMT-3 is three hours ahead of UTC


def seed_due(
    engine: Engine, count: int, *, prefix: str, phone: str | None = None, planned: bool = False
) -> list[int]:
    """``count`` patients (SMS, consent given) each with a treatment whose ``due`` step is due
    today. Unplanned by default: the service's planning job makes the reminders. With
    ``planned``, the ``due`` reminders are written here, already due. Returns treatment ids."""
    now = dt.datetime.now(dt.UTC)
    zone = midday_zone(now)
    today = now.astimezone(ZoneInfo(zone)).date()
    with Session(engine) as session, session.begin():
        patients = [_patient(f"{prefix}{i}", phone or f"+90543{i:07d}", zone) for i in range(count)]
        session.add_all(patients)
        session.flush()
        session.add_all(Consent(patient_id=p.id, channel="sms", granted=True) for p in patients)
        treatments = [_treatment(p, today - dt.timedelta(days=84), not planned) for p in patients]
        session.add_all(treatments)
        session.flush()
        if planned:
            session.add_all(_due_reminder(t, now) for t in treatments)
        return [t.id for t in treatments]


def due_reminder_ids(engine: Engine, treatment_ids: Sequence[int]) -> set[int]:
    with Session(engine) as session:
        rows = session.scalars(
            select(Reminder.id).where(
                Reminder.treatment_id.in_(treatment_ids), Reminder.step == "due"
            )
        )
        return set(rows)


def statuses(engine: Engine, reminder_ids: Sequence[int] | set[int]) -> Counter[str]:
    with Session(engine) as session:
        rows = session.scalars(select(Reminder.status).where(Reminder.id.in_(list(reminder_ids))))
        return Counter(rows)


def _patient(external_id: str, phone: str, zone: str) -> Patient:
    return Patient(
        external_id=external_id,
        given_name="Ayşe",
        family_name="Yılmaz",
        email=f"{external_id}@example.com",
        phone=phone,
        language="en",
        timezone=zone,
        channels="sms",
        travel_lead_days=0,
        active=True,
    )


def _treatment(patient: Patient, administered_on: dt.date, needs_plan: bool) -> Treatment:
    return Treatment(
        external_id=f"{patient.external_id}-t",
        patient_id=patient.id,
        protocol="chronic_migraine",
        administered_on=administered_on,
        product="onabotulinumtoxinA",
        units=155,
        location="Istanbul",
        needs_plan=needs_plan,
    )


def _due_reminder(treatment: Treatment, now: dt.datetime) -> Reminder:
    return Reminder(
        treatment_id=treatment.id,
        patient_id=treatment.patient_id,
        protocol=treatment.protocol,
        step="due",
        status="pending",
        due_at=now - dt.timedelta(minutes=5),
        expires_at=now + dt.timedelta(days=30),
        next_attempt_at=now - dt.timedelta(minutes=5),
        attempts=0,
    )
