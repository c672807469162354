"""Planning against the database: superseding, idempotent re-planning, corrections, opt-outs."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, select, update

from reminders import consents, plan_store, planner
from reminders.importing.bulk import reminder_row
from reminders.models import Channel, Reminder, Treatment
from reminders.plan_store import contacts_by_id
from reminders.planner import mark_patient_changed, plan_group, plan_groups, plan_pending
from reminders.planning import PlannedReminder, usable_channels
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


# Set-based planning: a batch of groups is planned as each group alone, with a fixed number of
# statements.

MAR_4 = utc("2026-03-04T07:00")


def changed_clinic(rt: Runtime) -> dict[str, int]:
    """Groups planned at JAN_10, then changed every way planning knows, left flagged; returns
    treatment ids by role."""
    t: dict[str, int] = {}
    t["corrected"] = add_treatment(rt, "2026-01-05")
    t["old"] = add_treatment(rt, "2026-01-05")
    t["previous"] = add_treatment(rt, "2026-01-05")
    t["mistake"] = add_treatment(rt, "2026-01-08", patient_of(rt, t["previous"]))
    t["quiet"] = add_treatment(rt, "2026-01-05")
    t["opted_out"] = add_treatment(rt, "2026-01-05", channels="sms")
    t["travels"] = add_treatment(rt, "2026-01-05")
    t["edited"] = add_treatment(rt, "2026-01-05")
    t["sent"] = add_treatment(rt, "2026-01-05")
    with rt.sessions() as s, s.begin():
        s.execute(
            update(Treatment)
            .where(Treatment.id == t["edited"])
            .values(protocol="cervical_dystonia", needs_plan=True)
        )
        s.execute(
            update(Treatment)
            .where(Treatment.id.in_([t["previous"], t["mistake"]]))
            .values(needs_plan=False)
        )
    plan_groups_of(rt, [t["previous"]], JAN_10)  # then the mistake supersedes it
    with rt.sessions() as s, s.begin():
        s.execute(update(Treatment).where(Treatment.id == t["mistake"]).values(needs_plan=True))
    plan_groups_of(rt, list(t.values()), JAN_10)
    t["fresh"] = add_treatment(rt, "2026-02-20")
    with rt.sessions() as s, s.begin():
        p = factories.patient(s)
        t["unknown"] = factories.treatment(
            s, p, dt.date(2026, 2, 20), protocol="no_such_protocol"
        ).id
    t["new"] = add_treatment(rt, "2026-03-01", patient_of(rt, t["old"]))
    patients = {r: patient_of(rt, t[r]) for r in ("quiet", "opted_out", "travels", "sent")}
    with rt.sessions() as s, s.begin():
        s.execute(
            update(Treatment)
            .where(Treatment.id == t["corrected"])
            .values(administered_on=dt.date(2025, 12, 20), needs_plan=True)
        )
        s.execute(update(Treatment).where(Treatment.id == t["mistake"]).values(deleted_at=JAN_10))
        s.execute(
            update(Reminder)
            .where(Reminder.treatment_id == t["sent"], Reminder.step == "upcoming")
            .values(status="sent")
        )
        s.execute(
            update(Reminder)
            .where(Reminder.treatment_id == t["sent"], Reminder.step == "due")
            .values(status="cancelled", reason="staff")
        )
        for role in ("mistake", "edited", "sent"):
            s.execute(update(Treatment).where(Treatment.id == t[role]).values(needs_plan=True))
        quiet = s.get_one(factories.Patient, patients["quiet"])
        quiet.active = False
        opted_out = s.get_one(factories.Patient, patients["opted_out"])
        consents.opt_out(s, opted_out, "sms", source="sms_stop", now=JAN_10)
        travels = s.get_one(factories.Patient, patients["travels"])
        travels.timezone, travels.travel_lead_days = "Asia/Tokyo", 7
        s.flush()
        for patient_id in patients.values():
            mark_patient_changed(s, patient_id)
    return t


def groups_of(rt: Runtime, treatment_ids: list[int]) -> list[tuple[int, str]]:
    with rt.sessions() as s:
        rows = s.execute(
            select(Treatment.patient_id, Treatment.protocol).where(Treatment.id.in_(treatment_ids))
        )
        return sorted({(r[0], r[1]) for r in rows})


def plan_groups_of(
    rt: Runtime, treatment_ids: list[int], now: dt.datetime, *, reader: bool = False
) -> int:
    """``reader``: the patients are read through a second session (as a treatments import
    does on PostgreSQL)."""
    groups = groups_of(rt, treatment_ids)
    with rt.sessions() as s, s.begin(), rt.sessions() as second:
        return plan_groups(s, rt, groups, now=now, reader=second if reader else None)


def outcome(rt: Runtime, t: dict[str, int]) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Every reminder of a changed clinic by treatment role and step."""
    with rt.sessions() as s:
        rows = s.scalars(select(Reminder).where(Reminder.treatment_id.in_(t.values())))
        role = {v: k for k, v in t.items()}
        found: dict[str, dict[str, tuple[Any, ...]]] = {k: {} for k in t}
        for r in rows:
            found[role[r.treatment_id]][r.step] = (
                r.status,
                r.reason,
                r.due_at,
                r.expires_at,
                r.next_attempt_at,
            )
        return found


@contextmanager
def statements(rt: Runtime) -> Iterator[list[str]]:
    """The statements sent to the database meanwhile (an executemany counts once)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(rt.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(rt.engine, "before_cursor_execute", record)


@pytest.mark.parametrize(
    ("copy_rows", "reader", "batch"),
    [(plan_store.COPY_ROWS, False, planner.BATCH), (1, False, planner.BATCH), (1, True, 2)],
    ids=["arrays", "copy", "copy-reader-batches"],
)
def test_a_batch_of_groups_is_planned_as_each_group_alone(
    runtime, monkeypatch, copy_rows, reader, batch
) -> None:
    """(On PostgreSQL, many new reminders go in by COPY; a treatments import reads the
    patients on a second connection, and many groups go in batches: each way is checked.)"""
    if reader and runtime.engine.dialect.name != "postgresql":
        pytest.skip("a second connection while writing: PostgreSQL (the import uses it there)")
    monkeypatch.setattr(plan_store, "COPY_ROWS", copy_rows)
    monkeypatch.setattr(planner, "BATCH", batch)
    cervical = runtime.protocols["cervical_dystonia"]
    together, alone = changed_clinic(runtime), changed_clinic(runtime)
    # A staff edit drops a step the "edited" group has planned.
    runtime.protocols["cervical_dystonia"] = cervical.model_copy(
        update={"steps": cervical.steps[1:]}
    )
    try:
        written = plan_groups_of(runtime, list(together.values()), MAR_4, reader=reader)
        written_alone = 0
        for group in groups_of(runtime, list(alone.values())):
            with runtime.sessions() as s, s.begin():
                written_alone += plan_group(s, runtime, *group, now=MAR_4)
    finally:
        runtime.protocols["cervical_dystonia"] = cervical
    assert outcome(runtime, together) == outcome(runtime, alone)
    assert written == written_alone > 0
    got = outcome(runtime, together)
    assert {v[:2] for v in got["old"].values()} == {("cancelled", "superseded")}
    assert {v[:2] for v in got["mistake"].values()} == {("cancelled", "deleted")}
    assert {v[:2] for v in got["previous"].values()} == {("pending", None)}  # reopened
    assert {v[:2] for v in got["quiet"].values()} == {("cancelled", "inactive")}
    assert {v[:2] for v in got["opted_out"].values()} == {("cancelled", "no_channel")}
    assert got["corrected"]["upcoming"][:2] == ("cancelled", "replanned")
    assert got["edited"]["upcoming"][:2] == ("cancelled", "protocol_changed")
    assert got["travels"]["due"][:3] == ("pending", None, utc("2026-03-23T01:00"))
    assert {k: v[:2] for k, v in got["sent"].items()} == {
        "upcoming": ("sent", None),
        "due": ("cancelled", "staff"),
        "last_call": ("pending", None),
    }
    assert set(got["fresh"]) == {"upcoming", "due", "last_call"}
    assert set(got["new"]) == {"upcoming", "due", "last_call"}
    assert got["unknown"] == {}
    assert plan_pending(runtime, now=MAR_4) == 0  # nothing left flagged


def planning_statements(rt: Runtime, treatment_ids: list[int]) -> list[str]:
    """The statements planning these treatments' groups sends, BEGIN included."""
    groups = groups_of(rt, treatment_ids)
    with statements(rt) as seen, rt.sessions() as s, s.begin():
        plan_groups(s, rt, groups, now=MAR_4)
    return seen


def test_planning_a_batch_costs_the_same_statements_whatever_its_size(runtime) -> None:
    clinics = [changed_clinic(runtime) for _ in range(4)]
    assert len(groups_of(runtime, list(clinics[0].values()))) == 10
    one = planning_statements(runtime, list(clinics[0].values()))
    three = planning_statements(runtime, [i for c in clinics[1:] for i in c.values()])
    # BEGIN; treatments, reminders, consents, patients; a cancel per reason (deleted,
    # superseded, inactive, no_channel, replanned), the moves, the insert, needs_plan.
    assert len(three) == len(one) <= 13, three
    assert outcome(runtime, clinics[0]) == outcome(runtime, clinics[3])


def test_batches_planned_in_turn_come_out_as_one_batch(runtime, monkeypatch) -> None:
    """Several batches: on PostgreSQL one batch is written, and the next read, on a helper
    thread while the one between them is decided."""
    clinics = [changed_clinic(runtime) for _ in range(2)]
    planning_statements(runtime, list(clinics[0].values()))  # 10 groups, one batch
    monkeypatch.setattr(planner, "BATCH", 3)
    planning_statements(runtime, list(clinics[1].values()))  # 4 batches
    assert outcome(runtime, clinics[0]) == outcome(runtime, clinics[1])
    assert plan_pending(runtime, now=MAR_4) == 0


def test_a_failure_while_deciding_a_batch_leaves_the_connection_usable_and_nothing_written(
    runtime, monkeypatch
) -> None:
    treatments = [add_treatment(runtime, "2026-02-20") for _ in range(5)]
    monkeypatch.setattr(planner, "BATCH", 1)
    decide = planner._decide_batch
    decided: list[int] = []

    def third_fails(rt: Runtime, batch: Any, now: dt.datetime, postgres: bool) -> Any:
        decided.append(len(batch.groups))
        if len(decided) == 3:  # the earlier batches written, the next one being read
            raise RuntimeError("deciding failed")
        return decide(rt, batch, now, postgres)

    monkeypatch.setattr(planner, "_decide_batch", third_fails)
    with runtime.sessions() as s:
        with pytest.raises(RuntimeError, match="deciding failed"), s.begin():
            plan_groups(s, runtime, groups_of(runtime, treatments), now=MAR_4)
        assert s.scalar(select(func.count()).select_from(Reminder)) == 0  # the same connection
    assert decided == [1, 1, 1]
    monkeypatch.setattr(planner, "_decide_batch", decide)
    assert plan_groups_of(runtime, treatments, MAR_4) == 15


def test_brand_new_groups_cost_the_same_statements_whatever_their_number(runtime) -> None:
    few = [add_treatment(runtime, "2026-02-20") for _ in range(2)]
    many = [add_treatment(runtime, "2026-02-20") for _ in range(20)]
    assert len(planning_statements(runtime, few)) == len(planning_statements(runtime, many))
    assert {v[:2] for t in many for v in steps(runtime, t).values()} == {("pending", None)}
    assert sum(len(steps(runtime, t)) for t in many) == 60


def test_a_history_loads_no_patient(runtime) -> None:
    past = [add_treatment(runtime, "2024-05-01") for _ in range(3)]
    seen = planning_statements(runtime, past)
    assert steps(runtime, past[0]) == {}
    assert not [s for s in seen if "FROM patients" in s and "treatments" not in s]
    assert plan_pending(runtime, now=MAR_4) == 0


def test_planning_reads_a_patient_as_the_model_does(runtime) -> None:
    with runtime.sessions() as s, s.begin():
        patients = [
            factories.patient(s),
            factories.patient(s, channels="whatsapp|sms|email", whatsapp="+905431970000"),
            factories.patient(s, channels="whatsapp|email", consent=["whatsapp"]),
            factories.patient(s, channels="email|sms", email=None, travel_lead_days=7),
            factories.patient(s, channels="sms", active=False, timezone="Asia/Tokyo"),
            factories.patient(s, channels="", consent=[]),
        ]
        consents.opt_out(s, patients[1], "whatsapp", source="test", now=JAN_10)
        s.flush()
        contacts = contacts_by_id(s, [p.id for p in patients])
        for p in patients:
            c = contacts[p.id]
            assert (c.timezone, c.travel_lead_days, c.active) == (
                p.timezone,
                p.travel_lead_days,
                p.active,
            )
            assert c.channel_order == p.channel_order
            assert usable_channels(c) == usable_channels(p)
            for channel in Channel:
                assert c.address(channel) == p.address(channel)
                theirs, ours = p.consent(channel), c.consent(channel)
                assert (ours and ours.usable) == (theirs and theirs.usable)


def test_objects_the_callers_session_holds_see_what_planning_wrote(runtime) -> None:
    t = add_treatment(runtime, "2026-01-05")
    plan_pending(runtime, now=JAN_10)
    patient_id = patient_of(runtime, t)
    with runtime.sessions() as s, s.begin():
        treatment = s.get_one(Treatment, t)
        held = list(s.scalars(select(Reminder).where(Reminder.treatment_id == t)))
        s.get_one(factories.Patient, patient_id).active = False
        treatment.needs_plan = True
        assert plan_group(s, runtime, patient_id, "chronic_migraine", now=JAN_10) == 3
        assert treatment.needs_plan is False
        assert {(r.status, r.reason) for r in held} == {("cancelled", "inactive")}
    assert {v[:2] for v in steps(runtime, t).values()} == {("cancelled", "inactive")}


@pytest.mark.parametrize("copy_rows", [plan_store.COPY_ROWS, 1], ids=["arrays", "copy"])
def test_inserting_reminders_skips_the_ones_a_concurrent_planner_wrote(
    runtime, monkeypatch, copy_rows
) -> None:
    monkeypatch.setattr(plan_store, "COPY_ROWS", copy_rows)
    first, second = add_treatment(runtime, "2026-02-20"), add_treatment(runtime, "2026-02-20")
    plan_groups_of(runtime, [first], MAR_4)
    before = steps(runtime, first)
    with runtime.sessions() as s, s.begin():
        t = {i: s.get_one(Treatment, i) for i in (first, second)}
        rows = [
            reminder_row(
                i,
                t[i].patient_id,
                t[i].protocol,
                PlannedReminder(
                    step,
                    (MAR_4 + dt.timedelta(days=n)).date(),
                    MAR_4 + dt.timedelta(days=n),
                    MAR_4 + dt.timedelta(days=n + 7),
                ),
            )
            for i in (first, second)
            for n, step in enumerate(("upcoming", "due"))
        ]
        assert plan_store.insert_reminders(s, rows) == {t[second].protocol: 2}
    assert steps(runtime, first) == before  # untouched
    assert {k: v[2] for k, v in steps(runtime, second).items()} == {
        "upcoming": MAR_4,
        "due": MAR_4 + dt.timedelta(days=1),
    }


def test_names_and_instants_go_through_copy_as_they_are(runtime, monkeypatch) -> None:
    """The COPY text is made by hand (plan_store.copy_text): awkward names, and instants that
    are not whole seconds, come back as given."""
    monkeypatch.setattr(plan_store, "COPY_ROWS", 1)
    treatment = add_treatment(runtime, "2026-02-20")
    names = ["back\\slash", "tab\there", "new\nline", "cr\rhere", "\\N", "çiğdem’s 💉", "a;b,'c\""]
    due = MAR_4 + dt.timedelta(microseconds=123456)
    with runtime.sessions() as s, s.begin():
        t = s.get_one(Treatment, treatment)
        rows = [
            reminder_row(
                treatment,
                t.patient_id,
                t.protocol,
                PlannedReminder(
                    name, due.date(), due + dt.timedelta(hours=n), due + dt.timedelta(days=1)
                ),
            )
            for n, name in enumerate(names)
        ]
        assert plan_store.insert_reminders(s, rows) == {t.protocol: len(names)}
    assert {k: v[2] for k, v in steps(runtime, treatment).items()} == {
        name: due + dt.timedelta(hours=n) for n, name in enumerate(names)
    }
