"""Finding the template for a step, channel and language: staff versions over the defaults."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from reminders.models import Patient, Template, Treatment
from reminders.planning import window_for
from reminders.protocols import Protocol
from reminders.settings import Settings
from reminders.templating import TemplateSpec, language_chain

Defaults = Mapping[tuple[str, str, str], TemplateSpec]


def latest(session: Session, step: str, channel: str, language: str) -> Template | None:
    return session.scalar(
        select(Template)
        .where(Template.step == step, Template.channel == channel, Template.language == language)
        .order_by(Template.version.desc())
        .limit(1)
    )


def spec_of(row: Template) -> TemplateSpec:
    return TemplateSpec(
        step=row.step,
        channel=row.channel,
        language=row.language,
        text=row.text,
        subject=row.subject,
        html=row.html,
        content_sid=row.content_sid,
        variables=row.variables,
        version=row.version,
    )


def find(
    session: Session,
    defaults: Defaults,
    step: str,
    channel: str,
    language: str,
    default_language: str,
) -> TemplateSpec | None:
    """The newest staff version in the most specific language, else the shipped default."""
    for lang in language_chain(language, default_language):
        row = latest(session, step, channel, lang)
        if row is not None:
            return spec_of(row)
        if (step, channel, lang) in defaults:
            return defaults[(step, channel, lang)]
    return None


def context(
    patient: Patient, treatment: Treatment, protocol: Protocol, step: str, settings: Settings
) -> dict[str, Any]:
    """What a template may use. Deliberately small: no product, no units, no notes."""
    window = window_for(protocol, treatment.administered_on)
    return {
        "language": patient.language,
        "step": step,
        "patient": {"given_name": patient.given_name, "family_name": patient.family_name},
        "clinic": {"name": settings.clinic_name, "phone": settings.clinic_phone},
        "window": {"open": window.open, "target": window.target, "close": window.close},
        "protocol": {"code": protocol.code, "indication": protocol.indication},
    }


def sample_context(protocol: Protocol, settings: Settings, language: str) -> dict[str, Any]:
    """A made-up patient for previews and for checking a template before it is saved."""
    administered = dt.date(2026, 1, 15)
    window = window_for(protocol, administered)
    return {
        "language": language,
        "step": "due",
        "patient": {"given_name": "Ayşe", "family_name": "Yılmaz"},
        "clinic": {"name": settings.clinic_name, "phone": settings.clinic_phone},
        "window": {"open": window.open, "target": window.target, "close": window.close},
        "protocol": {"code": protocol.code, "indication": protocol.indication},
    }
