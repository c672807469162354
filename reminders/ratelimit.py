"""A messages-per-second limit per sender: :class:`RateLimiter` for the dispatch workers of
one process, :class:`SharedRateLimiter` for every replica on one database."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from functools import cache
from typing import Any, Protocol, cast

from sqlalchemy import Table, Update, bindparam, func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from reminders.logs import get_logger
from reminders.models import SendSlot

log = get_logger(__name__)


class Limiter(Protocol):
    """What dispatch needs of a sender's limit."""

    def acquire(self, stop: threading.Event | None = None, cost: int = 1) -> float: ...

    def hold_until(self, monotonic_at: float) -> None: ...


_SLOTS = cast(Table, SendSlot.__table__)


@cache
def _move_statement(postgres: bool) -> Update:
    """``next_slot = max(next_slot, s_at) + s_advance`` for ``s_channel``, returning it: a
    Core statement built once (the ORM's bulk update, built per call, cost more Python than
    the round trip it makes)."""
    greatest = func.greatest if postgres else func.max  # SQLite's max() of two values
    at_least = bindparam("s_at", type_=_SLOTS.c.next_slot.type)
    advance = bindparam("s_advance", type_=_SLOTS.c.next_slot.type)
    return (
        update(_SLOTS)
        .where(_SLOTS.c.channel == bindparam("s_channel"))
        .values(next_slot=greatest(_SLOTS.c.next_slot, at_least) + advance)
        .returning(_SLOTS.c.next_slot)
    )


class RateLimiter:
    """Spaces calls at least ``1/rate`` seconds apart (a token bucket of size one).

    ``acquire`` reserves the next free slot under a lock and sleeps outside it, so several
    threads queue fairly without holding the lock while they wait.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate
        self._clock, self._sleep = clock, sleep
        self._next = 0.0
        self._held_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, stop: threading.Event | None = None, cost: int = 1) -> float:
        """Wait for this caller's slot (or until ``stop`` is set); returns the seconds due.
        ``cost``: how many slots the call takes (an SMS of 3 segments counts 3 at Twilio).

        A hold (``hold_until``) that arrives while a caller waits for its slot still applies
        to it: on waking, the caller checks the hold and takes a new slot after it.
        """
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval * cost
        waited = 0.0
        while True:
            wait = slot - self._clock()
            if wait > 0:
                waited += wait
                if stop is not None:
                    if stop.wait(wait):
                        return waited
                else:
                    self._sleep(wait)
            with self._lock:
                if self._held_until <= slot:
                    return waited
                slot = max(self._held_until, self._next)
                self._next = slot + self.interval * cost

    def hold_until(self, monotonic_at: float) -> None:
        """The provider said stop (429): nobody sends on this sender before ``monotonic_at``."""
        with self._lock:
            self._next = max(self._next, monotonic_at)
            self._held_until = max(self._held_until, monotonic_at)


class SharedRateLimiter:
    """A sender's rate kept across every process on one database (``send_slots``).

    A slot is reserved with one atomic ``UPDATE ... RETURNING``:
    ``next_slot = max(next_slot, now) + k / rate``, on PostgreSQL in autocommit (the statement
    commits itself: no BEGIN and COMMIT round trips). A process reserves up to
    ``BLOCK_SECONDS`` worth of slots (``BLOCK_MAX`` at most) at a time, so a fast sender costs
    one statement per block, not per message. A reserved slot still unused well after it has
    passed (``STALE_SECONDS``) is dropped when its block spans longer than that: spending the
    block's late slots at once would be a bigger burst than a slot's tolerated lateness
    allows. A shorter block (a fast rate: 64 slots of 1/10,000 s) is used up however late: all
    of it at once is no bigger a burst than that tolerance, and a sender slower than its rate
    would otherwise see its slots go stale and reserve anew every ``STALE_SECONDS``, its
    workers queued behind each reservation. Slots are wall-clock (Unix) times: replicas' clocks
    must agree to a fraction of the interval, as NTP keeps them. A provider's hold (429) moves
    the shared slot too, so every replica waits. If the database cannot be reached, the
    process spaces its own sends.
    """

    BLOCK_SECONDS = 0.1  # a block holds up to this long of a sender's slots...
    BLOCK_MAX = 64  # ...and at most this many: a block a process cannot use holds back others
    STALE_SECONDS = 0.05  # a reserved slot this far in the past is dropped, not used

    def __init__(
        self,
        sessions: Callable[[], Session],
        channel: str,
        rate: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.channel, self.interval = channel, 1.0 / rate
        self.block = max(1, min(int(rate * self.BLOCK_SECONDS), self.BLOCK_MAX))
        # How late a reserved slot may still be used (forever: see the class's note).
        short = self.block * self.interval <= self.STALE_SECONDS
        self._lateness = float("inf") if short else max(self.interval, self.STALE_SECONDS)
        self._sessions, self._clock, self._monotonic = sessions, clock, monotonic
        self._slots: deque[float] = deque()  # reserved for this process, oldest first
        self._held_until = 0.0
        self._local_next = 0.0  # when the database is away
        self._lock = threading.Lock()
        self._taking = threading.Lock()  # one caller takes its ``cost`` slots at a time

    def acquire(self, stop: threading.Event | None = None, cost: int = 1) -> float:
        """Wait for this caller's slot (or until ``stop`` is set); returns the seconds waited.
        ``cost`` slots are taken (SMS segments); the call goes at the first. A hold that
        arrives while the caller waits voids its slot: it takes one after it."""
        waited = 0.0
        while True:
            with self._taking:  # a caller's slots in a row: none of another's in between
                slot = min(self._next_slot() for _ in range(max(cost, 1)))
            wait = slot - self._clock()
            if wait > 0:
                waited += wait
                if stop is None:
                    time.sleep(wait)
                elif stop.wait(wait):
                    return waited
            with self._lock:
                if self._held_until <= slot:
                    return waited

    def hold_until(self, monotonic_at: float) -> None:
        """The provider said stop (429): no replica sends on this sender before then."""
        until = self._clock() + (monotonic_at - self._monotonic())
        with self._lock:
            self._held_until = max(self._held_until, until)
            self._local_next = max(self._local_next, until)
            while self._slots and self._slots[0] < until:
                self._slots.popleft()
        try:
            with self._sessions() as session, session.begin():
                self._move(session, until)
        except SQLAlchemyError as exc:
            log.warning("shared_hold_not_recorded", channel=self.channel, error=type(exc).__name__)

    def _next_slot(self) -> float:
        with self._lock:
            now = self._clock()
            while self._slots and self._slots[0] < now - self._lateness:
                self._slots.popleft()  # passed unused: sending on it now would be a burst
            if not self._slots:
                self._slots.extend(self._reserve(now))
            return self._slots.popleft()

    def _reserve(self, now: float) -> list[float]:
        count = self.block
        try:
            with self._sessions() as session, session.begin():
                # A new connection can take a while: `now` comes after.
                session.connection(execution_options=self._options(session))
                now = self._clock()
                at_least, advance = max(now, self._held_until), count * self.interval
                end = self._move(session, at_least, advance)
                if end is None:  # the first send on this sender
                    session.execute(self._first(session, now))
                    end = self._move(session, at_least, advance)
        except SQLAlchemyError as exc:
            log.warning("shared_rate_unavailable", channel=self.channel, error=type(exc).__name__)
            slot = max(now, self._local_next, self._held_until)
            self._local_next = slot + self.interval
            return [slot]
        if end is None:  # cannot be: the row was just inserted (by this process or another)
            raise RuntimeError(f"no send slot row for {self.channel}")
        start = end - count * self.interval
        return [start + i * self.interval for i in range(count)]

    @staticmethod
    def _options(session: Session) -> dict[str, Any]:
        """On PostgreSQL, autocommit: each statement (the move, the first insert) is atomic on
        its own and commits itself, sparing the BEGIN and COMMIT round trips."""
        if session.get_bind().dialect.name == "postgresql":
            return {"isolation_level": "AUTOCOMMIT"}
        return {}

    def _move(self, session: Session, at_least: float, advance: float = 0.0) -> float | None:
        """Move this sender's next slot to at least ``at_least``, then ``advance`` seconds on;
        returns where it ends (None: no row for the sender yet)."""
        postgres = session.get_bind().dialect.name == "postgresql"
        params = {"s_channel": self.channel, "s_at": at_least, "s_advance": advance}
        end: float | None = session.scalar(_move_statement(postgres), params)
        return end

    def _first(self, session: Session, now: float) -> Any:
        postgres = session.get_bind().dialect.name == "postgresql"
        insert = pg_insert if postgres else sqlite_insert
        return insert(SendSlot).values(channel=self.channel, next_slot=now).on_conflict_do_nothing()
