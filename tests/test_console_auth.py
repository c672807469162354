"""Console accounts: hashing, lockout, session cookies, signing in and out, the CLI."""

# ruff: noqa: F811  (fixtures imported from tests.console_support are used as arguments)

from __future__ import annotations

import datetime as dt
import re

import pytest
from click.testing import CliRunner
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select

from reminders import auth
from reminders.auth import SessionCodec, SessionData
from reminders.cli import main
from reminders.models import User
from tests.console_support import PASSWORD, anonymous, console, sign_in, token  # noqa: F401


def test_a_password_is_stored_as_an_argon2_hash_that_only_the_right_password_matches() -> None:
    hashed = auth.hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert auth.verify_password(hashed, PASSWORD)
    assert not auth.verify_password(hashed, PASSWORD + "!")
    assert not auth.verify_password("not a hash", PASSWORD)


@pytest.mark.parametrize(
    ("email", "password", "role", "reason"),
    [
        ("not-an-email", PASSWORD, "staff", "is not an email address"),
        ("nurse@example.com", "short", "staff", "at least 10 characters"),
        ("nurse@example.com", PASSWORD, "owner", "role must be one of"),
    ],
)
def test_an_account_needs_an_email_a_long_password_and_a_known_role(
    runtime, email: str, password: str, role: str, reason: str
) -> None:
    with runtime.sessions() as session, pytest.raises(auth.AccountError, match=reason):
        auth.create_user(session, email, password, role)


def test_one_email_has_one_account_whatever_its_case(runtime) -> None:
    with runtime.sessions() as session, session.begin():
        auth.create_user(session, "Nurse@Example.com", PASSWORD)
    with runtime.sessions() as session, pytest.raises(auth.AccountError, match="already has"):
        auth.create_user(session, "nurse@example.COM", PASSWORD)


def _attempt(runtime, password: str, now: dt.datetime) -> bool:
    with runtime.sessions() as session, session.begin():
        return auth.authenticate(session, "staff@example.com", password, now=now) is not None


def test_five_wrong_passwords_lock_the_account_even_against_the_right_one(console, now) -> None:
    for _ in range(auth.MAX_FAILED_LOGINS):
        assert not _attempt(console, "wrong password", now)
    assert not _attempt(console, PASSWORD, now + dt.timedelta(minutes=1))
    assert _attempt(console, PASSWORD, now + auth.LOCKOUT + dt.timedelta(seconds=1))


def test_a_successful_sign_in_clears_earlier_failures(console, now) -> None:
    for _ in range(auth.MAX_FAILED_LOGINS - 1):
        _attempt(console, "wrong password", now)
    assert _attempt(console, PASSWORD, now)
    for _ in range(auth.MAX_FAILED_LOGINS - 1):
        _attempt(console, "wrong password", now)
    assert _attempt(console, PASSWORD, now)
    with console.sessions() as session:
        user = auth.find_user(session, "staff@example.com")
        assert user is not None and user.last_login_at == now and user.failed_logins == 0


def test_a_switched_off_account_cannot_sign_in(console, now) -> None:
    with console.sessions() as session, session.begin():
        session.scalars(select(User).where(User.email == "staff@example.com")).one().active = False
    assert not _attempt(console, PASSWORD, now)


def test_a_session_cookie_that_was_altered_or_signed_with_another_key_reads_as_nothing() -> None:
    codec = SessionCodec("key one")
    cookie = codec.dumps(SessionData(7, "token"))
    assert codec.loads(cookie) == SessionData(7, "token")
    assert codec.loads(cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1]) is None
    assert SessionCodec("key two").loads(cookie) is None
    assert codec.loads("garbage") is None


def test_a_session_cookie_older_than_twelve_hours_reads_as_nothing() -> None:
    class Yesterday(TimestampSigner):
        def get_timestamp(self) -> int:
            return super().get_timestamp() - 13 * 3600

    old = URLSafeTimedSerializer("key", salt="reminders.console.session", signer=Yesterday)
    cookie = old.dumps({"u": 7, "c": "token"})
    assert SessionCodec("key").loads(cookie) is None


def test_signing_in_sets_a_new_httponly_samesite_session_and_goes_to_the_dashboard(
    anonymous,
) -> None:
    before = token(anonymous)
    first = anonymous.get("/admin/login").headers.get("set-cookie", "")
    response = sign_in(anonymous, "staff@example.com")
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/dashboard"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "reminders_session=" in cookie
    assert first == ""  # the anonymous session was set once, on the first page
    assert token(anonymous, "/admin/dashboard") != before  # a new CSRF token after sign-in
    assert anonymous.get("/admin/dashboard").status_code == 200


def test_a_wrong_password_is_refused_without_saying_which_part_was_wrong(anonymous) -> None:
    response = sign_in(anonymous, "staff@example.com", "wrong password")
    assert response.status_code == 401
    assert "Wrong email or password" in response.text
    unknown = sign_in(anonymous, "nobody@example.com", "wrong password")
    assert unknown.status_code == 401 and "Wrong email or password" in unknown.text
    assert anonymous.get("/admin/dashboard", follow_redirects=False).status_code == 303


def test_a_page_asked_for_before_sign_in_is_shown_after_it(anonymous) -> None:
    response = anonymous.get("/admin/outbox?view=failed", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login?next=%2Fadmin%2Foutbox%3Fview%3Dfailed"
    login = anonymous.post(
        "/admin/login",
        data={
            "email": "staff@example.com",
            "password": PASSWORD,
            "csrf_token": token(anonymous),
            "next": "/admin/outbox?view=failed",
        },
        follow_redirects=False,
    )
    assert login.headers["location"] == "/admin/outbox?view=failed"


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "/elsewhere"])
def test_signing_in_never_redirects_outside_the_console(anonymous, target: str) -> None:
    login = anonymous.post(
        "/admin/login",
        data={
            "email": "staff@example.com",
            "password": PASSWORD,
            "csrf_token": token(anonymous),
            "next": target,
        },
        follow_redirects=False,
    )
    assert login.headers["location"] == "/admin/dashboard"


def test_a_post_without_a_session_is_refused_not_redirected(anonymous) -> None:
    response = anonymous.post("/admin/outbox/1/cancel", data={}, follow_redirects=False)
    assert response.status_code == 401


def test_signing_out_ends_the_session(anonymous) -> None:
    sign_in(anonymous, "staff@example.com")
    response = anonymous.post(
        "/admin/logout",
        data={"csrf_token": token(anonymous, "/admin/dashboard")},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/admin/login"
    assert anonymous.get("/admin/dashboard", follow_redirects=False).status_code == 303


def test_a_switched_off_account_loses_its_open_session(anonymous, console) -> None:
    sign_in(anonymous, "staff@example.com")
    with console.sessions() as session, session.begin():
        session.scalars(select(User).where(User.email == "staff@example.com")).one().active = False
    assert anonymous.get("/admin/dashboard", follow_redirects=False).status_code == 303


def test_pages_carry_security_headers_and_are_not_cached(anonymous) -> None:
    response = anonymous.get("/admin/login")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"


def _cli(settings, args: list[str], stdin: str) -> object:
    env = {
        "REMINDERS_DATABASE_URL": settings.database_url,
        "REMINDERS_CONFIG_DIR": "config",
        "REMINDERS_LOG_FORMAT": "console",
    }
    return CliRunner().invoke(main, args, input=stdin, env=env)


def test_users_add_reads_the_password_from_stdin_and_creates_the_account(runtime, settings) -> None:
    result = _cli(
        settings,
        ["users", "add", "Doc@Example.com", "--role", "admin", "--password-stdin"],
        PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    assert "added doc@example.com (admin)" in result.output
    with runtime.sessions() as session:
        user = auth.find_user(session, "doc@example.com")
        assert user is not None and user.role == "admin"
        assert auth.verify_password(user.password_hash, PASSWORD)


def test_users_add_asks_twice_and_refuses_passwords_that_differ(runtime, settings) -> None:
    result = _cli(
        settings,
        ["users", "add", "doc@example.com"],
        f"{PASSWORD}\nother one!!\n{PASSWORD}\n{PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"do not match", result.output)
    with runtime.sessions() as session:
        assert auth.find_user(session, "doc@example.com") is not None


def test_users_add_says_why_it_refuses_a_short_password_or_a_taken_email(runtime, settings) -> None:
    short = _cli(settings, ["users", "add", "doc@example.com", "--password-stdin"], "short\n")
    assert short.exit_code == 1 and "at least 10 characters" in short.output
    _cli(settings, ["users", "add", "doc@example.com", "--password-stdin"], PASSWORD + "\n")
    again = _cli(settings, ["users", "add", "doc@example.com", "--password-stdin"], PASSWORD + "\n")
    assert again.exit_code == 1 and "already has an account" in again.output
