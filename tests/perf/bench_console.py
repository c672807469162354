"""Figure 7: the staff console's patient search and outbox, p95 over the big clinic.

The web app runs alone under uvicorn in a process of its own, on the big clinic's database (a
million patients, millions of reminders). A staff account signs in through the real form
(CSRF token, session cookie), then asks what staff ask: names and name prefixes (Turkish
letters included), phone numbers typed in national and E.164 form, emails, external ids; the
outbox's views (upcoming, sent, failed, expired, cancelled) with filters and later pages. Each
time is the full response as the client receives it.
"""

from __future__ import annotations

import random
import re
import socket
import time
from collections.abc import Iterator

import httpx

from reminders import auth
from tests.perf.children import Child
from tests.perf.clinic import Clinic
from tests.perf.context import Context
from tests.perf.databases import runtime_for
from tests.perf.names import FAMILY, GIVEN
from tests.perf.report import ms, percentile

TARGET_SECONDS = 0.150
TIME_LIMIT = 45.0  # seconds per page kind: a slow page cannot stall the run
EMAIL, PASSWORD = "perf@example.org", "correct horse battery staple"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def run(ctx: Context, backend: str) -> None:
    clinic = ctx.clinic(backend)
    _add_staff(clinic)
    port = _free_port()
    args = {"url": clinic.url, "port": port, "secret": "perf-" + "k" * 32}
    base = f"http://127.0.0.1:{port}"
    server = Child("tests.perf.console_server", args, ctx.scratch, "console")
    with server, httpx.Client(base_url=base, timeout=30.0) as client:
        _wait_up(client, server)
        _sign_in(client)
        n = ctx.sizes.console_requests
        search = _timed(client, _searches(random.Random(7), clinic), n)
        outbox = _timed(client, _outbox_pages(clinic), n)
    for name, times, slowest in (("patient search", *search), ("outbox page", *outbox)):
        p95 = percentile(times, 95)
        ctx.report.figure(
            7,
            f"console {name}, {clinic.patients:,} patients",
            f"p95 {ms(p95)}, p50 {ms(percentile(times, 50))} over {len(times)} requests"
            f"; slowest {slowest}",
            f"p95 <= {ms(TARGET_SECONDS)}",
            p95 <= TARGET_SECONDS,
            backend,
        )


def _add_staff(clinic: Clinic) -> None:
    rt = runtime_for(clinic.url)
    with rt.sessions() as session, session.begin():
        if auth.find_user(session, EMAIL) is None:
            auth.create_user(session, EMAIL, PASSWORD, "staff")
    rt.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_up(client: httpx.Client, server: Child, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the console server exited:\n{server.tail()}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the console server did not answer in {timeout:.0f} s:\n{server.tail()}")


def _sign_in(client: httpx.Client) -> None:
    found = _TOKEN.search(client.get("/admin/login").text)
    if found is None:
        raise RuntimeError("no CSRF token on /admin/login")
    data = {"email": EMAIL, "password": PASSWORD, "csrf_token": found.group(1)}
    answer = client.post("/admin/login", data=data, follow_redirects=False)
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}")


def _timed(
    client: httpx.Client, paths: Iterator[tuple[str, dict[str, str]]], count: int
) -> tuple[list[float], str]:
    """Seconds per request for ``count`` requests (fewer if TIME_LIMIT runs out first), and
    the slowest request."""
    times: list[tuple[float, str]] = []
    deadline = time.monotonic() + TIME_LIMIT
    for path, params in paths:
        if len(times) == count or time.monotonic() > deadline:
            break
        started = time.perf_counter()
        answer = client.get(path, params=params)
        elapsed = time.perf_counter() - started
        if answer.status_code != 200:
            raise RuntimeError(f"GET {path} {params} answered {answer.status_code}")
        times.append((elapsed, f"{path}?{'&'.join(f'{k}={v}' for k, v in params.items())}"))
    worst = max(times)
    return [t for t, _ in times], f"{worst[1]} {ms(worst[0])}"


def _searches(rng: random.Random, clinic: Clinic) -> Iterator[tuple[str, dict[str, str]]]:
    while True:
        i = rng.randint(1, clinic.patients)
        given, family = GIVEN[i % len(GIVEN)], FAMILY[i // len(GIVEN) % len(FAMILY)]
        for q in (
            family,
            family[:3],
            f"{given} {family}".lower(),
            f"+90532{i:07d}",
            f"0532 {i // 10_000 % 1000:03d} {i % 10_000 // 100:02d} {i % 100:02d}",
            f"p{i:08d}@example.com",
            f"P{i:08d}",
            given[:4],
        ):
            yield "/admin/patients", {"q": q}
        yield "/admin/patients", {"q": family, "p": "2"}


def _outbox_pages(clinic: Clinic) -> Iterator[tuple[str, dict[str, str]]]:
    day = clinic.today.isoformat()
    while True:
        for view in ("upcoming", "sent", "failed", "expired", "cancelled"):
            yield "/admin/outbox", {"view": view}
        yield "/admin/outbox", {"view": "upcoming", "p": "2"}
        yield "/admin/outbox", {"view": "sent", "p": "10"}
        yield "/admin/outbox", {"view": "sent", "channel": "sms", "protocol": "chronic_migraine"}
        yield "/admin/outbox", {"view": "upcoming", "step": "due", "since": day}
        yield "/admin/outbox", {"view": "sent", "until": day}
