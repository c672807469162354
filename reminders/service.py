"""The long-running service: APScheduler ticks (planning, dispatch, housekeeping).

APScheduler is only the in-process ticker with its memory job store; the database holds all
reminder state, so any number of processes can run this side by side.

Stopping is bounded: :meth:`Service.stop` stops the ticks without waiting for them, gives the
dispatcher a few seconds for provider calls in flight and then hands every claim back, so the
process exits well within 10 s of SIGTERM with no reminder left ``claimed``.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from reminders import queries
from reminders.dispatch import CLOSE_SECONDS, Dispatcher
from reminders.logs import get_logger
from reminders.migrate import describe, exclusive, is_unavailable
from reminders.planner import plan_pending
from reminders.runtime import Runtime

log = get_logger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)
JOB_BACKOFF_MAX = 60.0  # seconds between tries of a job that keeps failing


def process_owner() -> str:
    """A claim owner unique to this process (host, pid, random)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Service:
    """Runs the three periodic jobs until :meth:`stop`."""

    def __init__(self, runtime: Runtime, owner: str | None = None) -> None:
        self.runtime = runtime
        self.dispatcher = Dispatcher(runtime, owner or process_owner())
        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=dt.UTC,
        )
        self.stopped = threading.Event()
        self.signalled = threading.Event()
        self._closed = False
        self._previous_handlers: dict[int, Any] = {}

    def tick(self, now: dt.datetime | None = None) -> dict[str, int]:
        """One planning + housekeeping + dispatch pass (``reminders tick``)."""
        now = now or self.runtime.clock()
        planned = plan_pending(self.runtime, now=now)
        self.housekeeping(now)
        outcomes = self.dispatcher.run_once(now=now)
        return {"planned_groups": planned, **outcomes}

    def plan_job(self) -> None:
        # One replica plans at a time: a second one would only redo the same rows.
        with exclusive(self.runtime.engine, "planning") as mine:
            if mine:
                plan_pending(self.runtime, now=self.runtime.clock(), stop=self.stopped)

    def dispatch_job(self) -> None:
        self.dispatcher.run_once(now=self.runtime.clock())

    def housekeeping(self, now: dt.datetime | None = None) -> None:
        now = now or self.runtime.clock()
        grace = dt.timedelta(seconds=self.runtime.settings.in_doubt_grace_seconds)
        with self.runtime.sessions() as session, session.begin():
            released, doubtful = queries.release_stale(session, now=now, grace=grace)
            resolved = queries.resolve_in_doubt(session, now=now)
            self.runtime.metrics.due_depth.set(queries.due_depth(session, now))
        if released or doubtful or resolved:
            log.warning("leases_recovered", released=released, in_doubt=doubtful, resent=resolved)

    def start(self) -> None:
        s = self.runtime.settings
        self._hold_signals()
        first = dt.datetime.now(dt.UTC)
        jobs = (
            (self.plan_job, s.planning_interval, "planning"),
            (self.dispatch_job, s.dispatch_interval, "dispatch"),
            (self.housekeeping, s.housekeeping_interval, "housekeeping"),
        )
        for func, seconds, name in jobs:
            self.scheduler.add_job(
                _guarded(func, name), "interval", seconds=seconds, id=name, next_run_time=first
            )
        if s.sync_database_url is not None:  # the clinic's database, read every sync_interval
            from reminders.importing.sync import sync_job

            self.scheduler.add_job(
                _guarded(lambda: sync_job(self.runtime), "sync"),
                "interval",
                seconds=s.sync_interval,
                id="sync",
                next_run_time=first,
            )
        self.scheduler.start()
        log.info("service_started", owner=self.dispatcher.owner)

    def request_stop(self) -> None:
        """From a signal handler: claim and send nothing more from now on (the rest of
        :meth:`stop` follows once the HTTP server has closed its connections)."""
        self.stopped.set()
        self.dispatcher.stopping.set()

    def stop(self, timeout: float = CLOSE_SECONDS) -> None:
        """Stop ticking, give sends in flight up to ``timeout`` seconds, give back every claim."""
        if self._closed:
            return
        self._closed = True
        self.request_stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)  # a running job notices `stopped` and returns
        self.dispatcher.close(timeout)
        self._restore_signals()
        log.info("service_stopped", owner=self.dispatcher.owner)

    def run_until_signal(self) -> None:
        self.start()
        self.signalled.wait()
        self.stop()

    def _hold_signals(self) -> None:
        # While running, SIGTERM and SIGINT only ask for a stop. uvicorn hands a signal it
        # caught back to the previous handler when it returns; with the default handlers
        # SIGTERM would kill the process before stop() gives the claims back.
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signals(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        self.request_stop()
        self.signalled.set()


def _guarded(func: Callable[[], None], name: str) -> Callable[[], None]:
    return _Guarded(func, name)


class _Guarded:
    """Runs a job so a failure is logged and retried: at the next tick the first time, then
    after a pause that doubles up to a minute, so an outage is not hammered. A database that
    is away is one log line, not a traceback."""

    def __init__(self, func: Callable[[], None], name: str) -> None:
        self.func, self.name = func, name
        self.failures, self.resume_at = 0, 0.0

    def __call__(self) -> None:
        if time.monotonic() < self.resume_at:
            return
        try:
            self.func()
        except Exception as exc:
            self._failed(exc)
            return
        if self.failures:
            log.info("job_recovered", job=self.name, failures=self.failures)
        self.failures = 0

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        pause = 0 if self.failures == 1 else min(2.0 ** (self.failures - 1), JOB_BACKOFF_MAX)
        self.resume_at = time.monotonic() + pause
        details = {"job": self.name, "failures": self.failures, "retry_in": pause}
        if is_unavailable(exc):
            log.error("job_failed", error=describe(exc), **details)
        else:
            log.exception("job_failed", **details)
