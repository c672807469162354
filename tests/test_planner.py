"""Planning against the database: superseding, idempotent re-planning, corrections, opt-outs."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from sqlalchemy import select, update

from reminders import consents
from reminders.models import Reminder, Treatment
from reminders.planner import mark_patient_changed, plan_group, plan_pending
from reminders.runtime import Runtime
from tests import factories


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


JAN_10 = utc("2026-01-10T09:00")  # administered 2026-01-05 plans Mar 16, Mar 30, Apr 28


def steps(rt: Runtime, treatment_id: int) -> dict[str, tuple[str, str | None, dt.datetime]]:
    """step -> (status, reason, due_at) of one treatment's reminders."""
    with rt.sessions() as s:
        found = s.scalars(select(Reminder).where(Reminder.treatment_id == treatment_id))
        return {r.step: (r.status, r.reason, r.due_at) for r in found}


def snapshot(rt: Runtime) -> list[tuple[Any, ...]]:
    """Every reminder column, to prove a re-plan wrote nothing."""
    with rt.sessions() as s:
        cols = Reminder.__table__.columns
        return [tuple(row) for row in s.execute(select(*cols).order_by(Reminder.id))]


def add_treatment(rt: Runtime, administered: str, patient_id: int | None = None, **kw: Any) -> int:
    with rt.sessions() as s, s.begin():
        if patient_id is None:
            patient_id = factories.patient(s, **kw).id
        p = s.get_one(factories.Patient, patient_id)
        return factories.treatment(s, p, dt.date.fromisoformat(administered)).id


def patient_of(rt: Runtime, treatment_id: int) -> int:
    with rt.sessions() as s:
        return s.get_one(Treatment, treatment_id).patient_id


def test_a_new_treatment_plans_its_cycle_in_the_patients_morning(runtime) -> None:
    t = add_treatment(runtime, "2026-01-05")
    assert plan_pending(runtime, now=JAN_10) == 1
    assert steps(runtime, t) == {
        "upcoming": ("pending", None, utc("2026-03-16T07:00")),
        "due": ("pending", None, utc("2026-03-30T07:00")),
        "last_call": ("pending", None, utc("2026-04-28T07:00")),
    }


def test_planning_the_same_treatment_again_writes_nothing(runtime) -> None:
    t = add_treatment(runtime, "2026-01-05")
    plan_pending(runtime, now=JAN_10)
    before, patient_id = snapshot(runtime), patient_of(runtime, t)
    with runtime.sessions() as s, s.begin():
        mark_patient_changed(s, patient_id)
        written = plan_group(s, runtime, patient_id, "chronic_migraine", now=JAN_10)
    assert written == 0
    assert snapshot(runtime) == before
    assert plan_pending(runtime, now=JAN_10) == 0  # and nothing is left flagged


def test_a_new_treatment_cancels_the_unsent_reminders_of_the_previous_cycle(runtime) -> None:
    old = add_treatment(runtime, "2026-01-05")
    plan_pending(runtime, now=JAN_10)
    with runtime.sessions() as s, s.begin():  # the first step already went out
        s.execute(
            update(Reminder)
            .where(Reminder.treatment_id == old, Reminder.step == "upcoming")
            .values(status="sent")
        )
    new = add_treatment(runtime, "2026-03-20", patient_of(runtime, old))
    plan_pending(runtime, now=utc("2026-03-20T12:00"))
    assert {k: v[:2] for k, v in steps(runtime, old).items()} == {
        "upcoming": ("sent", None),
        "due": ("cancelled", "superseded"),
        "last_call": ("cancelled", "superseded"),
    }
    assert steps(runtime, new)["due"] == ("pending", None, utc("2026-06-12T07:00"))  # +84


def test_an_older_treatment_recorded_late_does_not_supersede_the_latest(runtime) -> None:
    latest = add_treatment(runtime, "2026-01-05")
    plan_pending(runtime, now=JAN_10)
    older = add_treatment(runtime, "2025-10-01", patient_of(runtime, latest))
    plan_pending(runtime, now=JAN_10)
    assert {v[0] for v in steps(runtime, latest).values()} == {"pending"}
    assert steps(runtime, older) == {}


def test_deleting_the_latest_treatment_brings_back_the_previous_cycle(runtime) -> None:
    old = add_treatment(runtime, "2026-01-05")
    plan_pending(runtime, now=JAN_10)
    new = add_treatment(runtime, "2026-01-08", patient_of(runtime, old))  # entered by mistake
    plan_pending(runtime, now=JAN_10)
    with runtime.sessions() as s, s.begin():
        s.execute(
            update(Treatment).where(Treatment.id == new).values(deleted_at=JAN_10, needs_plan=True)
        )
    plan_pending(runtime, now=JAN_10)
    assert {v[:2] for v in steps(runtime, new).values()} == {("cancelled", "deleted")}
    assert {v[:2] for v in steps(runtime, old).values()} == {("pending", None)}


def test_a_corrected_date_moves_the_reminders_and_cancels_a_step_now_past(runtime) -> None:
    t = add_treatment(runtime, "2026-01-05")
    plan_pending(runtime, now=JAN_10)
    now = utc("2026-03-04T07:00")
    with runtime.sessions() as s, s.begin():  # really given on Dec 20: upcoming was Feb 28
        s.execute(
            update(Treatment)
            .where(Treatment.id == t)
            .values(administered_on=dt.date(2025, 12, 20), needs_plan=True)
        )
    plan_pending(runtime, now=now)
    assert steps(runtime, t) == {
        "upcoming": ("cancelled", "replanned", utc("2026-03-16T07:00")),
        "due": ("pending", None, utc("2026-03-14T07:00")),
        "last_call": ("pending", None, utc("2026-04-12T07:00")),
    }


def test_a_replan_leaves_a_reminder_that_is_being_retried_alone(runtime) -> None:
    t = add_treatment(runtime, "2026-01-07")  # upcoming on Mar 18
    plan_pending(runtime, now=utc("2026-03-18T08:00"))
    retry_at, patient_id = utc("2026-03-19T07:30"), patient_of(runtime, t)
    with runtime.sessions() as s, s.begin():  # a transient failure moved it to tomorrow
        s.execute(
            update(Reminder)
            .where(Reminder.treatment_id == t, Reminder.step == "upcoming")
            .values(next_attempt_at=retry_at, attempts=1)
        )
        mark_patient_changed(s, patient_id)
    plan_pending(runtime, now=utc("2026-03-19T07:00"))  # its date is now yesterday
    with runtime.sessions() as s:
        row = s.scalars(
            select(Reminder).where(Reminder.treatment_id == t, Reminder.step == "upcoming")
        ).one()
    assert (row.status, row.next_attempt_at, row.attempts) == ("pending", retry_at, 1)


def test_an_inactive_patient_gets_nothing_and_deactivating_cancels(runtime) -> None:
    quiet = add_treatment(runtime, "2026-01-05", active=False)
    active = add_treatment(runtime, "2026-01-05")
    plan_pending(runtime, now=JAN_10)
    assert steps(runtime, quiet) == {}
    patient_id = patient_of(runtime, active)
    with runtime.sessions() as s, s.begin():
        s.get_one(factories.Patient, patient_id).active = False
        mark_patient_changed(s, patient_id)
    plan_pending(runtime, now=JAN_10)
    assert {v[:2] for v in steps(runtime, active).values()} == {("cancelled", "inactive")}


def test_a_fully_opted_out_patient_gets_nothing(runtime) -> None:
    with runtime.sessions() as s, s.begin():
        p = factories.patient(s, channels="sms|email")
        for channel in ("sms", "email"):
            consents.opt_out(s, p, channel, source="test", now=JAN_10)
        t = factories.treatment(s, p, dt.date(2026, 1, 5)).id
    plan_pending(runtime, now=JAN_10)
    assert steps(runtime, t) == {}


def test_a_patient_without_consent_gets_nothing(runtime) -> None:
    t = add_treatment(runtime, "2026-01-05", channels="sms|email", consent=[])
    plan_pending(runtime, now=JAN_10)
    assert steps(runtime, t) == {}


def test_opting_out_of_one_channel_still_plans_on_the_other(runtime) -> None:
    with runtime.sessions() as s, s.begin():
        p = factories.patient(s, channels="sms|email")
        consents.opt_out(s, p, "sms", source="test", now=JAN_10)
        t = factories.treatment(s, p, dt.date(2026, 1, 5)).id
    plan_pending(runtime, now=JAN_10)
    assert len(steps(runtime, t)) == 3


def test_opting_out_of_everything_cancels_and_start_brings_the_reminders_back(runtime) -> None:
    t = add_treatment(runtime, "2026-01-05", channels="sms")
    plan_pending(runtime, now=JAN_10)
    patient_id = patient_of(runtime, t)
    with runtime.sessions() as s, s.begin():
        p = s.get_one(factories.Patient, patient_id)
        consents.opt_out(s, p, "sms", source="sms_stop", now=JAN_10)
        mark_patient_changed(s, p.id)
    plan_pending(runtime, now=JAN_10)
    assert {v[:2] for v in steps(runtime, t).values()} == {("cancelled", "no_channel")}
    patient_id = patient_of(runtime, t)
    with runtime.sessions() as s, s.begin():
        p = s.get_one(factories.Patient, patient_id)
        consents.opt_in(s, p, "sms", source="sms_start", now=JAN_10)
        mark_patient_changed(s, p.id)
    plan_pending(runtime, now=JAN_10)
    assert {v[:2] for v in steps(runtime, t).values()} == {("pending", None)}


def test_a_changed_time_zone_moves_the_pending_reminders(runtime) -> None:
    t = add_treatment(runtime, "2026-01-05")
    plan_pending(runtime, now=JAN_10)
    patient_id = patient_of(runtime, t)
    with runtime.sessions() as s, s.begin():
        p = s.get_one(factories.Patient, patient_id)
        p.timezone = "Asia/Tokyo"
        mark_patient_changed(s, p.id)
    plan_pending(runtime, now=JAN_10)
    assert steps(runtime, t)["due"] == ("pending", None, utc("2026-03-30T01:00"))


def test_a_planning_pass_that_is_asked_to_stop_leaves_the_work_for_the_next(runtime) -> None:
    t = add_treatment(runtime, "2026-01-05")
    stop = threading.Event()
    stop.set()
    assert plan_pending(runtime, now=JAN_10, stop=stop) == 0
    assert steps(runtime, t) == {}
    assert plan_pending(runtime, now=JAN_10) == 1
