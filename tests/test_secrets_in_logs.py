"""No configured secret appears anywhere in what a real ``reminders run`` process writes (its
whole stdout and stderr, at DEBUG) while it sends through the fakes, meets provider failures,
takes webhooks good and bad, API calls with right and wrong tokens, staff signing in with right
and wrong passwords and forms without CSRF tokens, and a sync source it cannot reach. Scanned
for: the API token, the secret key, the SendGrid key, the Twilio auth token (also as the Basic
auth it travels in), the sync source's and the database's passwords, a console password; each
also base64- and URL-encoded. ``test_logging.py`` covers ``reminders tick``; this is the rest.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import httpx2
import pytest
from sqlalchemy import Engine

from tests.fakes import FakeSendGrid, FakeTwilio
from tests.fault_support import seed_due, statuses, wait_until
from tests.provider_setup import FROM_EMAIL, SMS_FROM
from tests.support.service import BIN, CONFIG, ServiceProcess, free_port, service_env
from tests.webhook_support import EVENTS_PATH, INBOUND_PATH, status_path

_SIG = "X-Twilio-Email-Event-Webhook-Signature"


SECRETS = {
    "REMINDERS_API_TOKEN": "api-tok-" + secrets.token_hex(12),
    "REMINDERS_SECRET_KEY": "sk-" + secrets.token_hex(16),
    "SENDGRID_API_KEY": f"SG.{secrets.token_hex(8)}.{secrets.token_hex(16)}",
    "TWILIO_AUTH_TOKEN": secrets.token_hex(16),
}
SYNC_PASSWORD = "sync-pw-" + secrets.token_hex(8)
DB_PASSWORD = "db-pw-" + secrets.token_hex(8)  # PostgreSQL here trusts local users
STAFF_PASSWORD = "staff-pw-" + secrets.token_hex(8)


def _secret_forms(twilio_sid: str) -> dict[str, str]:
    """Every secret, and the forms it travels in (Basic auth, URL-encoded)."""
    values = {**SECRETS, "sync password": SYNC_PASSWORD, "console password": STAFF_PASSWORD}
    values["database password"] = DB_PASSWORD
    forms = dict(values)
    basic = base64.b64encode(f"{twilio_sid}:{SECRETS['TWILIO_AUTH_TOKEN']}".encode()).decode()
    forms["TWILIO_AUTH_TOKEN in Basic auth"] = basic
    for name, value in values.items():
        forms[f"{name}, base64"] = base64.b64encode(value.encode()).decode()
        forms[f"{name}, URL-encoded"] = urllib.parse.quote(value, safe="")
    return forms


def _database_url(engine: Engine) -> str:
    url = engine.url
    if url.get_backend_name() == "postgresql":
        url = url.set(password=DB_PASSWORD)
    return url.render_as_string(hide_password=False)


def _config_with_sync(workdir: Path) -> Path:
    """The shipped config plus a sync.toml, so the sync job really tries its source."""
    config = workdir / "config"
    shutil.copytree(CONFIG, config)
    (config / "sync.toml").write_text((CONFIG / "sync.example.toml").read_text())
    return config


def _environment(
    engine: Engine, twilio: FakeTwilio, sendgrid: FakeSendGrid, workdir: Path
) -> dict[str, str]:
    env = service_env(_database_url(engine))
    closed = f"127.0.0.1:{free_port()}"  # the clinic's database, unreachable
    return {
        **env,
        "REMINDERS_CONFIG_DIR": str(_config_with_sync(workdir)),
        **SECRETS,
        "REMINDERS_DELIVERY_MODE": "live",
        "REMINDERS_LOG_LEVEL": "DEBUG",
        "REMINDERS_RETRY_BASE_SECONDS": "1",
        "REMINDERS_PUBLIC_URL": f"http://127.0.0.1:{env['REMINDERS_HTTP_PORT']}",
        "REMINDERS_SYNC_DATABASE_URL": f"postgresql+psycopg://sync:{SYNC_PASSWORD}@{closed}/x",
        "REMINDERS_SYNC_INTERVAL": "1",
        "SENDGRID_API_HOST": sendgrid.base_url,
        "SENDGRID_FROM_EMAIL": FROM_EMAIL,
        "SENDGRID_WEBHOOK_PUBLIC_KEY": sendgrid.public_key_b64,
        "TWILIO_ACCOUNT_SID": twilio.account_sid,
        "TWILIO_SMS_FROM": SMS_FROM,
        "TWILIO_API_BASE_URL": twilio.base_url,
    }


def _add_staff(env: dict[str, str], workdir: Path) -> str:
    added = subprocess.run(
        [str(BIN / "reminders"), "users", "add", "staff@example.org", "--password-stdin"],
        input=STAFF_PASSWORD + "\n",
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    return added.stdout + added.stderr


def _drive(base: str, twilio: FakeTwilio, sendgrid: FakeSendGrid) -> None:
    """API calls, console sign-ins, webhooks good and bad, against the running service."""
    token = SECRETS["REMINDERS_API_TOKEN"]
    with httpx2.Client(base_url=base, timeout=10, trust_env=False) as http:
        body = {"given_name": "Ayşe", "email": "ayse.sec@example.com", "consent_email": "yes"}
        for header in (f"Bearer {token}", f"Bearer {token}x", f"Bearer {token[:-2]}", ""):
            http.put("/api/v1/patients/sec-1", json=body, headers={"Authorization": header})
        bad = {**body, "email": f"not-an-email {token}"}
        http.put("/api/v1/patients/sec-2", json=bad, headers={"Authorization": f"Bearer {token}"})
        _console(http)
        for path in (status_path("nope"), INBOUND_PATH):
            http.post(path, data={"MessageSid": "SM1"}, headers={"X-Twilio-Signature": "x"})
        http.post(
            EVENTS_PATH,
            content=b"[]",
            headers={_SIG: "bad", "X-Twilio-Email-Event-Webhook-Timestamp": "1"},
        )
    for mail in sendgrid.mails:
        sendgrid.signed_event_post(
            base + EVENTS_PATH, [sendgrid.event(mail, mail.recipients[0], "delivered")]
        )
        sendgrid.signed_event_post(base + EVENTS_PATH, [], timestamp="1000")  # stale
    twilio.post_inbound(base + INBOUND_PATH, "+905431970001", "STOP")


def _console(http: httpx2.Client) -> None:
    page = http.get("/admin/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf is not None
    form = {"email": "staff@example.org", "csrf_token": csrf.group(1)}
    http.post("/admin/login", data={**form, "password": STAFF_PASSWORD + "?"})
    http.post("/admin/login", data={**form, "password": STAFF_PASSWORD})
    http.post("/admin/logout", data={})  # no CSRF token: refused
    http.post("/admin/logout", data={"csrf_token": csrf.group(1)})


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_no_configured_secret_appears_in_anything_the_service_writes(
    runtime, tmp_path: Path
) -> None:
    with (
        FakeTwilio(auth_token=SECRETS["TWILIO_AUTH_TOKEN"], auto_callbacks=True) as twilio,
        FakeSendGrid(api_key=SECRETS["SENDGRID_API_KEY"]) as sendgrid,
    ):
        now = dt.datetime.now(dt.UTC)
        due = seed_due(runtime.engine, 3, "sms", now) + seed_due(runtime.engine, 3, "email", now)
        twilio.fail_next(503, 20503)  # a failure or two on the way
        sendgrid.fail_next(500)
        env = _environment(runtime.engine, twilio, sendgrid, tmp_path)
        added = _add_staff(env, tmp_path)
        service = ServiceProcess([str(BIN / "reminders"), "run"], env, tmp_path, "secrets")
        service.start()
        try:
            service.wait_ready()
            ids = [d.reminder_id for d in due]
            wait_until(lambda: statuses(runtime.engine, ids)["sent"] == 6, 60, "sends")
            _drive(f"http://127.0.0.1:{service.port}", twilio, sendgrid)
            time.sleep(2)  # a sync attempt or two, the callbacks the fake posts
            stopped = service.terminate()
        finally:
            service.kill()
        callbacks = [c.status for c in twilio.callbacks]

    written = added + service.stdout() + service.stderr()
    events = {line.get("event") for line in service.logs()}
    assert stopped.code == 0
    assert {"reminder_sent", "send_failed", "webhook_refused", "console_sign_in_refused",
            "console_signed_in", "api_patient_put"} <= events, events  # fmt: skip
    assert 200 in callbacks  # the fake's signed callbacks got in
    leaks = [name for name, value in _secret_forms(twilio.account_sid).items() if value in written]
    assert leaks == []
