"""The real console app under uvicorn on 127.0.0.1 (a thread, a free port) and Debian's
headless Chromium driven by Playwright. Skips, saying why, when either is missing."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reminders.runtime import Runtime, build_runtime
from reminders.settings import Settings, load_settings
from reminders.web.app import create_app
from tests.browser import seed
from tests.conftest import CONFIG, empty_database

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
NOW = dt.datetime(2026, 3, 4, 7, 0, tzinfo=dt.UTC)  # 10:00 in Istanbul
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.browser

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None


@pytest.fixture(scope="module")
def console_runtime(database_url: str) -> Iterator[Runtime]:
    settings: Settings = load_settings(
        {},
        database_url=database_url,
        config_dir=CONFIG,
        log_format="console",
        secret_key="browser-tests-secret",
        clinic_name="Clinic Nord",
        clinic_phone="+90 212 000 00 00",
    )
    runtime = build_runtime(settings, {}, clock=lambda: NOW)
    seed.clinic(runtime, NOW)
    yield runtime
    empty_database(runtime)
    runtime.close()


@pytest.fixture(scope="module")
def base_url(console_runtime: Runtime) -> Iterator[str]:
    import uvicorn

    config = uvicorn.Config(
        create_app(console_runtime), host="127.0.0.1", port=0, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="console-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the console server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        pytest.skip("no chromium binary (apt-get install chromium); .ci/run installs it")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    context = browser.new_context(
        base_url=base_url, viewport={"width": 1280, "height": 900}, locale="en-US"
    )
    context.set_default_timeout(10_000)
    tab = context.new_page()
    yield tab
    context.close()


def shot(tab: Any, name: str) -> Path:
    """A full-page screenshot in tests/artifacts/screenshots/ (git-ignored)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path


def sign_in(tab: Any, email: str = "admin@example.com", password: str = seed.PASSWORD) -> None:
    tab.goto("/admin/login")
    tab.get_by_label("Email").fill(email)
    tab.get_by_label("Password").fill(password)
    tab.get_by_role("button", name="Sign in").click()
    tab.wait_for_url("**/admin/dashboard")
