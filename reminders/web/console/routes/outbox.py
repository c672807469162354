"""Outbox: reminders by state with filters, retry or cancel one, what goes out tomorrow."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData
from starlette.responses import Response

from reminders.planning import usable_channels
from reminders.web.console import outbox, template_rows
from reminders.web.console.base import (
    Conflict,
    ConsoleRoute,
    Page,
    Paging,
    Problem,
    StaffForm,
    StaffPage,
)
from reminders.web.console.i18n import N_
from reminders.web.console.routes.account import safe_next

router = APIRouter(route_class=ConsoleRoute)


def _date(raw: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(raw) if raw else None
    except ValueError:
        raise Problem(N_("%(value)s is not a date (YYYY-MM-DD)."), value=raw) from None


def _cursor(name: str, raw: str) -> outbox.Cursor | None:
    if not raw:
        return None
    try:
        return outbox.Cursor.parse(raw)
    except ValueError:
        raise Problem(
            N_("The page link is not valid (%(name)s=%(value)s): open the outbox again."),
            name=name,
            value=raw[:80],
        ) from None


@router.get("/outbox", name="console_outbox")
def listing(
    current: StaffPage,
    view: str = "upcoming",
    channel: str = "",
    protocol: str = "",
    step: str = "",
    since: str = "",
    until: str = "",
    after: str = "",
    before: str = "",
) -> Response:
    filters = outbox.Filters(
        view if view in outbox.VIEWS else "upcoming",
        channel,
        protocol,
        step,
        _date(since),
        _date(until),
    )
    later, earlier = _cursor("after", after), _cursor("before", before)
    if later is not None and earlier is not None:
        raise Problem(N_("A page link has either after or before, not both."))
    zone = current.runtime.settings.clinic_zone
    with current.runtime.sessions() as session:
        window = outbox.page(session, filters, zone, after=later, before=earlier)
    context = {
        "filters": filters,
        "window": window,
        "views": list(outbox.VIEWS),
        "protocols": sorted(current.runtime.protocols),
        "steps": template_rows.steps(current.runtime.protocols),
        "channels": template_rows.CHANNELS,
        "done": current.request.query_params.get("done"),
        "retryable": outbox.RETRYABLE,
        "cancellable": outbox.CANCELLABLE,
    }
    return current.render("outbox.html", context)


def _back(current: Page, form: FormData, done: str) -> Response:
    target = safe_next(str(form.get("back") or "")) or current.href("console_outbox")
    joiner = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{joiner}done={done}", status_code=303)


@router.post("/outbox/{reminder_id}/retry", name="console_outbox_retry")
def retry(
    reminder_id: int,
    current: StaffPage,
    form: StaffForm,
) -> Response:
    assert current.viewer is not None
    with current.runtime.sessions() as session, session.begin():
        done = outbox.retry(session, reminder_id, actor=current.viewer.email, now=current.now())
    if not done:
        raise Conflict(
            N_(
                "This reminder cannot be retried: it was sent, is being sent, "
                "or its step has passed."
            )
        )
    return _back(current, form, "retried")


@router.post("/outbox/{reminder_id}/cancel", name="console_outbox_cancel")
def cancel(
    reminder_id: int,
    current: StaffPage,
    form: StaffForm,
) -> Response:
    assert current.viewer is not None
    with current.runtime.sessions() as session, session.begin():
        done = outbox.cancel(session, reminder_id, actor=current.viewer.email, now=current.now())
    if not done:
        raise Conflict(N_("This reminder cannot be cancelled: it is no longer waiting to go out."))
    return _back(current, form, "cancelled")


@router.get("/outbox/tomorrow", name="console_forecast")
def forecast(current: StaffPage, results: Paging) -> Response:
    zone = current.runtime.settings.clinic_zone
    day, start, end = outbox.tomorrow(current.now(), zone)
    with current.runtime.sessions() as session:
        counts = outbox.forecast_counts(session, start, end)
        rows = results.fill(
            outbox.forecast_rows(session, start, end, offset=results.offset, limit=results.fetch)
        )
        channels = {r.id: next(iter(usable_channels(p)), None) for r, p in rows}
    context = {
        "day": day,
        "counts": counts,
        "total": sum(n for _, _, n in counts),
        "results": results,
        "channels": channels,
    }
    return current.render("forecast.html", context)
