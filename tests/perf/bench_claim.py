"""Figure 3: claiming a batch of due reminders among millions of rows.

The instant is chosen so that exactly ``sizes.due`` reminders are due (the clinic's earliest
pending ones): the backlog a dispatcher finds after a pause. Batches are claimed one after the
other through :func:`reminders.queries.claim_due`, each in its own committed transaction, as the
dispatcher does; the time of each includes the commit. The plan printed is ``EXPLAIN ANALYZE``
of the very statement ``claim_due`` sends (captured from the engine), run in a transaction that
is rolled back.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event, func, select

from reminders import queries
from reminders.models import Reminder, ReminderStatus
from reminders.runtime import Runtime
from tests.perf.context import Context
from tests.perf.databases import runtime_for
from tests.perf.report import ms, percentile

TARGET_SECONDS = 0.020
INDEX = "ix_reminders_upcoming"
LEASE = dt.timedelta(minutes=5)


def run(ctx: Context, backend: str) -> None:
    clinic = ctx.clinic(backend, history=True)
    rt = runtime_for(clinic.url)
    try:
        size, batch = _table_size(rt), ctx.sizes.claim_batch
        at = _instant_with_due(rt, ctx.sizes.due)
        plan = explain_claim(rt, at, batch)
        ctx.report.note(f"claim_due plan ({backend}), {size:,} rows, {ctx.sizes.due:,} due:")
        ctx.report.note(plan)
        times = [_claim(rt, at, batch, f"perf-{i}") for i in range(ctx.sizes.due // batch)]
    finally:
        rt.close()
    claimed = [n for n, _ in times]
    seconds = [t for _, t in times]
    ctx.report.note("batches, in order: " + ", ".join(ms(t) for t in seconds))
    on_index = INDEX in plan
    worst = max(seconds)
    ctx.report.figure(
        3,
        f"claim a batch of {batch} due among {size:,} reminders",
        f"median {ms(percentile(seconds, 50))}, max {ms(worst)} over {len(times)} batches "
        f"(claimed {min(claimed)}-{max(claimed)} each); "
        + ("on " + INDEX if on_index else "NOT on an index"),
        f"<= {ms(TARGET_SECONDS)} per batch, on an index",
        worst <= TARGET_SECONDS and on_index and min(claimed) == batch,
        backend,
    )


def _table_size(rt: Runtime) -> int:
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Reminder)) or 0)


def _instant_with_due(rt: Runtime, due: int) -> dt.datetime:
    """The instant at which exactly the ``due`` earliest pending reminders are due."""
    with rt.sessions() as session:
        at = session.scalar(
            select(Reminder.next_attempt_at)
            .where(Reminder.status == ReminderStatus.PENDING)
            .order_by(Reminder.next_attempt_at)
            .offset(due - 1)
            .limit(1)
        )
    if at is None:
        raise RuntimeError(f"fewer than {due} pending reminders in the clinic")
    return at


def _claim(rt: Runtime, at: dt.datetime, batch: int, owner: str) -> tuple[int, float]:
    started = time.perf_counter()
    with rt.sessions() as session, session.begin():
        ids = queries.claim_due(session, owner, now=at, limit=batch, lease=LEASE)
    return len(ids), time.perf_counter() - started


def explain_claim(rt: Runtime, at: dt.datetime, batch: int) -> str:
    """The plan of the claim statement as the backend runs it (rolled back)."""
    updates = captured(rt.engine, lambda sql: sql.lstrip().upper().startswith("UPDATE"))
    with updates as seen, rt.sessions() as session, session.begin() as transaction:
        queries.claim_due(session, "perf-explain", now=at, limit=batch, lease=LEASE)
        transaction.rollback()
    if not seen:
        raise RuntimeError("claim_due sent no UPDATE")
    sql, params = seen[0]
    with rt.engine.connect() as conn:
        prefix = (
            "EXPLAIN (ANALYZE, BUFFERS) "
            if conn.dialect.name == "postgresql"
            else "EXPLAIN QUERY PLAN "
        )
        rows = conn.exec_driver_sql(prefix + sql, params).all()
        conn.rollback()
    return "\n".join(" | ".join(str(c) for c in row) for row in rows)


@contextmanager
def captured(engine: Engine, wanted: Callable[[str], bool]) -> Any:
    """The (statement, parameters) the engine sends while inside, those ``wanted`` keeps."""
    seen: list[tuple[str, Any]] = []

    def listen(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if wanted(sql):
            seen.append((sql, params))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listen)
