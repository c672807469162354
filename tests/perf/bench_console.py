"""Figure 7: the staff console's patient search and outbox, p95 over the big clinic.

The web app runs alone under uvicorn in a process of its own, on the big clinic's database (a
million patients, millions of reminders). A staff account signs in through the real form
(CSRF token, session cookie), then asks what staff ask: names and name prefixes (Turkish
letters included), phone numbers typed in national and E.164 form, emails, external ids; the
outbox's views (upcoming, sent, failed, expired, cancelled) with filters, and later pages as
staff reach them: the page's own "Next" and "Previous" links (keyset cursors), and a page half
a year back in the sent view. Each time is the full response as the client receives it.
"""

from __future__ import annotations

import datetime as dt
import html
import random
import re
import socket
import time
import urllib.parse
from collections.abc import Generator

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
_LINK = re.compile(r'<a href="([^"]+)" rel="(next|prev)">')
Request = tuple[str, dict[str, str]]
Requests = Generator[Request, httpx.Response, None]  # each response is sent back in


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


def _timed(client: httpx.Client, requests: Requests, count: int) -> tuple[list[float], str]:
    """Seconds per request for ``count`` requests (fewer if TIME_LIMIT runs out first), and
    the slowest request. Each answer goes back to ``requests``, which may follow its links."""
    times: list[tuple[float, str]] = []
    deadline = time.monotonic() + TIME_LIMIT
    path, params = next(requests)
    while len(times) < count and time.monotonic() <= deadline:
        started = time.perf_counter()
        answer = client.get(path, params=params)
        elapsed = time.perf_counter() - started
        if answer.status_code != 200:
            raise RuntimeError(f"GET {path} {params} answered {answer.status_code}")
        query = "&".join(f"{k}={v}" for k, v in params.items())
        times.append((elapsed, f"{path}?{query}" if query else path))
        path, params = requests.send(answer)
    worst = max(times)
    return [t for t, _ in times], f"{worst[1]} {ms(worst[0])}"


def _searches(rng: random.Random, clinic: Clinic) -> Requests:
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


def _link(answer: httpx.Response, rel: str) -> Request | None:
    """The page's own link to its next or previous page, if it has one, as path and query
    (httpx drops a query written in the path when it is given ``params``)."""
    for href, kind in _LINK.findall(answer.text):
        if kind == rel:
            path, _, query = html.unescape(href).partition("?")
            return path, dict(urllib.parse.parse_qsl(query))
    return None


def _outbox_pages(clinic: Clinic) -> Requests:
    """Each view's first page, then its next page by the page's own link; the upcoming view
    also back again by its "Previous" link; a sent page half a year back by a cursor."""
    day = clinic.today.isoformat()
    back = dt.datetime.combine(clinic.today - dt.timedelta(days=182), dt.time(), dt.UTC)
    deep = f"{back:%Y-%m-%dT%H:%M:%S}.000000Z,{2**31 - 1}"
    while True:
        for params in (
            {"view": "upcoming"},
            {"view": "sent"},
            {"view": "failed"},
            {"view": "expired"},
            {"view": "cancelled"},
            {"view": "sent", "channel": "sms", "protocol": "chronic_migraine"},
            {"view": "upcoming", "step": "due", "since": day},
            {"view": "sent", "until": day},
        ):
            answer = yield "/admin/outbox", params
            later = _link(answer, "next")
            if later is None:
                continue
            answer = yield later
            earlier = _link(answer, "prev")
            if params == {"view": "upcoming"} and earlier is not None:
                yield earlier
        yield "/admin/outbox", {"view": "sent", "after": deep}
