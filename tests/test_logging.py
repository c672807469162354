"""What the service writes to its logs, read the way ops read it: the output of a real
``reminders`` process. One JSON object per line, with the ids that tie an event to a reminder
and a delivery; never a full phone number, an email address, a message body or a secret; as
much as ``REMINDERS_LOG_LEVEL`` asks for. A wrong setting is one line naming the variable."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reminders.logs import Redactor, mask_email, mask_phone
from reminders.runtime import Runtime
from tests.fakes import FakeTwilio
from tests.provider_setup import SMS_FROM
from tests.support.service import BIN, CONFIG, ServiceProcess, base_env, free_port, seed_due

PHONE = "+905431974320"
SECRETS = {
    "REMINDERS_SECRET_KEY": "sk-log-test-9f3Kq2LmZx",
    "REMINDERS_API_TOKEN": "api-log-test-Vb71TqPw0s",
    "SENDGRID_API_KEY": "SG.log-test-Jx04HnRt5e",
    "TWILIO_AUTH_TOKEN": "c0ffee" * 5 + "ab",
}
DB_PASSWORD = "db-log-test-Wq8Zr3Ty"  # PostgreSQL here trusts local users and ignores it


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio(auth_token=SECRETS["TWILIO_AUTH_TOKEN"]) as fake:
        yield fake


def _database_url(runtime: Runtime) -> str:
    url = runtime.engine.url
    if url.get_backend_name() == "postgresql":
        url = url.set(password=DB_PASSWORD)
    return url.render_as_string(hide_password=False)


def _tick(runtime: Runtime, twilio: FakeTwilio, tmp_path: Path, level: str) -> ServiceProcess:
    """``reminders tick`` in its own process, sending through the fake Twilio."""
    env = base_env(
        REMINDERS_DATABASE_URL=_database_url(runtime),
        REMINDERS_CONFIG_DIR=str(CONFIG),
        REMINDERS_LOG_LEVEL=level,
        REMINDERS_PUBLIC_URL="http://127.0.0.1:9",
        TWILIO_ACCOUNT_SID=twilio.account_sid,
        TWILIO_SMS_FROM=SMS_FROM,
        TWILIO_API_BASE_URL=twilio.base_url,
        **SECRETS,
    )
    process = ServiceProcess([str(BIN / "reminders"), "tick"], env, tmp_path, f"tick-{level}")
    assert process.start().process is not None
    assert process.process.wait(timeout=60) == 0, process.tail()
    return process


def test_events_are_json_lines_with_ids_and_no_contact_data_body_or_secret(
    runtime, twilio, tmp_path
) -> None:
    seed_due(runtime.engine, 1, prefix="log", phone=PHONE)
    tick = _tick(runtime, twilio, tmp_path, "DEBUG")

    [message] = twilio.messages
    lines = tick.logs()  # every line is JSON, or this fails
    assert all({"event", "level", "logger", "timestamp"} <= set(line) for line in lines)
    [sent] = tick.events("reminder_sent")
    assert isinstance(sent["reminder_id"], int) and isinstance(sent["delivery_id"], int)
    assert sent["to"] == mask_phone(PHONE)
    everything = tick.stderr() + tick.stdout()
    assert message.body and len(message.body) > 20
    for private in [PHONE, PHONE.removeprefix("+"), "log0@example.com", message.body]:
        assert private not in everything
    for secret in [*SECRETS.values(), DB_PASSWORD]:
        assert secret not in everything


def test_the_log_level_comes_from_the_environment(runtime, twilio, tmp_path) -> None:
    seed_due(runtime.engine, 1, prefix="quiet", phone=PHONE)
    tick = _tick(runtime, twilio, tmp_path, "WARNING")

    assert len(twilio.messages) == 1  # it did send ...
    assert tick.events("reminder_sent") == []  # ... and kept the INFO line to itself
    assert {line["level"] for line in tick.logs()} <= {"warning", "error", "critical"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REMINDERS_HTTP_PORT", "eighty"),
        ("REMINDERS_LOG_LEVEL", "LOUD"),
        ("REMINDERS_CLINIC_TIMEZONE", "Mars/Olympus_Mons"),
        ("REMINDERS_DATABASE_URL", f"postgres://ops:{DB_PASSWORD}@db/reminders"),
        ("REMINDERS_CONFIG_DIR", "/nonexistent/config"),
    ],
)
def test_a_wrong_setting_stops_the_service_with_one_line_naming_it(
    variable, value, tmp_path
) -> None:
    env = base_env(**{"REMINDERS_CONFIG_DIR": str(CONFIG), variable: value})
    result = _run(["run"], env, tmp_path)

    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert variable in line
    assert DB_PASSWORD not in line
    assert result.stdout == ""


def test_a_database_that_cannot_be_reached_ends_a_one_off_command_with_one_line(
    tmp_path,
) -> None:
    url = f"postgresql+psycopg://ops:{DB_PASSWORD}@127.0.0.1:{free_port()}/reminders"
    env = base_env(REMINDERS_CONFIG_DIR=str(CONFIG), REMINDERS_DATABASE_URL=url)
    result = _run(["tick"], env, tmp_path)

    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "REMINDERS_DATABASE_URL" in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert DB_PASSWORD not in result.stderr


def test_the_log_sink_blanks_secrets_contact_data_and_sql_parameters() -> None:
    redactor = Redactor(["hunter2-secret", "ab"])  # too short to blank without harm
    error = (
        "(psycopg.errors.UniqueViolation) duplicate key hunter2-secret\n"
        "[SQL: INSERT INTO patients (phone, email) VALUES (%(phone)s, %(email)s)]\n"
        "[parameters: {'phone': '+905431974320', 'email': 'ayse@example.com', 'body': 'Hi'}]\n"
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)"
    )
    event = redactor(None, "error", {"event": "failed", "exception": error, "n": 3})

    assert event["n"] == 3
    assert "hunter2-secret" not in event["exception"]
    assert "[parameters: hidden]" in event["exception"] and "'Hi'" not in event["exception"]
    assert "duplicate key ***" in event["exception"]
    assert "INSERT INTO patients" in event["exception"]  # the statement itself stays
    text = redactor.scrub("to +905431974320 or ayse@example.com, about 12 units")
    assert text == f"to {mask_phone(PHONE)} or {mask_email('ayse@example.com')}, about 12 units"


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "reminders"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
