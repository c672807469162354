"""Dashboard: sends and delivery rate by channel over time, adherence per protocol and month."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from reminders import stats
from reminders.web.console import charts
from reminders.web.console.base import ConsoleRoute, Page, StaffPage

router = APIRouter(route_class=ConsoleRoute)
PERIODS = (30, 90, 365)


def _percent(value: float) -> str:
    return f"{value:.0f}%"


def _sends(current: Page, days: int) -> dict[str, Any]:
    zone = current.runtime.settings.clinic_zone
    today = current.now().astimezone(zone).date()
    first = today - dt.timedelta(days=days - 1)
    with current.runtime.sessions() as session:
        found = stats.deliveries_by_day(
            session,
            since=dt.datetime.combine(first, dt.time(0), zone),
            until=dt.datetime.combine(today + dt.timedelta(days=1), dt.time(0), zone),
            zone=zone,
        )
    dates = [first + dt.timedelta(days=i) for i in range(days)]
    by_key = {(d.day, d.channel): d for d in found}
    channels = sorted({d.channel for d in found}) or ["email", "sms", "whatsapp"]
    labels = [d.strftime("%m-%d") for d in dates]

    def series(value: Any) -> list[charts.Series]:
        return [
            charts.Series(
                c,
                [value(by_key.get((d, c))) for d in dates],
                charts.CHANNEL_COLOURS.get(c, "#4b5563"),
            )
            for c in channels
        ]

    sent = charts.line_chart(
        labels, series(lambda e: e.sent if e else 0), title=current.gettext("Messages sent per day")
    )
    rate = charts.line_chart(
        labels,
        series(lambda e: 100 * e.delivery_rate if e and e.delivery_rate is not None else None),
        title=current.gettext("Delivery rate per day"),
        y_max=100,
        y_label=_percent,
    )
    totals = {c: [by_key[k] for k in by_key if k[1] == c] for c in channels}
    return {"sent_chart": sent, "rate_chart": rate, "totals": totals}


def _adherence(current: Page) -> dict[str, Any]:
    zone = current.runtime.settings.clinic_zone
    today = current.now().astimezone(zone).date()
    first = (today.replace(day=1) - dt.timedelta(days=320)).replace(day=1)
    protocols = current.runtime.protocols
    with current.runtime.sessions() as session:
        found = stats.adherence(session, protocols, first_month=first, today=today)
    months = stats.months_between(first, today)
    by_key = {(a.protocol, a.month): a for a in found}
    codes = sorted({a.protocol for a in found})
    series = [
        charts.Series(
            code,
            [
                100 * rate
                if (a := by_key.get((code, m))) and (rate := a.rate) is not None
                else None
                for m in months
            ],
            charts.PALETTE[i % len(charts.PALETTE)],
        )
        for i, code in enumerate(codes)
    ]
    chart = charts.line_chart(
        months,
        series,
        title=current.gettext("Share of patients back inside their window"),
        y_max=100,
        y_label=_percent,
    )
    return {"adherence_chart": chart, "adherence": found}


@router.get("/dashboard", name="console_dashboard")
def dashboard(current: StaffPage, days: int = 30) -> Response:
    days = days if days in PERIODS else 30
    with current.runtime.sessions() as session:
        counts = stats.reminder_counts(session)
    context = {"days": days, "periods": PERIODS, "counts": counts}
    context.update(_sends(current, days))
    context.update(_adherence(current))
    return current.render("dashboard.html", context)
