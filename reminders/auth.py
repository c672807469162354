"""Staff console accounts: argon2 password hashes, lockout, signed session cookies, CSRF tokens.

A session is a cookie signed with ``REMINDERS_SECRET_KEY`` (itsdangerous, with a timestamp so it
expires) that carries the user's id and the session's CSRF token; nothing is stored server side.
Every form carries the token in a hidden field and every POST is checked against the cookie.
Before sign-in the cookie carries only a CSRF token, so the sign-in form is protected too.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from reminders.models import User

ROLES = ("staff", "admin")
MIN_PASSWORD_LENGTH = 10
MAX_FAILED_LOGINS = 5
LOCKOUT = dt.timedelta(minutes=15)
SESSION_MAX_AGE = dt.timedelta(hours=12)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_hasher = PasswordHasher()


@functools.cache
def dummy_hash() -> str:
    """A hash to check a password against when there is no such user, so that an unknown
    address takes as long as a wrong password. Made once, when first needed (the web app
    makes it at start-up): an Argon2 hash costs ~0.1 s, which no CLI command should pay."""
    return _hasher.hash(secrets.token_urlsafe(16))


def N_(message: str) -> str:  # noqa: N802 - gettext's "translated where shown" marker
    return message


class AccountError(ValueError):
    """An account cannot be created as asked. ``message % params`` says why; the console
    translates ``message`` (see reminders/web/console/i18n.py)."""

    def __init__(self, message: str, **params: object) -> None:
        super().__init__(message % params)
        self.message, self.params = message, params


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def normalise_email(email: str) -> str:
    cleaned = email.strip().lower()
    if not _EMAIL.match(cleaned) or len(cleaned) > 320:
        raise AccountError(N_("%(email)s is not an email address."), email=email)
    return cleaned


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            N_("The password needs at least %(count)d characters."), count=MIN_PASSWORD_LENGTH
        )


def find_user(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == email.strip().lower()))


def create_user(session: Session, email: str, password: str, role: str = "staff") -> User:
    """Add an account; AccountError for a bad email, a short password, a bad role, a taken email."""
    address = normalise_email(email)
    check_password(password)
    if role not in ROLES:
        raise AccountError(N_("The role must be one of: %(roles)s."), roles=", ".join(ROLES))
    if find_user(session, address) is not None:
        raise AccountError(N_("%(email)s already has an account."), email=address)
    user = User(email=address, password_hash=hash_password(password), role=role, active=True)
    session.add(user)
    session.flush()
    return user


def count_admins(session: Session) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(User).where(User.role == "admin", User.active)
        )
        or 0
    )


def authenticate(session: Session, email: str, password: str, *, now: dt.datetime) -> User | None:
    """The user if the password is right and the account active and not locked, else None.

    Each wrong password counts; the fifth in a row locks the account for ``LOCKOUT``. While
    locked even the right password is refused, so guessing cannot go on at full speed."""
    user = find_user(session, email)
    if user is None:
        verify_password(dummy_hash(), password)
        return None
    if user.locked_until is not None and user.locked_until > now:
        return None
    if not user.active or not verify_password(user.password_hash, password):
        _count_failure(user, now)
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
    return user


def _count_failure(user: User, now: dt.datetime) -> None:
    user.failed_logins = (user.failed_logins or 0) + 1
    if user.failed_logins >= MAX_FAILED_LOGINS:
        user.locked_until = now + LOCKOUT
        user.failed_logins = 0


def is_locked(user: User, now: dt.datetime) -> bool:
    return user.locked_until is not None and user.locked_until > now


@dataclass(frozen=True)
class SessionData:
    """What the session cookie holds: the user (None before sign-in) and the CSRF token."""

    user_id: int | None
    csrf: str

    @classmethod
    def anonymous(cls) -> SessionData:
        return cls(None, new_token())

    def signed_in(self, user_id: int) -> SessionData:
        """A fresh session at sign-in: a new token, so one seen before sign-in is worthless."""
        return SessionData(user_id, new_token())


def new_token() -> str:
    return secrets.token_urlsafe(32)


class SessionCodec:
    """Signs and reads session cookies; a forged, altered or expired cookie reads as None."""

    def __init__(self, secret: str | bytes, max_age: dt.timedelta = SESSION_MAX_AGE) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="reminders.console.session")
        self.max_age = max_age

    def dumps(self, data: SessionData) -> str:
        return self._serializer.dumps({"u": data.user_id, "c": data.csrf})

    def loads(self, cookie: str | None) -> SessionData | None:
        if not cookie:
            return None
        try:
            raw: Any = self._serializer.loads(cookie, max_age=int(self.max_age.total_seconds()))
        except BadSignature:
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("c"), str):
            return None
        user_id = raw.get("u")
        return SessionData(user_id if isinstance(user_id, int) else None, raw["c"])


def csrf_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())
