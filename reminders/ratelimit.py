"""A messages-per-second limit per sender, shared by all dispatch workers of a process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


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

    def acquire(self, stop: threading.Event | None = None) -> float:
        """Wait for this caller's slot (or until ``stop`` is set); returns the seconds due.

        A hold (``hold_until``) that arrives while a caller waits for its slot still applies
        to it: on waking, the caller checks the hold and takes a new slot after it.
        """
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
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
                self._next = slot + self.interval

    def hold_until(self, monotonic_at: float) -> None:
        """The provider said stop (429): nobody sends on this sender before ``monotonic_at``."""
        with self._lock:
            self._next = max(self._next, monotonic_at)
            self._held_until = max(self._held_until, monotonic_at)
