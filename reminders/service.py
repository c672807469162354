"""The long-running service: APScheduler ticks (planning, dispatch, housekeeping).

APScheduler is only the in-process ticker with its memory job store; the database holds all
reminder state, so any number of processes can run this side by side.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import threading
import uuid
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from reminders import queries
from reminders.dispatch import Dispatcher
from reminders.logs import get_logger
from reminders.planner import plan_pending
from reminders.runtime import Runtime

log = get_logger(__name__)


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

    def tick(self, now: dt.datetime | None = None) -> dict[str, int]:
        """One planning + housekeeping + dispatch pass (``reminders tick``)."""
        now = now or self.runtime.clock()
        planned = plan_pending(self.runtime, now=now)
        self.housekeeping(now)
        outcomes = self.dispatcher.run_once(now=now)
        return {"planned_groups": planned, **outcomes}

    def plan_job(self) -> None:
        plan_pending(self.runtime, now=self.runtime.clock())

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
        self.scheduler.start()
        log.info("service_started", owner=self.dispatcher.owner)

    def stop(self) -> None:
        """Stop ticking, let in-flight sends finish, give back every unsent claim."""
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.dispatcher.stopping.set()
        self.scheduler.shutdown(wait=True)
        self.dispatcher.close()
        log.info("service_stopped", owner=self.dispatcher.owner)

    def run_until_signal(self) -> None:
        done = threading.Event()

        def _handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal_received", signal=signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
        self.start()
        done.wait()
        self.stop()


def _guarded(func: object, name: str) -> object:
    def run() -> None:
        try:
            func()  # type: ignore[operator]
        except Exception:
            log.exception("job_failed", job=name)

    return run
