"""What the hostile-input tests share: nasty values, hypothesis strategies and profiles, and the
checks that a refusal is clear (one line, no traceback) and that nothing logged an exception."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from structlog.testing import capture_logs

from reminders.runtime import Runtime

T = TypeVar("T")
FEW = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SOME = settings(FEW, max_examples=60)
MANY = settings(FEW, max_examples=200)

NASTY = [
    "", " ", "\t", "\r\n", "\x00", "\x1b[31m", "\u202e", "\ufeff", "🙂" * 40, "ı" * 300,
    "=cmd|' /C calc'!A0", "'; DROP TABLE patients; --", "<script>alert(1)</script>",
    "{{ 7 * 7 }}", "{% raw %}", "../../etc/passwd", "%s%s%n", "9" * 400, "x" * 3000,
    "ｙｅｓ", "yes\x00", "NaN", "Infinity", "-1", "1e309", "0x1F", "2026-02-30", "0000-00-00",
    "9999-12-31", "2026-13-01", "+00000000000", "+90 543 197 43 20 ext 5", "ayşe@ëxample.com",
    "a@b", "@", '"', ",", ";", "|", "sms|sms|email", "fax", "Europe/../../etc", "zz_ZZ",
    "Etc/GMT+14", "whatsapp:+905321234567", "yes|no", "1.005", "-0", "1,5",
]  # fmt: skip
hostile_text = st.one_of(st.sampled_from(NASTY), st.text(max_size=30))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=6,
)


@contextmanager
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails if anything logged an exception (structlog captured directly or through logging)."""
    caplog.clear()
    with caplog.at_level(logging.INFO), capture_logs() as captured:
        yield
    events = captured + [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    broken = [e for e in events if e.get("exc_info") or e.get("exception")]
    broken += [{"record": r.getMessage()} for r in caplog.records if r.exc_info]
    assert broken == []


def one_line(message: str) -> bool:
    """A clear message: something, on one line, no traceback."""
    return bool(message.strip()) and "\n" not in message and "Traceback" not in message


def attempt(call: Callable[[], T], *errors: type[Exception]) -> tuple[T | None, str | None]:
    """``call()``'s result, or the message of one of ``errors`` it raised."""
    try:
        return call(), None
    except errors as refused:
        return None, str(refused)


def count(runtime: Runtime, model: type) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)
