"""Figure 2: planning at steady state costs what changed, not what is stored.

The clinic is at steady state (every treatment planned). Then ``sizes.changed`` (patient,
protocol) groups change the ways they do in a clinic: 70% get a new treatment (the next
injection: a new cycle that supersedes the old one), 20% have their latest treatment's date
corrected, 10% of patients change something that matters for planning (travel lead), which
flags all their treatments. :func:`reminders.planner.plan_pending` then runs as the service's
planning job does; the same changes are timed on the big clinic and on a small one.
"""

from __future__ import annotations

import datetime as dt
import random
import time

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from reminders.models import Patient, Reminder, Treatment
from reminders.planner import mark_patient_changed, plan_pending
from reminders.runtime import Runtime
from tests.perf.clinic import Clinic, build_clinic
from tests.perf.context import Context
from tests.perf.databases import runtime_for

TARGET_SECONDS = 1.0
TARGET_RATIO = 2.0  # ten times the treatments may cost at most twice the time


def run(ctx: Context, backend: str) -> None:
    s = ctx.sizes
    with ctx.database(backend, "planning_small") as url:
        rt = runtime_for(url)
        small = build_clinic(
            url,
            patients=s.small_treated,
            treated=s.small_treated,
            per_patient=s.treatments_per_patient,
            now=dt.datetime.now(dt.UTC).replace(microsecond=0),
            protocols=rt.protocols,
            timing=rt.timing,
            history=0,
        )
        rt.close()
        small_seconds, _ = measure(ctx, small, backend)
    big = ctx.clinic(backend)
    big_seconds, idle = measure(ctx, big, backend)
    ratio = big_seconds / small_seconds if small_seconds else float("inf")
    ctx.report.figure(
        2,
        f"planning {s.changed:,} changed groups among {big.base_treatments:,} treatments",
        f"{big_seconds:.2f} s ({s.changed / big_seconds:,.0f} groups/s); nothing changed: "
        f"{idle * 1000:.0f} ms",
        f"<= {TARGET_SECONDS:.0f} s",
        big_seconds <= TARGET_SECONDS,
        backend,
    )
    ctx.report.figure(
        2,
        f"planning cost, {big.base_treatments:,} against {small.base_treatments:,} treatments",
        f"{big_seconds:.2f} s against {small_seconds:.2f} s: x{ratio:.2f}",
        f"<= x{TARGET_RATIO:.0f} for x{big.base_treatments / small.base_treatments:.0f} the rows",
        ratio <= TARGET_RATIO,
        backend,
    )


def measure(ctx: Context, clinic: Clinic, backend: str) -> tuple[float, float]:
    """(seconds for the changed groups, seconds for a pass with nothing changed)."""
    rt = runtime_for(clinic.url)
    try:
        idle = _timed_plan(rt, clinic.now)[1]
        groups = change(rt, clinic, ctx.sizes.changed, random.Random(9))
        before = _reminder_count(rt)
        planned, seconds = _timed_plan(rt, clinic.now)
        written = _reminder_count(rt) - before
    finally:
        rt.close()
    if planned != groups:
        raise RuntimeError(f"planned {planned} groups, {groups} were changed")
    ctx.report.note(
        f"{backend}, {clinic.base_treatments:,} treatments: {planned:,} groups planned in "
        f"{seconds:.2f} s, {written:,} new reminders; idle pass {idle * 1000:.0f} ms"
    )
    return seconds, idle


def _timed_plan(rt: Runtime, now: dt.datetime) -> tuple[int, float]:
    started = time.perf_counter()
    groups = plan_pending(rt, now=now)
    return groups, time.perf_counter() - started


def _reminder_count(rt: Runtime) -> int:
    with rt.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Reminder)) or 0)


def change(rt: Runtime, clinic: Clinic, count: int, rng: random.Random) -> int:
    """Change ``count`` groups (see the module docstring); returns the number of groups."""
    chosen = rng.sample(range(1, clinic.treated + 1), min(count, clinic.treated))
    new, fixed = len(chosen) * 7 // 10, len(chosen) * 2 // 10
    with rt.sessions() as session, session.begin():
        latest = _latest_treatments(session, chosen)
        session.execute(
            insert(Treatment),
            [
                {
                    "external_id": f"NEW-{p}",
                    "patient_id": p,
                    "protocol": latest[p].protocol,
                    "administered_on": clinic.today - dt.timedelta(days=rng.randint(0, 2)),
                    "product": "onabotulinumtoxinA",
                    "units": 155,
                    "location": "Istanbul",
                    "needs_plan": True,
                }
                for p in chosen[:new]
            ],
        )
        for p in chosen[new : new + fixed]:
            moved = latest[p].administered_on - dt.timedelta(days=rng.choice((-3, -2, 2, 3)))
            session.execute(
                update(Treatment)
                .where(Treatment.id == latest[p].id)
                .values(administered_on=moved, needs_plan=True)
            )
        for p in chosen[new + fixed :]:
            session.execute(update(Patient).where(Patient.id == p).values(travel_lead_days=7))
            mark_patient_changed(session, p)
    return len(chosen)


def _latest_treatments(session: Session, patients: list[int]) -> dict[int, Treatment]:
    rows = session.scalars(
        select(Treatment)
        .where(Treatment.patient_id.in_(patients))
        .order_by(Treatment.patient_id, Treatment.administered_on)
    )
    return {t.patient_id: t for t in rows}  # the last one per patient wins
