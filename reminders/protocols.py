"""Protocols and their reminder steps, read from ``protocols.yaml`` in the config folder."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reminders.settings import ConfigError

PROTOCOLS_FILE = "protocols.yaml"


class Anchor(enum.StrEnum):
    WINDOW_OPEN = "window_open"
    TARGET = "target"
    WINDOW_CLOSE = "window_close"


class Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    anchor: Anchor
    offset_days: int = Field(ge=-365, le=365)
    lead: bool = False


class Protocol(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    indication: str
    min_interval_days: int = Field(gt=0)
    target_interval_days: int = Field(gt=0)
    max_interval_days: int = Field(gt=0)
    steps: tuple[Step, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> Protocol:
        if not self.min_interval_days <= self.target_interval_days <= self.max_interval_days:
            raise ValueError("needs min_interval_days <= target_interval_days <= max_interval_days")
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names repeat: {names}")
        return self


def load_protocols(config_dir: Path) -> dict[str, Protocol]:
    """All protocols by code; a bad file raises ConfigError naming the protocol and field."""
    path = config_dir / PROTOCOLS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (REMINDERS_CONFIG_DIR={config_dir})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_protocols(data, str(path))


def parse_protocols(data: Any, where: str) -> dict[str, Protocol]:
    if not isinstance(data, dict) or not isinstance(data.get("protocols"), dict):
        raise ConfigError(f"{where}: needs a 'protocols' mapping")
    shared = data.get("steps", [])
    protocols = {}
    for code, body in data["protocols"].items():
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: protocol {code}: needs a mapping")
        try:
            protocols[code] = Protocol.model_validate({"code": code, "steps": shared, **body})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{where}: protocol {code}: {loc}: {first['msg']}") from None
    return protocols
