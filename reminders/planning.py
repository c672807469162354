"""Pure planning: from a treatment, its protocol and the patient, the reminders to send.

Nothing here reads the clock or the database; ``now`` is an argument. Dates in a protocol are
calendar dates (the clinic's ``administered_on`` plus days); a step goes out at the configured
send time on its date *in the patient's own time zone*, moved into the send window, so a patient
abroad hears from us in their morning, DST included.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Protocol as Shape
from zoneinfo import ZoneInfo

from reminders.models import Channel
from reminders.protocols import Anchor, Protocol, Step

UTC = dt.UTC


class PatientLike(Shape):
    timezone: str
    travel_lead_days: int


@dataclass(frozen=True)
class Window:
    """The treatment window of one cycle, as clinic-local calendar dates."""

    open: dt.date
    target: dt.date
    close: dt.date

    def anchor(self, anchor: Anchor) -> dt.date:
        return {Anchor.WINDOW_OPEN: self.open, Anchor.TARGET: self.target}.get(anchor, self.close)


@dataclass(frozen=True)
class SendWindow:
    """The local hours in which messages may go out."""

    start: dt.time
    end: dt.time

    def next_allowed(self, moment: dt.datetime, zone: ZoneInfo) -> dt.datetime:
        """The earliest instant at or after ``moment`` inside the window, in UTC."""
        local = moment.astimezone(zone)
        day = local.date()
        if local < at_local(day, self.start, zone):
            return at_local(day, self.start, zone)
        if local < at_local(day, self.end, zone):
            return moment.astimezone(UTC)
        return at_local(day + dt.timedelta(days=1), self.start, zone)

    def contains(self, moment: dt.datetime, zone: ZoneInfo) -> bool:
        return self.next_allowed(moment, zone) == moment.astimezone(UTC)

    def closes(self, moment: dt.datetime, zone: ZoneInfo) -> dt.datetime:
        """When the window that ``moment`` is in (or the next one) ends, in UTC."""
        opens = self.next_allowed(moment, zone).astimezone(zone)
        return at_local(opens.date(), self.end, zone)


@dataclass(frozen=True)
class Timing:
    """When on a step's date messages are meant to go out."""

    send_window: SendWindow
    send_time: dt.time


@dataclass(frozen=True)
class PlannedReminder:
    step: str
    step_date: dt.date
    due_at: dt.datetime  # UTC, inside the send window
    expires_at: dt.datetime  # UTC: the next step's moment, or the end of the window


def at_local(day: dt.date, time: dt.time, zone: ZoneInfo) -> dt.datetime:
    """``day`` at wall-clock ``time`` in ``zone``, as UTC (a time skipped by DST moves on)."""
    return dt.datetime.combine(day, time, tzinfo=zone).astimezone(UTC)


def window_for(protocol: Protocol, administered_on: dt.date) -> Window:
    days = dt.timedelta
    return Window(
        open=administered_on + days(protocol.min_interval_days),
        target=administered_on + days(protocol.target_interval_days),
        close=administered_on + days(protocol.max_interval_days),
    )


def step_date(step: Step, window: Window, travel_lead_days: int) -> dt.date:
    lead = travel_lead_days if step.lead else 0
    return window.anchor(step.anchor) + dt.timedelta(days=step.offset_days - lead)


def schedule(
    administered_on: dt.date, protocol: Protocol, patient: PatientLike, timing: Timing
) -> list[PlannedReminder]:
    """Every step of the cycle with its due and expiry instants, in time order, ignoring now."""
    return list(
        _schedule(administered_on, protocol, patient.timezone, patient.travel_lead_days, timing)
    )


# A pure function of its (hashable, immutable) arguments, and the same few thousand of them
# come back all through a big import or planning pass (one per date, protocol, zone and lead,
# not per patient): 22 us computed, 1 us remembered. 4,096 entries are a few MB at most.
@functools.lru_cache(maxsize=4096)
def _schedule(
    administered_on: dt.date, protocol: Protocol, timezone: str, lead_days: int, timing: Timing
) -> tuple[PlannedReminder, ...]:
    zone = ZoneInfo(timezone)
    window = window_for(protocol, administered_on)
    dated = sorted(
        ((step_date(s, window, lead_days), i, s) for i, s in enumerate(protocol.steps)),
        key=lambda item: (item[0], item[1]),
    )
    window_end = at_local(window.close + dt.timedelta(days=1), dt.time(0), zone)
    dues = [
        timing.send_window.next_allowed(at_local(d, timing.send_time, zone), zone)
        for d, _, _ in dated
    ]
    planned = []
    for index, (day, _, step) in enumerate(dated):
        expires = min([window_end, *dues[index + 1 : index + 2]])
        if dues[index] < expires:  # a step that coincides with the next one says nothing new
            planned.append(PlannedReminder(step.name, day, dues[index], expires))
    return tuple(planned)


def plan(
    administered_on: dt.date,
    protocol: Protocol,
    patient: PatientLike,
    timing: Timing,
    *,
    now: dt.datetime,
) -> list[PlannedReminder]:
    """The steps still ahead at ``now``: none whose date has passed in the patient's zone,
    none already stale. A step dated today whose hour has passed is still today's news."""
    today = now.astimezone(ZoneInfo(patient.timezone)).date()
    return [
        r
        for r in schedule(administered_on, protocol, patient, timing)
        if r.step_date >= today and r.expires_at > now
    ]


class ConsentLike(Shape):
    @property
    def usable(self) -> bool: ...


class ContactLike(Shape):
    active: bool

    @property
    def channel_order(self) -> list[Channel]: ...

    def address(self, channel: Channel) -> str | None: ...

    def consent(self, channel: Channel) -> ConsentLike | None: ...


def usable_channels(patient: ContactLike) -> list[Channel]:
    """The patient's channels in preference order that have an address, consent and no opt-out."""
    if not patient.active:
        return []
    usable = []
    for channel in patient.channel_order:
        consent = patient.consent(channel)
        if patient.address(channel) and consent is not None and consent.usable:
            usable.append(channel)
    return usable
