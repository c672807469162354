"""End-to-end smoke: a treatment in, a reminder out through the recording channel."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from reminders.models import Reminder
from reminders.planner import plan_pending
from reminders.service import Service
from tests import factories


def test_a_due_treatment_is_planned_and_sent_once(runtime, senders) -> None:
    now = dt.datetime(2026, 3, 4, 8, 0, tzinfo=dt.UTC)  # 11:00 in Istanbul
    with runtime.sessions() as s, s.begin():
        p = factories.patient(s)
        factories.treatment(s, p, now.date() - dt.timedelta(days=84))
    assert plan_pending(runtime, now=now) == 1
    service = Service(runtime, owner="test")
    service.tick(now)
    service.tick(now)
    service.dispatcher.close()
    assert [m.to for m in senders["sms"].sent] == [p.phone]
    with runtime.sessions() as s:
        statuses = {r.step: r.status for r in s.scalars(select(Reminder))}
    assert statuses == {"due": "sent", "last_call": "pending"}
