"""The composition root's product: everything a running service needs, built once."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from reminders.channels import Sender
from reminders.db import make_engine, make_sessionmaker
from reminders.metrics import Metrics
from reminders.planning import SendWindow, Timing
from reminders.protocols import Protocol, load_protocols
from reminders.settings import Settings
from reminders.templating import TemplateSpec, load_default_templates

Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    protocols: dict[str, Protocol]
    templates: dict[tuple[str, str, str], TemplateSpec]
    senders: dict[str, Sender] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    clock: Clock = system_clock
    # protocols.yaml as read at start; `protocols` is this with staff edits on top
    # (reminders.protocol_store.refresh).
    config_protocols: dict[str, Protocol] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.config_protocols:
            self.config_protocols = dict(self.protocols)

    @property
    def timing(self) -> Timing:
        s = self.settings
        return Timing(SendWindow(s.send_window_start, s.send_window_end), s.send_time)

    def close(self) -> None:
        self.engine.dispose()


def build_runtime(
    settings: Settings, senders: dict[str, Sender] | None = None, clock: Clock = system_clock
) -> Runtime:
    """Read the config folder and connect to the database (no schema change here)."""
    engine = make_engine(settings.database_url)
    return Runtime(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        protocols=load_protocols(settings.config_dir),
        templates=load_default_templates(settings.config_dir),
        senders=dict(senders or {}),
        clock=clock,
    )
