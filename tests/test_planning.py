"""Pure planning: a table of cases with the exact UTC instants they must produce.

The expected instants are written out by hand (the arithmetic is in the comments), so a change
in date arithmetic, time zones, DST handling or the send window shows up as a failing row.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reminders.planning import SendWindow, Timing, plan, schedule
from reminders.protocols import load_protocols
from tests.conftest import CONFIG

PROTOCOLS = load_protocols(CONFIG)
DEFAULT = Timing(SendWindow(dt.time(9), dt.time(20)), dt.time(10))


@dataclass(frozen=True)
class Patient:
    timezone: str
    travel_lead_days: int = 0


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def rows(*items: tuple[str, str, str]) -> list[tuple[str, dt.datetime, dt.datetime]]:
    return [(step, utc(due), utc(expires)) for step, due, expires in items]


# Administered 2026-01-05 in Istanbul (UTC+3 all year): +70 = Mar 16, +84 = Mar 30,
# +90 = Apr 5, +120 = May 5, +180 = Jul 4, +270 = Oct 2. Steps go out at 10:00 local = 07:00Z;
# the last one expires at the end of the close date (00:00 local next day = 21:00Z).
SHORT_CYCLE = rows(
    ("upcoming", "2026-03-16T07:00", "2026-03-30T07:00"),  # open - 14
    ("due", "2026-03-30T07:00", "2026-04-28T07:00"),  # open
    ("last_call", "2026-04-28T07:00", "2026-05-05T21:00"),  # close (May 5) - 7
)
DEFAULT_PROTOCOLS = {
    "chronic_migraine": SHORT_CYCLE,
    "cervical_dystonia": SHORT_CYCLE,
    "upper_limb_spasticity": SHORT_CYCLE,
    "myofascial_pain": SHORT_CYCLE,
    "tmj_bruxism": rows(  # 90 / 120 / 180
        ("upcoming", "2026-03-22T07:00", "2026-04-05T07:00"),
        ("due", "2026-04-05T07:00", "2026-06-27T07:00"),
        ("last_call", "2026-06-27T07:00", "2026-07-04T21:00"),
    ),
    "bladder_dysfunction": rows(  # 84 / 180 / 270, with a nudge at the target date
        ("upcoming", "2026-03-16T07:00", "2026-03-30T07:00"),
        ("due", "2026-03-30T07:00", "2026-07-04T07:00"),
        ("target", "2026-07-04T07:00", "2026-09-25T07:00"),
        ("last_call", "2026-09-25T07:00", "2026-10-02T21:00"),
    ),
}


def test_the_table_covers_every_default_protocol() -> None:
    assert set(DEFAULT_PROTOCOLS) == set(PROTOCOLS)


@pytest.mark.parametrize("code", sorted(DEFAULT_PROTOCOLS))
def test_each_default_protocol_plans_its_steps_at_ten_in_the_patients_morning(code: str) -> None:
    planned = plan(
        dt.date(2026, 1, 5),
        PROTOCOLS[code],
        Patient("Europe/Istanbul"),
        DEFAULT,
        now=utc("2026-01-05T12:00"),
    )
    assert [(r.step, r.due_at, r.expires_at) for r in planned] == DEFAULT_PROTOCOLS[code]


@dataclass(frozen=True)
class Case:
    administered_on: str
    zone: str
    now: str
    expected: list[tuple[str, dt.datetime, dt.datetime]]
    lead: int = 0
    protocol: str = "chronic_migraine"
    timing: Timing = DEFAULT


CASES = {
    # Lead 10 days: upcoming and due (lead: true) move 10 days earlier, last_call does not.
    "travel_lead_moves_the_lead_steps_earlier": Case(
        "2026-01-05",
        "Europe/Istanbul",
        "2026-01-05T12:00",
        rows(
            ("upcoming", "2026-03-06T07:00", "2026-03-20T07:00"),
            ("due", "2026-03-20T07:00", "2026-04-28T07:00"),
            ("last_call", "2026-04-28T07:00", "2026-05-05T21:00"),
        ),
        lead=10,
    ),
    # Berlin, DST starts 2026-03-29: 10:00 CET = 09:00Z before it, 10:00 CEST = 08:00Z after.
    "berlin_steps_either_side_of_the_spring_change": Case(
        "2026-01-05",
        "Europe/Berlin",
        "2026-01-05T12:00",
        rows(
            ("upcoming", "2026-03-16T09:00", "2026-03-30T08:00"),
            ("due", "2026-03-30T08:00", "2026-04-28T08:00"),
            ("last_call", "2026-04-28T08:00", "2026-05-05T22:00"),
        ),
    ),
    # Administered 2026-01-04: due falls on the DST day itself (10:00 CEST exists: 08:00Z).
    "berlin_step_on_the_day_the_clocks_go_forward": Case(
        "2026-01-04",
        "Europe/Berlin",
        "2026-01-04T12:00",
        rows(
            ("upcoming", "2026-03-15T09:00", "2026-03-29T08:00"),
            ("due", "2026-03-29T08:00", "2026-04-27T08:00"),
            ("last_call", "2026-04-27T08:00", "2026-05-04T22:00"),
        ),
    ),
    # Administered 2026-08-02: due on 2026-10-25 when Berlin falls back (10:00 CET = 09:00Z);
    # close is Nov 30, so the cycle ends at Dec 1 00:00 CET = Nov 30 23:00Z.
    "berlin_step_on_the_day_the_clocks_go_back": Case(
        "2026-08-02",
        "Europe/Berlin",
        "2026-08-02T12:00",
        rows(
            ("upcoming", "2026-10-11T08:00", "2026-10-25T09:00"),
            ("due", "2026-10-25T09:00", "2026-11-23T09:00"),
            ("last_call", "2026-11-23T09:00", "2026-11-30T23:00"),
        ),
    ),
    # New York, DST starts 2026-03-08; administered 2025-12-14 puts due on that day:
    # 10:00 EST = 15:00Z before, 10:00 EDT = 14:00Z from then on; close Apr 13 ends 04:00Z.
    "new_york_step_on_the_day_the_clocks_go_forward": Case(
        "2025-12-14",
        "America/New_York",
        "2025-12-14T17:00",
        rows(
            ("upcoming", "2026-02-22T15:00", "2026-03-08T14:00"),
            ("due", "2026-03-08T14:00", "2026-04-06T14:00"),
            ("last_call", "2026-04-06T14:00", "2026-04-14T04:00"),
        ),
    ),
    # A send time of 02:00 is outside the window: each step waits for 09:00 local. On
    # 2026-03-08 02:00 does not exist at all in New York; the reminder still goes at 09:00 EDT.
    "a_step_due_at_two_in_the_night_waits_for_the_send_window": Case(
        "2025-12-14",
        "America/New_York",
        "2025-12-14T17:00",
        rows(
            ("upcoming", "2026-02-22T14:00", "2026-03-08T13:00"),
            ("due", "2026-03-08T13:00", "2026-04-06T13:00"),
            ("last_call", "2026-04-06T13:00", "2026-04-14T04:00"),
        ),
        timing=Timing(SendWindow(dt.time(9), dt.time(20)), dt.time(2)),
    ),
    # A send time after the window closes moves to the next morning at 09:00 (06:00Z).
    "a_send_time_after_the_window_moves_to_the_next_morning": Case(
        "2026-01-05",
        "Europe/Istanbul",
        "2026-01-05T12:00",
        rows(
            ("upcoming", "2026-03-17T06:00", "2026-03-31T06:00"),
            ("due", "2026-03-31T06:00", "2026-04-29T06:00"),
            ("last_call", "2026-04-29T06:00", "2026-05-05T21:00"),
        ),
        timing=Timing(SendWindow(dt.time(9), dt.time(20)), dt.time(21)),
    ),
    # A patient in Tokyo (UTC+9) of a clinic in Istanbul: the clinic's dates, the patient's
    # clock. At 16:00Z on Mar 16 it is already Mar 17 in Tokyo, so `upcoming` (Mar 16) has
    # passed for this patient; the others go at 10:00 JST = 01:00Z.
    "a_patient_in_tokyo_of_a_clinic_in_istanbul": Case(
        "2026-01-05",
        "Asia/Tokyo",
        "2026-03-16T16:00",
        rows(
            ("due", "2026-03-30T01:00", "2026-04-28T01:00"),
            ("last_call", "2026-04-28T01:00", "2026-05-05T15:00"),
        ),
    ),
    # The same instant is still Mar 16 (19:00) in Istanbul: today's step is still news there,
    # though its 10:00 has passed (dispatch sends it at once, inside the window).
    "a_step_dated_today_whose_hour_has_passed_is_still_planned": Case(
        "2026-01-05",
        "Europe/Istanbul",
        "2026-03-16T16:00",
        SHORT_CYCLE,
    ),
    # Recorded long after: upcoming and due are in the past, only last_call is ahead.
    "a_late_record_plans_only_the_steps_still_ahead": Case(
        "2026-01-05", "Europe/Istanbul", "2026-04-10T09:00", SHORT_CYCLE[2:]
    ),
    # Recorded a year late: the whole cycle is over and nothing stale is planned.
    "a_treatment_recorded_a_year_late_plans_nothing": Case(
        "2025-01-05", "Europe/Istanbul", "2026-01-10T09:00", []
    ),
    # On the close date after the end of the window: the last step has expired too.
    "nothing_is_planned_once_the_window_has_closed": Case(
        "2026-01-05", "Europe/Istanbul", "2026-05-05T21:00", []
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_planning_case(case: Case) -> None:
    planned = plan(
        dt.date.fromisoformat(case.administered_on),
        PROTOCOLS[case.protocol],
        Patient(case.zone, case.lead),
        case.timing,
        now=utc(case.now),
    )
    assert [(r.step, r.due_at, r.expires_at) for r in planned] == case.expected


def test_planning_the_same_treatment_twice_gives_the_same_reminders() -> None:
    args = (dt.date(2026, 1, 5), PROTOCOLS["bladder_dysfunction"], Patient("Asia/Tokyo", 7))
    first = plan(*args, DEFAULT, now=utc("2026-02-01T00:00"))
    assert first == plan(*args, DEFAULT, now=utc("2026-02-01T00:00"))
    assert first == schedule(*args, DEFAULT)  # nothing had passed yet


def test_a_remembered_schedule_follows_every_input_that_changes_it() -> None:
    """Schedules are remembered by value: an edited protocol (same code), another zone, lead
    or send time is a schedule of its own, and a caller changing its list changes no other."""
    day, protocol = dt.date(2026, 1, 5), PROTOCOLS["bladder_dysfunction"]
    base = schedule(day, protocol, Patient("Europe/Istanbul", 0), DEFAULT)
    edited = protocol.model_copy(update={"max_interval_days": protocol.max_interval_days + 7})
    later = Timing(DEFAULT.send_window, dt.time(11))
    for other in (
        schedule(day, edited, Patient("Europe/Istanbul", 0), DEFAULT),
        schedule(day, protocol, Patient("Asia/Tokyo", 0), DEFAULT),
        schedule(day, protocol, Patient("Europe/Istanbul", 7), DEFAULT),
        schedule(day, protocol, Patient("Europe/Istanbul", 0), later),
    ):
        assert other != base
    base.clear()
    assert schedule(day, protocol, Patient("Europe/Istanbul", 0), DEFAULT) != []


NEW_YORK = ZoneInfo("America/New_York")
WINDOW = DEFAULT.send_window


@pytest.mark.parametrize(
    ("moment", "allowed"),
    [
        ("2026-01-14T07:00", "2026-01-14T14:00"),  # 02:00 EST waits for 09:00 EST
        ("2026-01-14T16:30", "2026-01-14T16:30"),  # 11:30 EST is inside
        ("2026-01-15T00:59", "2026-01-15T00:59"),  # 19:59 EST is inside
        ("2026-01-15T01:00", "2026-01-15T14:00"),  # 20:00 EST: the window has closed
        ("2026-03-08T06:30", "2026-03-08T13:00"),  # 01:30 EST on the DST day: 09:00 EDT
        ("2026-11-01T05:30", "2026-11-01T14:00"),  # 01:30 EDT, clocks go back: 09:00 EST
    ],
)
def test_the_send_window_holds_a_moment_until_the_next_local_morning(
    moment: str, allowed: str
) -> None:
    assert WINDOW.next_allowed(utc(moment), NEW_YORK) == utc(allowed)


@pytest.mark.parametrize(
    ("moment", "closes"),
    [
        ("2026-01-14T16:30", "2026-01-15T01:00"),  # 11:30 EST: at 20:00 EST
        ("2026-01-15T00:59", "2026-01-15T01:00"),  # 19:59 EST: in a minute
        ("2026-01-14T07:00", "2026-01-15T01:00"),  # 02:00 EST: the day's window, not yet open
        ("2026-01-15T01:00", "2026-01-16T01:00"),  # 20:00 EST: closed, so tomorrow's
        ("2026-03-08T15:00", "2026-03-09T00:00"),  # the DST day: 20:00 EDT
        ("2026-11-01T15:00", "2026-11-02T01:00"),  # clocks went back: 20:00 EST
    ],
)
def test_the_send_window_closes_at_its_local_end(moment: str, closes: str) -> None:
    assert WINDOW.closes(utc(moment), NEW_YORK) == utc(closes)


ZONES = ["Europe/Istanbul", "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Pacific/Auckland"]


@settings(max_examples=150, deadline=None)
@given(
    administered=st.dates(dt.date(2024, 1, 1), dt.date(2028, 12, 31)),
    code=st.sampled_from(sorted(PROTOCOLS)),
    zone=st.sampled_from(ZONES),
    lead=st.integers(0, 30),
    hours_later=st.integers(-24 * 30, 24 * 300),
)
def test_every_planned_reminder_is_ahead_ordered_and_inside_the_send_window(
    administered: dt.date, code: str, zone: str, lead: int, hours_later: int
) -> None:
    now = dt.datetime.combine(administered, dt.time(12), dt.UTC) + dt.timedelta(hours=hours_later)
    tz = ZoneInfo(zone)
    planned = plan(administered, PROTOCOLS[code], Patient(zone, lead), DEFAULT, now=now)
    close = administered + dt.timedelta(days=PROTOCOLS[code].max_interval_days)
    for r in planned:
        assert r.step_date >= now.astimezone(tz).date()
        assert WINDOW.contains(r.due_at, tz)
        assert r.due_at < r.expires_at and now < r.expires_at
        assert r.expires_at.astimezone(tz).date() <= close + dt.timedelta(days=1)
    dues = [r.due_at for r in planned]
    assert dues == sorted(dues)
    assert all(a.expires_at <= b.due_at for a, b in itertools.pairwise(planned))
