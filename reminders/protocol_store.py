"""Protocols as the service uses them: the config file, with staff edits from the console on top.

Each console save is a new :class:`~reminders.models.ProtocolVersion` row (the whole protocol:
indication, intervals and steps); the newest version of a code wins over ``protocols.yaml``.
The planner calls :func:`refresh` at the start of every pass, so every replica picks up an
edit within one planning interval; the saving process refreshes at once. A save also flags the
protocol's treatments ``needs_plan``, so their unsent reminders are re-planned.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from reminders.models import ProtocolVersion, Treatment
from reminders.protocols import Protocol
from reminders.runtime import Runtime


class ProtocolEditError(ValueError):
    """A protocol edit is not valid; ``field`` names the part (``steps.1.offset_days``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def newest_versions(session: Session) -> dict[str, ProtocolVersion]:
    """The newest stored version of every edited protocol, by code."""
    newest = (
        select(ProtocolVersion.code, func.max(ProtocolVersion.version).label("version"))
        .group_by(ProtocolVersion.code)
        .subquery()
    )
    rows = session.scalars(
        select(ProtocolVersion).join(
            newest,
            (ProtocolVersion.code == newest.c.code) & (ProtocolVersion.version == newest.c.version),
        )
    )
    return {row.code: row for row in rows}


def effective(session: Session, config: Mapping[str, Protocol]) -> dict[str, Protocol]:
    """The config protocols with each one's newest staff version in its place."""
    merged = dict(config)
    for code, row in newest_versions(session).items():
        try:
            merged[code] = Protocol.model_validate({**row.body, "code": code})
        except ValidationError:
            continue  # rows are validated when saved; a bad one never hides the config
    return merged


def refresh(session: Session, runtime: Runtime) -> None:
    """Point the runtime at the newest protocols (one assignment: readers see old or new)."""
    runtime.protocols = effective(session, runtime.config_protocols)


def history(session: Session, code: str) -> list[ProtocolVersion]:
    return list(
        session.scalars(
            select(ProtocolVersion)
            .where(ProtocolVersion.code == code)
            .order_by(ProtocolVersion.version.desc())
        )
    )


def validate(code: str, body: Mapping[str, Any]) -> Protocol:
    """The protocol ``body`` describes, or ProtocolEditError naming the first bad field."""
    try:
        return Protocol.model_validate({**body, "code": code})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "protocol"
        raise ProtocolEditError(where, first["msg"].removeprefix("Value error, ")) from None


def save(
    session: Session,
    code: str,
    body: Mapping[str, Any],
    *,
    author: str,
    now: dt.datetime,
    previous: Protocol | None = None,
) -> ProtocolVersion:
    """Store a new version of protocol ``code`` and flag for re-planning every treatment whose
    cycle may still have a step ahead under the old (``previous``) or the new intervals."""
    protocol = validate(code, body)
    stored = protocol.model_dump(mode="json", exclude={"code"})
    current = session.scalar(
        select(func.max(ProtocolVersion.version)).where(ProtocolVersion.code == code)
    )
    row = ProtocolVersion(
        code=code, version=(current or 0) + 1, body=stored, author=author, created_at=now
    )
    session.add(row)
    session.flush()
    longest = max(protocol.max_interval_days, previous.max_interval_days if previous else 0)
    # A step is at most 365 days after the window closes (Step.offset_days).
    since = now.date() - dt.timedelta(days=longest + 366)
    session.execute(
        update(Treatment)
        .where(
            Treatment.protocol == code,
            Treatment.deleted_at.is_(None),
            Treatment.administered_on >= since,
        )
        .values(needs_plan=True)
    )
    return row
