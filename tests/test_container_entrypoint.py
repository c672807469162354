"""The container, as far as it can be run without a Docker engine: the wheel is built from
exactly what the Dockerfile's build stage copies, installed into a fresh virtual environment, and
the image's own entrypoint runs with the image's environment and files (moved under a folder
that stands for ``/``), configured by environment variables only, as ``docker run -e`` would.
It migrates an empty database, serves ``/healthz`` and ``/readyz``, sends an SMS through the
fake Twilio with the real SDK, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from reminders import migrate
from reminders.db import make_engine
from reminders.models import Delivery, Reminder
from tests.conftest import POSTGRES_URL, create_postgres_database, drop_postgres_database
from tests.fakes import FakeTwilio
from tests.provider_setup import SMS_FROM
from tests.support import image as dockerfile
from tests.support.service import ServiceProcess, free_port, proc_cmdline, seed_due

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
PHONE = "+905431974320"


@dataclass(frozen=True)
class Installed:
    context: Path  # what the build stage copied
    wheel: Path
    bin: Path  # the fresh venv's scripts


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The build stage's wheel, installed with its dependencies into a new venv (once a run)."""
    work = tmp_path_factory.mktemp("image")
    context = work / "context"
    for copy in dockerfile.load().stages[0].copies():
        for source in copy.sources:
            dockerfile.lay_out_file(dockerfile.ROOT / source, context / source)
    _pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(work / "wheels"), str(context))
    [wheel] = (work / "wheels").glob("reminders-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    venv_pip = [str(work / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*venv_pip, str(wheel)], check=True, capture_output=True)
    return Installed(context, wheel, work / "venv" / "bin")


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str | None]:
    """A new, empty PostgreSQL database; None (the image's default SQLite file) without one."""
    if not POSTGRES_URL:
        yield None
        return
    url = create_postgres_database(POSTGRES_URL, prefix="reminders_container")
    yield url
    drop_postgres_database(url)


def test_the_wheel_holds_every_file_the_service_reads(installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    wanted = {
        "reminders": "reminders",
        "alembic": "reminders/_alembic",
        "config": "reminders/_config",
    }
    for top, packaged in wanted.items():
        for path in (installed.context / top).rglob("*"):
            if path.is_file():
                relative = path.relative_to(installed.context / top).as_posix()
                assert f"{packaged}/{relative}" in names


def test_every_module_imports_from_the_installed_wheel(installed) -> None:
    code = (
        "import importlib, pkgutil, reminders\n"
        "for m in pkgutil.walk_packages(reminders.__path__, 'reminders.'):\n"
        "    if not m.name.endswith('__main__') and '_alembic' not in m.name:\n"
        "        importlib.import_module(m.name)\n"
        "print(reminders.__file__)"
    )
    result = subprocess.run(
        [str(installed.bin / "python"), "-c", code],
        env={"PATH": os.defpath},
        cwd=installed.bin,  # not the checkout, whose reminders/ would shadow the install
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr  # a dependency missing from pyproject.toml
    assert result.stdout.strip().startswith(str(installed.bin.parent))


def test_the_image_entrypoint_migrates_serves_sends_and_stops_on_sigterm(
    installed, database_url, tmp_path
) -> None:
    image, root = dockerfile.load(), tmp_path / "root"
    dockerfile.lay_out(image, dockerfile.ROOT, root)
    (root / "app" / "data").mkdir()  # the image's `RUN mkdir -p /app/data`
    with FakeTwilio() as twilio:
        env = _container_env(image, root, installed, twilio, database_url)
        argv = dockerfile.service_argv(image, root)
        workdir = Path(dockerfile.in_root(image.final.last("WORKDIR") or "/", root))
        container = ServiceProcess(argv, env, workdir, "container").start()
        try:
            container.wait_for("/healthz", lambda: container.get("/healthz") == 200, 120)
            container.wait_ready()
            assert _healthcheck(image, env) == 0
            engine = make_engine(env["REMINDERS_DATABASE_URL"])
            assert migrate.at_head(engine)  # the entrypoint migrated the empty database
            seed_due(engine, 1, prefix="box", phone=PHONE)
            container.wait_for("the SMS", lambda: len(twilio.messages) == 1, 60)
            command = proc_cmdline(container.pid)  # exec: the entrypoint became the service
            exit_ = container.terminate()
        finally:
            container.kill()

    assert Path(command[-2]).name == "reminders" and command[-1] == "run"
    assert (exit_.code, exit_.seconds < 10) == (0, True)
    [message] = twilio.messages
    assert (message.to, message.params["From"]) == (PHONE, SMS_FROM)
    assert _delivery(engine) == (message.status, message.sid)  # what Twilio answered
    engine.dispose()
    events = [line["event"] for line in container.logs()]  # all JSON lines
    assert events.index("schema_at_head") < events.index("service_started")
    assert "reminder_sent" in events and "service_stopped" in events


def _container_env(
    image: dockerfile.Image,
    root: Path,
    installed: Installed,
    twilio: FakeTwilio,
    database_url: str | None,
) -> dict[str, str]:
    """The image's ENV (its paths under ``root``), then what ``docker run -e`` would add."""
    env = {name: dockerfile.in_root(value, root) for name, value in image.env.items()}
    port = free_port()
    env |= {
        "PATH": f"{installed.bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(root / "app"),
        "REMINDERS_HTTP_HOST": "127.0.0.1",  # tests listen on loopback only
        "REMINDERS_HTTP_PORT": str(port),
        "REMINDERS_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "REMINDERS_SECRET_KEY": "container-test-secret-key",
        "REMINDERS_PLANNING_INTERVAL": "1",
        "REMINDERS_DISPATCH_INTERVAL": "1",
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_AUTH_TOKEN": twilio.auth_token,
        "TWILIO_SMS_FROM": SMS_FROM,
        "TWILIO_API_BASE_URL": twilio.base_url,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    if database_url:
        env["REMINDERS_DATABASE_URL"] = database_url
    return env


def _healthcheck(image: dockerfile.Image, env: dict[str, str]) -> int:
    """The image's HEALTHCHECK command, run as Docker would run it inside the container."""
    _, command = image.healthcheck
    executable = shutil.which(command[0], path=env["PATH"])
    assert executable is not None
    return subprocess.run([executable, *command[1:]], env=env, timeout=10, check=False).returncode


def _delivery(engine: Engine) -> tuple[str, str | None]:
    with Session(engine) as session:
        reminder = session.scalars(select(Reminder).where(Reminder.step == "due")).one()
        delivery = session.scalars(select(Delivery).where(Delivery.reminder_id == reminder.id))
        row = delivery.one()
        assert reminder.status == "sent"
        return row.status, row.provider_message_id
