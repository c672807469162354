"""The dispatch worker threads.

Unlike :class:`concurrent.futures.ThreadPoolExecutor`, the threads are daemons and waiting for
results can be abandoned: a provider call stuck past shutdown must not keep the process alive.
By the time it is abandoned its claim has been handed to the in-doubt rule.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
Task = tuple[Callable[[], Any], "Future[Any]"]
POLL_SECONDS = 0.2


class WorkerPool:
    """``size`` daemon threads taking tasks from one queue."""

    def __init__(self, size: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._size, self._closed = size, False
        self._busy = 0
        self._idle = threading.Condition()
        for i in range(size):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def map(self, fn: Callable[[T], R], items: Iterable[T], give_up: threading.Event) -> list[R]:
        """``fn`` over ``items`` in parallel; results of the finished ones, in order. Stops
        waiting once ``give_up`` is set."""
        futures = [self.submit(partial(fn, item)) for item in items]
        pending = set(futures)
        while pending and not give_up.is_set():
            _, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
        return [f.result() for f in futures if f.done() and not f.cancelled()]

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no task is queued or running; False if ``timeout`` ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def shutdown(self) -> None:
        """Let the threads end once the queue is empty; later tasks are cancelled."""
        with self._idle:
            self._closed = True
        for _ in range(self._size):
            self._tasks.put(None)

    def submit(self, fn: Callable[[], R]) -> Future[R]:
        """Run ``fn`` on a worker; a pool already shut down hands back a cancelled future."""
        future: Future[R] = Future()
        with self._idle:
            if self._closed:
                future.cancel()
                return future
            self._busy += 1
        self._tasks.put((fn, future))
        return future

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            fn, future = task
            try:
                if future.set_running_or_notify_cancel():
                    future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
