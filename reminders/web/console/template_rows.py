"""Template versions in the database: the grid of what exists, history, saving a new version."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from reminders import template_store
from reminders.models import AuditEntry, Patient, Template, Treatment
from reminders.protocols import Protocol
from reminders.runtime import Runtime
from reminders.settings import Settings
from reminders.template_store import Defaults
from reminders.templating import TemplateSpec

CHANNELS = ("email", "sms", "whatsapp")


@dataclass(frozen=True)
class Cell:
    """One (step, channel, language) of the grid."""

    state: str  # custom, default, missing
    version: int = 0
    needs_sid: bool = False  # WhatsApp without an approved ContentSid cannot be sent


def steps(protocols: Mapping[str, Protocol]) -> list[str]:
    """Every step name of every protocol, in the order they first appear."""
    return list(dict.fromkeys(s.name for p in protocols.values() for s in p.steps))


def newest(session: Session) -> dict[tuple[str, str, str], Template]:
    top = (
        select(Template.step, Template.channel, Template.language, func.max(Template.version))
        .group_by(Template.step, Template.channel, Template.language)
        .subquery()
    )
    rows = session.scalars(
        select(Template).join(
            top,
            (Template.step == top.c.step)
            & (Template.channel == top.c.channel)
            & (Template.language == top.c.language)
            & (Template.version == top.c[3]),
        )
    )
    return {(r.step, r.channel, r.language): r for r in rows}


def languages(runtime: Runtime, custom: Mapping[tuple[str, str, str], Template]) -> list[str]:
    found = {lang for _, _, lang in runtime.templates} | {lang for _, _, lang in custom}
    default = runtime.settings.default_language
    return [default, *sorted(found - {default})]


def cell(
    key: tuple[str, str, str], custom: Mapping[tuple[str, str, str], Template], defaults: Defaults
) -> Cell:
    row = custom.get(key)
    if row is not None:
        return Cell("custom", row.version, key[1] == "whatsapp" and not row.content_sid)
    spec = defaults.get(key)
    if spec is not None:
        return Cell("default", 0, key[1] == "whatsapp" and not spec.content_sid)
    return Cell("missing")


def current(
    session: Session, defaults: Defaults, step: str, channel: str, language: str
) -> tuple[TemplateSpec | None, int]:
    """The spec in force for exactly this language (no fallback) and its version (0: default)."""
    row = template_store.latest(session, step, channel, language)
    if row is not None:
        return template_store.spec_of(row), row.version
    return defaults.get((step, channel, language)), 0


def version(
    session: Session, step: str, channel: str, language: str, number: int
) -> Template | None:
    return session.scalar(
        select(Template).where(
            Template.step == step,
            Template.channel == channel,
            Template.language == language,
            Template.version == number,
        )
    )


def history(
    session: Session, step: str, channel: str, language: str, *, offset: int, limit: int
) -> list[Template]:
    return list(
        session.scalars(
            select(Template)
            .where(
                Template.step == step, Template.channel == channel, Template.language == language
            )
            .order_by(Template.version.desc())
            .offset(offset)
            .limit(limit)
        )
    )


class StaleVersionError(Exception):
    """Someone saved a newer version since the editor was opened."""


def save(
    session: Session,
    spec: TemplateSpec,
    *,
    author: str,
    now: dt.datetime,
    base_version: int,
    note: str = "saved",
) -> Template:
    """A new version after ``base_version``; StaleVersionError if that is no longer the newest."""
    latest = template_store.latest(session, spec.step, spec.channel, spec.language)
    if (latest.version if latest else 0) != base_version:
        raise StaleVersionError
    row = Template(
        step=spec.step,
        channel=spec.channel,
        language=spec.language,
        version=base_version + 1,
        subject=spec.subject,
        text=spec.text,
        html=spec.html,
        content_sid=spec.content_sid,
        variables=dict(spec.variables) if spec.variables is not None else None,
        author=author,
        created_at=now,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # a concurrent save took the same version number
        raise StaleVersionError from None
    subject = f"{spec.step}/{spec.channel}/{spec.language}"
    session.add(
        AuditEntry(
            actor=author,
            action=f"template.{note}",
            subject=subject,
            detail=f"version {row.version}",
            occurred_at=now,
        )
    )
    return row


def patient_context(
    session: Session, runtime: Runtime, external_id: str, step: str, settings: Settings
) -> tuple[dict[str, Any], str] | None:
    """The message context for a real patient's latest treatment, and a label; None if unknown."""
    patient = session.scalar(select(Patient).where(Patient.external_id == external_id.strip()))
    if patient is None:
        return None
    treatment = session.scalar(
        select(Treatment)
        .where(Treatment.patient_id == patient.id, Treatment.deleted_at.is_(None))
        .order_by(Treatment.administered_on.desc(), Treatment.id.desc())
        .limit(1)
    )
    label = f"{patient.given_name} {patient.family_name}".strip()
    protocol = runtime.protocols.get(treatment.protocol) if treatment else None
    if treatment is None or protocol is None:
        any_protocol = next(iter(runtime.protocols.values()))
        context = template_store.sample_context(any_protocol, settings, patient.language)
        context["patient"] = {"given_name": patient.given_name, "family_name": patient.family_name}
        return {**context, "step": step}, label
    return template_store.context(patient, treatment, protocol, step, settings), label
