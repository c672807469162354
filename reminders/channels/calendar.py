"""The "add to calendar" attachment of reminder emails: the treatment window as an all-day event.

Every reminder of one treatment carries the same event ``UID``, so a calendar that already holds
the window updates it instead of adding a second one.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlsplit

import icalendar

from reminders.channels import Attachment
from reminders.models import Treatment
from reminders.planning import Window, window_for
from reminders.protocols import Protocol
from reminders.templating import Rendered

FILENAME = "treatment-window.ics"
MIME_TYPE = "text/calendar"
PRODID = "-//reminders//treatment window//EN"


def window_event(
    *, uid: str, window: Window, summary: str, description: str, stamp: dt.datetime
) -> bytes:
    """An iCalendar file with one all-day event from the window's opening to its close."""
    event = icalendar.Event()
    event.add("uid", uid)
    event.add("dtstamp", stamp.astimezone(dt.UTC))
    event.add("dtstart", window.open)
    event.add("dtend", window.close + dt.timedelta(days=1))  # DTEND of a date is exclusive
    event.add("summary", summary)
    event.add("description", description)
    event.add("transp", "TRANSPARENT")  # a window, not a busy appointment
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    cal.add_component(event)
    return bytes(cal.to_ical())


def attachments_for(
    channel: str,
    treatment: Treatment,
    protocol: Protocol,
    content: Rendered,
    *,
    now: dt.datetime,
    public_url: str | None,
) -> tuple[Attachment, ...]:
    """The calendar attachment for an email reminder; nothing for other channels."""
    if channel != "email":
        return ()
    host = urlsplit(public_url or "").hostname or "reminders.invalid"
    ics = window_event(
        uid=f"treatment-{treatment.id}-window@{host}",
        window=window_for(protocol, treatment.administered_on),
        summary=content.subject or next(iter(content.text.splitlines()), ""),
        description=content.text,
        stamp=now,
    )
    return (Attachment(FILENAME, MIME_TYPE, ics),)
