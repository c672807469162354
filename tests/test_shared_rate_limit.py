"""One sender's rate across replicas: :class:`SharedRateLimiter` reserves send slots in the
database (``send_slots``), so two processes together keep the rate one would keep alone.
Two limiters on one database stand for two replicas here; ``tests/test_rate_limits_e2e.py``
runs two real ``reminders run`` processes against a fake Twilio."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from sqlalchemy import event, select

from reminders.db import make_engine, make_sessionmaker
from reminders.models import SendSlot
from reminders.ratelimit import RateLimiter, SharedRateLimiter

JITTER = 0.03  # thread scheduling noise between a slot and the caller waking up


def busiest(times: list[float], window: float = 1.0 - JITTER) -> int:
    """The most calls inside any ``window`` seconds (less the wake-up noise)."""
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times))


def together(limiters: list[SharedRateLimiter], calls: int, threads: int) -> list[float]:
    """``calls`` acquires per limiter from ``threads`` threads each; the moments they return."""
    moments: list[float] = []
    lock = threading.Lock()

    def work(limiter: SharedRateLimiter, n: int) -> None:
        for _ in range(n):
            limiter.acquire()
            with lock:
                moments.append(time.time())

    workers = [
        threading.Thread(target=work, args=(limiter, calls // threads))
        for limiter in limiters
        for _ in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    return moments


def test_two_replicas_together_keep_the_rate_of_one(runtime) -> None:
    rate = 20.0
    replicas = [SharedRateLimiter(runtime.sessions, "sms", rate) for _ in range(2)]
    started = time.time()
    moments = together(replicas, calls=20, threads=4)
    assert len(moments) == 40
    # Each replica alone would finish in half the time. Wake-ups come late on a loaded machine
    # (never early), which can bunch a few of them into one window.
    assert max(moments) - started >= (40 - 1) / rate - JITTER
    assert busiest(moments) <= rate + 2


def test_a_fast_sender_reserves_slots_in_blocks_not_a_statement_per_message(runtime) -> None:
    updates: list[str] = []

    def count(_conn, _cursor, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE SEND_SLOTS"):
            updates.append(statement)

    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        limiter = SharedRateLimiter(runtime.sessions, "email", 100.0)
        assert limiter.block == 10  # a tenth of a second's worth
        for _ in range(100):
            limiter.acquire()
        assert SharedRateLimiter(runtime.sessions, "sms", 1_000_000.0).block == 64
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)
    assert 10 <= len(updates) <= 12  # 100 slots in blocks of 10


def test_a_providers_hold_on_one_replica_holds_the_other(runtime) -> None:
    first = SharedRateLimiter(runtime.sessions, "whatsapp", 50.0)
    second = SharedRateLimiter(runtime.sessions, "whatsapp", 50.0)
    first.acquire()
    first.hold_until(time.monotonic() + 0.5)  # a 429 with Retry-After: 0.5
    started = time.monotonic()
    second.acquire()
    assert time.monotonic() - started >= 0.5 - JITTER
    with runtime.sessions() as session:
        assert session.scalar(select(SendSlot.next_slot)) >= time.time() - 0.5


def test_slots_left_unused_until_they_passed_are_not_spent_in_a_burst(runtime) -> None:
    limiter = SharedRateLimiter(runtime.sessions, "sms", 100.0)  # blocks of 10
    limiter.acquire()
    time.sleep(0.3)  # the other 9 slots of the block have passed
    started = time.monotonic()
    for _ in range(9):
        limiter.acquire()
    assert time.monotonic() - started >= 8 / 100.0 - JITTER


def test_a_short_blocks_slots_are_used_however_late_not_reserved_again(runtime) -> None:
    """A fast rate's block spans less than a slot's tolerated lateness: spending it late is no
    bigger a burst, and a sender slower than its rate does not reserve anew every time."""
    updates: list[str] = []

    def count(_conn, _cursor, statement: str, *_args: object) -> None:
        if statement.lstrip().upper().startswith("UPDATE SEND_SLOTS"):
            updates.append(statement)

    limiter = SharedRateLimiter(runtime.sessions, "sms", 1_000_000.0)  # 64 slots in 64 us
    limiter.acquire()
    time.sleep(2 * SharedRateLimiter.STALE_SECONDS)  # every other slot of the block has passed
    event.listen(runtime.engine, "before_cursor_execute", count)
    try:
        for _ in range(limiter.block - 1):
            limiter.acquire()
        assert updates == []
        limiter.acquire()  # the block is spent: a new one
    finally:
        event.remove(runtime.engine, "before_cursor_execute", count)
    assert len(updates) == 1


def test_without_the_database_a_replica_spaces_its_own_sends(runtime) -> None:
    away = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/nowhere")  # nothing listens
    try:
        limiter = SharedRateLimiter(make_sessionmaker(away), "sms", 20.0)
        moments = together([limiter], calls=10, threads=2)
    finally:
        away.dispose()
    assert len(moments) == 10
    assert max(moments) - min(moments) >= 9 / 20.0 - JITTER


def test_a_long_sms_takes_a_slot_per_segment_in_both_limiters(runtime) -> None:
    """Twilio counts a sender's rate in segments: a 3-segment SMS holds the next one back
    three intervals."""
    shared = SharedRateLimiter(runtime.sessions, "sms", 20.0)
    started = time.monotonic()
    shared.acquire(cost=3)
    shared.acquire()
    assert time.monotonic() - started >= 3 / 20.0 - JITTER

    now = [100.0]
    slept: list[float] = []
    local = RateLimiter(10.0, clock=lambda: now[0], sleep=slept.append)
    local.acquire(cost=3)
    assert local.acquire() == pytest.approx(0.3)  # seconds due: three slots of 0.1 s


def test_concurrent_long_sms_each_take_their_slots_in_a_row(runtime) -> None:
    """Three 2-segment SMS from three threads at once: each takes two slots in a row, so they
    go 2 intervals apart. Before, their slots interleaved (t0, t0+1, t0+2...) and the second
    went 1 interval after the first: two segments a second over the rate."""
    rate = 10.0
    shared = SharedRateLimiter(runtime.sessions, "sms", rate)
    moments: list[float] = []
    lock, ready = threading.Lock(), threading.Barrier(3)

    def send() -> None:
        ready.wait()
        shared.acquire(cost=2)
        with lock:
            moments.append(time.time())

    workers = [threading.Thread(target=send) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    gaps = [b - a for a, b in itertools.pairwise(sorted(moments))]
    assert len(gaps) == 2
    assert min(gaps) >= 2 / rate - JITTER, gaps
