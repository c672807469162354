"""Helpers for the console's HTTP tests: a client on the real app, signing in, CSRF tokens."""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from reminders import auth
from reminders.models import User
from reminders.runtime import Runtime
from reminders.web.app import create_app

PASSWORD = "correct horse battery"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def token(client: TestClient, path: str = "/admin/login") -> str:
    found = _TOKEN.search(client.get(path).text)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def sign_in(client: TestClient, email: str, password: str = PASSWORD) -> object:
    return client.post(
        "/admin/login",
        data={"email": email, "password": password, "csrf_token": token(client)},
        follow_redirects=False,
    )


def post(client: TestClient, path: str, data: dict[str, object], **kwargs: object) -> object:
    """A form POST carrying the session's CSRF token (read from the dashboard)."""
    body = {"csrf_token": token(client, "/admin/dashboard"), **data}
    return client.post(path, data=body, follow_redirects=False, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def console(runtime: Runtime, now: dt.datetime) -> Runtime:
    """The test runtime at a fixed instant, with one admin and one staff account."""
    runtime.clock = lambda: now
    with runtime.sessions() as session, session.begin():
        for role in ("admin", "staff"):
            session.add(User(email=f"{role}@example.com", password_hash=_hash(), role=role))
    return runtime


@functools.cache
def _hash() -> str:
    """One argon2 hash of PASSWORD for the whole run (each hash costs a quarter second)."""
    return auth.hash_password(PASSWORD)


@pytest.fixture
def anonymous(console: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(console)) as client:
        yield client


@pytest.fixture
def staff(console: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(console)) as client:
        assert sign_in(client, "staff@example.com").status_code == 303  # type: ignore[attr-defined]
        yield client


@pytest.fixture
def admin(console: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(console)) as client:
        assert sign_in(client, "admin@example.com").status_code == 303  # type: ignore[attr-defined]
        yield client
