"""Helpers for the fault tests (crash, outage, rate limits, shutdown): due reminders written
straight into the database, what the fake providers saw per recipient, and the closing counts
(sent, duplicated, lost, in doubt) printed and kept under ``tests/artifacts/``."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from reminders.models import Delivery, DeliveryEvent, Reminder
from tests import factories
from tests.fakes import FakeSendGrid, FakeTwilio, RecordedRequest
from tests.support.service import midday_zone

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@dataclass(frozen=True)
class Due:
    """A reminder due now and the address its one channel sends to."""

    reminder_id: int
    channel: str
    address: str


def seed_due(engine: Engine, count: int, channels: str, now: dt.datetime) -> list[Due]:
    """``count`` patients on the single channel ``channels`` (consent given), each with a
    ``due`` reminder due a minute before ``now``, where it is about midday."""
    moment = now - dt.timedelta(minutes=1)
    rows: list[Due] = []
    with Session(engine) as s, s.begin():
        for _ in range(count):
            patient = factories.patient(s, channels=channels, timezone=midday_zone(now))
            if channels == "whatsapp":
                patient.whatsapp = patient.phone
            treatment = factories.treatment(s, patient, dt.date(2025, 1, 1), needs_plan=False)
            reminder = Reminder(
                treatment_id=treatment.id,
                patient_id=patient.id,
                protocol=treatment.protocol,
                step="due",
                due_at=moment,
                expires_at=now + dt.timedelta(days=1),
                next_attempt_at=moment,
            )
            s.add(reminder)
            s.flush()
            rows.append(Due(reminder.id, channels, patient.address(channels) or ""))
    return rows


def recipient(request: RecordedRequest) -> str:
    """The address a provider request was for (Twilio ``To`` or SendGrid's first ``to``)."""
    params = request.params
    if isinstance(params, dict) and "To" in params:
        return str(params["To"])
    try:
        return str(params["personalizations"][0]["to"][0]["email"])
    except (TypeError, KeyError, IndexError):
        return ""


def arrivals(requests: Iterable[RecordedRequest]) -> dict[str, list[float]]:
    """Arrival times (monotonic) of the requests for each address, oldest first."""
    found: dict[str, list[float]] = defaultdict(list)
    for request in sorted(requests, key=lambda r: r.received_at):
        found[recipient(request)].append(request.received_at)
    return dict(found)


def accepted(twilio: FakeTwilio | None, sendgrid: FakeSendGrid | None) -> Counter[str]:
    """How many messages each address got, as the providers accepted them."""
    got: Counter[str] = Counter()
    if twilio is not None:
        got.update(m.to for m in twilio.messages)
    if sendgrid is not None:
        got.update(r for mail in sendgrid.mails for r in mail.recipients)
    return got


def statuses(engine: Engine, ids: Sequence[int]) -> Counter[str]:
    with Session(engine) as s:
        return Counter(s.scalars(select(Reminder.status).where(Reminder.id.in_(list(ids)))))


def ever_in_doubt(engine: Engine, ids: Sequence[int]) -> int:
    """Deliveries of these reminders that were ever ``in_doubt`` (their history says so)."""
    query = (
        select(func.count(func.distinct(DeliveryEvent.delivery_id)))
        .join(Delivery, Delivery.id == DeliveryEvent.delivery_id)
        .where(DeliveryEvent.status == "in_doubt", Delivery.reminder_id.in_(list(ids)))
    )
    with Session(engine) as s:
        return int(s.scalar(query) or 0)


@dataclass(frozen=True)
class Counts:
    """The closing numbers of a fault run."""

    reminders: int
    sent: int  # reminders that reached the provider at least once and are `sent`
    duplicated: int  # messages beyond the first, over all reminders
    lost: int  # reminders not `sent`, or `sent` with nothing at the provider
    in_doubt: int  # deliveries that were in doubt at some point


def count(
    engine: Engine, due: Sequence[Due], got: Counter[str], in_doubt: int
) -> tuple[Counts, list[Due]]:
    """The counts, and the reminders that went out more than once."""
    with Session(engine) as s:
        ids = [d.reminder_id for d in due]
        rows = s.execute(select(Reminder.id, Reminder.status).where(Reminder.id.in_(ids)))
        status = {rid: st for rid, st in rows}
    sent = [d for d in due if status.get(d.reminder_id) == "sent" and got[d.address] >= 1]
    twice = [d for d in due if got[d.address] > 1]
    extra = sum(got[d.address] - 1 for d in twice)
    return Counts(len(due), len(sent), extra, len(due) - len(sent), in_doubt), twice


def report(name: str, run: str, counts: Counts, **more: Any) -> dict[str, Any]:
    """Print the counts of ``run`` (shown with ``-s`` / ``-rA``) and keep them under its key in
    ``tests/artifacts/{name}.json``."""
    data = {**asdict(counts), **more}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.json"
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = {}
    kept[run] = data
    path.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
    print(f"\n{name} [{run}]: " + ", ".join(f"{k}={v}" for k, v in data.items()))
    return data


def wait_until(check: Callable[[], bool], seconds: float, what: str, poll: float = 0.2) -> float:
    """Poll ``check`` until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(poll)
    return time.monotonic()
