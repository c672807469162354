"""Templates: the step x channel x language grid, the editor with its live preview, versions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.responses import Response

from reminders.settings import normalise_language
from reminders.templating import TemplateError, TemplateSpec
from reminders.web.console import template_edit, template_rows
from reminders.web.console.base import (
    Conflict,
    ConsoleRoute,
    NotFound,
    Page,
    Pager,
    Paging,
    StaffForm,
    StaffPage,
)
from reminders.web.console.i18n import N_
from reminders.web.console.template_edit import Draft

router = APIRouter(route_class=ConsoleRoute)


@router.get("/templates", name="console_templates")
def grid(current: StaffPage, step: str = "", channel: str = "", language: str = "") -> Response:
    if step and channel and language:  # the "another language" form
        key = _key(current, step, channel, language)
        return current.redirect("console_template", step=key[0], channel=key[1], language=key[2])
    rt = current.runtime
    with rt.sessions() as session:
        custom = template_rows.newest(session)
    steps, langs = template_rows.steps(rt.protocols), template_rows.languages(rt, custom)
    cells = {
        (s, c, lang): template_rows.cell((s, c, lang), custom, rt.templates)
        for s in steps
        for c in template_rows.CHANNELS
        for lang in langs
    }
    missing = sum(1 for cell in cells.values() if cell.state == "missing")
    context = {"steps": steps, "languages": langs, "cells": cells, "missing": missing}
    return current.render("templates_grid.html", {**context, "channels": template_rows.CHANNELS})


def _key(current: Page, step: str, channel: str, language: str) -> tuple[str, str, str]:
    if step not in template_rows.steps(current.runtime.protocols):
        raise NotFound(N_("There is no step called %(name)s."), name=step)
    if channel not in template_rows.CHANNELS:
        raise NotFound(N_("There is no channel called %(name)s."), name=channel)
    try:
        canonical = normalise_language(language)
    except ValueError:
        raise NotFound(N_("%(name)s is not a language code."), name=language) from None
    return step, channel, canonical


@router.get("/templates/{step}/{channel}/{language}", name="console_template")
def editor(
    step: str,
    channel: str,
    language: str,
    current: StaffPage,
    versions: Paging,
    version: int | None = None,
) -> Response:
    key = _key(current, step, channel, language)
    with current.runtime.sessions() as session:
        spec, latest = template_rows.current(session, current.runtime.templates, *key)
        if version is not None:
            spec = _version_spec(session, current, key, version)
    draft = Draft.from_spec(spec) if spec else Draft()
    return _editor(current, key, draft, latest, versions, loaded=version)


def _version_spec(session: Any, current: Page, key: tuple[str, str, str], number: int) -> Any:
    if number == 0:
        spec = current.runtime.templates.get(key)
    else:
        row = template_rows.version(session, *key, number)
        spec = (
            None
            if row is None
            else TemplateSpec(
                *key,
                text=row.text,
                subject=row.subject,
                html=row.html,
                content_sid=row.content_sid,
                variables=row.variables,
            )
        )
    if spec is None:
        raise NotFound(N_("That version does not exist."))
    return spec


def _editor(
    current: Page,
    key: tuple[str, str, str],
    draft: Draft,
    latest: int,
    versions: Pager,
    *,
    errors: list[TemplateError] | None = None,
    loaded: int | None = None,
    status_code: int = 200,
) -> Response:
    step, channel, language = key
    with current.runtime.sessions() as session:
        versions.fill(
            template_rows.history(session, *key, offset=versions.offset, limit=versions.fetch)
        )
    variables = [*draft.variables, "", ""] if channel == "whatsapp" else []
    context = {
        "step": step,
        "channel": channel,
        "language": language,
        "draft": draft,
        "latest": latest,
        "versions": versions,
        "errors": errors or [],
        "loaded": loaded,
        "variables": variables,
        "has_default": key in current.runtime.templates,
        "saved": current.request.query_params.get("saved"),
    }
    return current.render("template_editor.html", context, status_code)


@router.post("/templates/preview", name="console_template_preview")
def preview(current: StaffPage, form: StaffForm) -> Response:
    key = _key(
        current,
        str(form.get("step", "")),
        str(form.get("channel", "")),
        str(form.get("language", "")),
    )
    spec = Draft.from_form(form).spec(*key)
    rt = current.runtime
    chosen = str(form.get("patient") or "").strip()
    if chosen:
        with rt.sessions() as session:
            found = template_rows.patient_context(session, rt, chosen, key[0], rt.settings)
        if found is None:
            message = current.gettext("No patient has the external id %(id)s.", id=chosen)
            return JSONResponse({"ok": False, "error": {"reason": message}}, status_code=404)
        context, label = found
    else:
        context = template_edit.sample_contexts(spec, rt.protocols, rt.settings)[0]
        label = current.gettext("sample patient")
    return JSONResponse({**template_edit.preview(spec, context), "for": label})


@router.post("/templates/{step}/{channel}/{language}", name="console_template_save")
def save(
    step: str,
    channel: str,
    language: str,
    current: StaffPage,
    form: StaffForm,
) -> Response:
    key = _key(current, step, channel, language)
    draft = Draft.from_form(form)
    base = _int(form.get("base_version"))
    return _store(current, key, draft, base, note="saved")


@router.post("/templates/{step}/{channel}/{language}/restore", name="console_template_restore")
def restore(
    step: str,
    channel: str,
    language: str,
    current: StaffPage,
    form: StaffForm,
) -> Response:
    key = _key(current, step, channel, language)
    with current.runtime.sessions() as session:
        spec = _version_spec(session, current, key, _int(form.get("version")))
    return _store(current, key, Draft.from_spec(spec), _int(form.get("base_version")), "restored")


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise NotFound(N_("That version does not exist.")) from None


def _store(
    current: Page,
    key: tuple[str, str, str],
    draft: Draft,
    base: int,
    note: str,
) -> Response:
    rt = current.runtime
    spec = draft.spec(*key)
    errors = template_edit.check(spec, rt.protocols, rt.settings)
    if errors:
        return _editor(current, key, draft, base, Pager(), errors=errors, status_code=422)
    assert current.viewer is not None
    try:
        with rt.sessions() as session, session.begin():
            row = template_rows.save(
                session,
                spec,
                author=current.viewer.email,
                now=current.now(),
                base_version=base,
                note=note,
            )
    except template_rows.StaleVersionError:
        raise Conflict(
            N_("Someone saved this template since you opened it. Reload it and edit again.")
        ) from None
    return current.redirect(
        "console_template", {"saved": row.version}, step=key[0], channel=key[1], language=key[2]
    )
