"""Protocols (administrators): intervals and steps, a timeline for a sample treatment date."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter
from starlette.datastructures import FormData
from starlette.responses import Response

from reminders import protocol_store
from reminders.models import AuditEntry
from reminders.planning import step_date, window_for
from reminders.protocol_store import ProtocolEditError
from reminders.protocols import Anchor, Protocol
from reminders.web.console import charts
from reminders.web.console.base import AdminForm, AdminPage, ConsoleRoute, NotFound, Page
from reminders.web.console.i18n import N_

router = APIRouter(route_class=ConsoleRoute)
ANCHORS = [a.value for a in Anchor]


@router.get("/protocols", name="console_protocols")
def listing(current: AdminPage) -> Response:
    with current.runtime.sessions() as session:
        protocol_store.refresh(session, current.runtime)
        versions = protocol_store.newest_versions(session)
    protocols = sorted(current.runtime.protocols.values(), key=lambda p: p.code)
    return current.render("protocols.html", {"protocols": protocols, "versions": versions})


def _protocol(current: Page, code: str) -> Protocol:
    protocol = current.runtime.protocols.get(code)
    if protocol is None:
        raise NotFound(N_("There is no protocol called %(name)s."), name=code)
    return protocol


def _sample_day(current: Page, raw: str | None) -> dt.date:
    try:
        return (
            dt.date.fromisoformat(raw)
            if raw
            else current.now().astimezone(current.runtime.settings.clinic_zone).date()
        )
    except ValueError:
        raise NotFound(N_("%(value)s is not a date (YYYY-MM-DD)."), value=raw) from None


def picture(current: Page, protocol: Protocol, day: dt.date) -> Any:
    window = window_for(protocol, day)
    marks = [charts.Mark(step_date(s, window, 0), s.name, "#2563eb") for s in protocol.steps]
    marks.append(charts.Mark(day, current.gettext("treatment"), "#1f2937"))
    names = (current.gettext("opens"), current.gettext("target"), current.gettext("closes"))
    env = current.state.templates[current.language].env
    return charts.timeline(
        day,
        (window.open, window.target, window.close),
        marks,
        title=current.gettext("Timeline of %(code)s", code=protocol.code),
        names=names,
        day_label=env.filters["day"],
    )


def _rows(protocol: Protocol) -> list[dict[str, Any]]:
    rows = [s.model_dump(mode="json") for s in protocol.steps]
    return rows + [{"name": "", "anchor": "window_open", "offset_days": 0, "lead": False}] * 2


@router.get("/protocols/{code}", name="console_protocol")
def editor(code: str, current: AdminPage, sample: str | None = None) -> Response:
    with current.runtime.sessions() as session:
        protocol_store.refresh(session, current.runtime)
        history = protocol_store.history(session, code)[:50]
    protocol = _protocol(current, code)
    return _render(current, protocol, _rows(protocol), history, _sample_day(current, sample))


def _render(
    current: Page,
    protocol: Protocol,
    rows: list[dict[str, Any]],
    history: list[Any],
    day: dt.date,
    error: ProtocolEditError | None = None,
    status_code: int = 200,
) -> Response:
    context = {
        "protocol": protocol,
        "rows": rows,
        "history": history,
        "sample": day,
        "timeline": picture(current, protocol, day),
        "anchors": ANCHORS,
        "error": error,
        "saved": current.request.query_params.get("saved"),
    }
    return current.render("protocol_editor.html", context, status_code)


def _whole(value: Any, where: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise ProtocolEditError(where, "must be a whole number") from None


def step_rows(form: FormData) -> list[dict[str, Any]]:
    """The step rows as typed (to show them again if the form is refused)."""
    names, anchors = form.getlist("step_name"), form.getlist("step_anchor")
    offsets, leads = form.getlist("step_offset"), set(form.getlist("step_lead"))
    return [
        {"name": str(n).strip(), "anchor": str(a), "offset_days": str(o), "lead": str(i) in leads}
        for i, (n, a, o) in enumerate(zip(names, anchors, offsets, strict=False))
    ]


def body_from_form(form: FormData, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The protocol the form describes; blank step rows are left out."""
    steps = [
        {**row, "offset_days": _whole(row["offset_days"], f"steps.{i}.offset_days")}
        for i, row in enumerate(r for r in rows if r["name"])
    ]
    return {
        "indication": str(form.get("indication") or "").strip(),
        "min_interval_days": _whole(form.get("min_interval_days"), "min_interval_days"),
        "target_interval_days": _whole(form.get("target_interval_days"), "target_interval_days"),
        "max_interval_days": _whole(form.get("max_interval_days"), "max_interval_days"),
        "steps": steps,
    }


@router.post("/protocols/{code}", name="console_protocol_save")
def save(
    code: str,
    current: AdminPage,
    form: AdminForm,
) -> Response:
    previous = _protocol(current, code)
    day = _sample_day(current, str(form.get("sample") or "") or None)
    rows = step_rows(form)
    assert current.viewer is not None
    try:
        with current.runtime.sessions() as session, session.begin():
            row = protocol_store.save(
                session,
                code,
                body_from_form(form, rows),
                author=current.viewer.email,
                now=current.now(),
                previous=previous,
            )
            session.add(
                AuditEntry(
                    actor=current.viewer.email,
                    action="protocol.saved",
                    subject=code,
                    detail=f"version {row.version}",
                    occurred_at=current.now(),
                )
            )
    except ProtocolEditError as exc:
        with current.runtime.sessions() as session:
            history = protocol_store.history(session, code)[:50]
        return _render(current, previous, rows, history, day, exc, status_code=422)
    with current.runtime.sessions() as session:
        protocol_store.refresh(session, current.runtime)
    return current.redirect(
        "console_protocol", {"saved": row.version, "sample": day.isoformat()}, code=code
    )
