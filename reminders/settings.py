"""Settings: environment variables over an optional ``settings.toml`` in the config folder.

Read once, at start, by the composition root (:mod:`reminders.cli`), into a frozen
:class:`Settings`. A bad value raises :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import tomllib
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import phonenumbers
from babel import Locale, UnknownLocaleError
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic import field_validator as validator

SETTINGS_FILE = "settings.toml"


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it."""


def _env(default: Any, name: str, *more: str) -> Any:
    return Field(default, validation_alias=AliasChoices(name, *more))


class Settings(BaseModel):
    """Every knob of the service. Field aliases are the environment variable names."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", populate_by_name=True, validate_default=True
    )

    database_url: str = _env("sqlite:///reminders.db", "REMINDERS_DATABASE_URL", "database_url")
    config_dir: Path = _env("config", "REMINDERS_CONFIG_DIR", "config_dir")
    http_host: str = _env("127.0.0.1", "REMINDERS_HTTP_HOST", "http_host")
    http_port: int = _env(8000, "REMINDERS_HTTP_PORT", "http_port")
    public_url: str | None = _env(None, "REMINDERS_PUBLIC_URL", "public_url")
    secret_key: SecretStr | None = _env(None, "REMINDERS_SECRET_KEY", "secret_key")
    api_token: SecretStr | None = _env(None, "REMINDERS_API_TOKEN", "api_token")
    # The clinic's own database to sync from (reminders.importing.sync): environment only.
    sync_database_url: SecretStr | None = _env(
        None, "REMINDERS_SYNC_DATABASE_URL", "sync_database_url"
    )
    sync_interval: float = _env(300.0, "REMINDERS_SYNC_INTERVAL", "sync_interval")
    clinic_country: str = _env("TR", "REMINDERS_CLINIC_COUNTRY", "clinic_country")
    clinic_timezone: str = _env("Europe/Istanbul", "REMINDERS_CLINIC_TIMEZONE", "clinic_timezone")
    clinic_name: str = _env("the clinic", "REMINDERS_CLINIC_NAME", "clinic_name")
    clinic_phone: str = _env("", "REMINDERS_CLINIC_PHONE", "clinic_phone")
    default_language: str = _env("en", "REMINDERS_DEFAULT_LANGUAGE", "default_language")
    send_window_start: dt.time = _env("09:00", "REMINDERS_SEND_WINDOW_START", "send_window_start")
    send_window_end: dt.time = _env("20:00", "REMINDERS_SEND_WINDOW_END", "send_window_end")
    send_time: dt.time = _env("10:00", "REMINDERS_SEND_TIME", "send_time")
    delivery_mode: Literal["live", "console"] = _env(
        "live", "REMINDERS_DELIVERY_MODE", "delivery_mode"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _env(
        "INFO", "REMINDERS_LOG_LEVEL", "log_level"
    )
    log_format: Literal["json", "console"] = _env("json", "REMINDERS_LOG_FORMAT", "log_format")
    dispatch_interval: float = _env(10.0, "REMINDERS_DISPATCH_INTERVAL", "dispatch_interval")
    planning_interval: float = _env(60.0, "REMINDERS_PLANNING_INTERVAL", "planning_interval")
    housekeeping_interval: float = _env(
        60.0, "REMINDERS_HOUSEKEEPING_INTERVAL", "housekeeping_interval"
    )
    dispatch_batch_size: int = _env(100, "REMINDERS_DISPATCH_BATCH_SIZE", "dispatch_batch_size")
    dispatch_concurrency: int = _env(4, "REMINDERS_DISPATCH_CONCURRENCY", "dispatch_concurrency")
    dispatch_ahead: int = _env(0, "REMINDERS_DISPATCH_AHEAD", "dispatch_ahead")
    lease_seconds: int = _env(300, "REMINDERS_LEASE_SECONDS", "lease_seconds")
    in_doubt_grace_seconds: int = _env(
        900, "REMINDERS_IN_DOUBT_GRACE_SECONDS", "in_doubt_grace_seconds"
    )
    webhook_max_age_seconds: int = _env(
        600, "REMINDERS_WEBHOOK_MAX_AGE_SECONDS", "webhook_max_age_seconds"
    )
    max_attempts: int = _env(12, "REMINDERS_MAX_ATTEMPTS", "max_attempts")
    retry_base_seconds: float = _env(30.0, "REMINDERS_RETRY_BASE_SECONDS", "retry_base_seconds")
    retry_max_seconds: float = _env(3600.0, "REMINDERS_RETRY_MAX_SECONDS", "retry_max_seconds")
    provider_timeout: float = _env(10.0, "REMINDERS_PROVIDER_TIMEOUT", "provider_timeout")
    email_rate: float = _env(50.0, "REMINDERS_EMAIL_RATE", "email_rate")
    sms_rate: float = _env(1.0, "REMINDERS_SMS_RATE", "sms_rate")
    whatsapp_rate: float = _env(80.0, "REMINDERS_WHATSAPP_RATE", "whatsapp_rate")

    sendgrid_api_key: SecretStr | None = _env(None, "SENDGRID_API_KEY", "sendgrid_api_key")
    sendgrid_from_email: str | None = _env(None, "SENDGRID_FROM_EMAIL", "sendgrid_from_email")
    sendgrid_api_host: str = _env(
        "https://api.sendgrid.com", "SENDGRID_API_HOST", "sendgrid_api_host"
    )
    sendgrid_webhook_public_key: str | None = _env(
        None, "SENDGRID_WEBHOOK_PUBLIC_KEY", "sendgrid_webhook_public_key"
    )
    sendgrid_unsubscribe_group_id: int | None = _env(
        None, "SENDGRID_UNSUBSCRIBE_GROUP_ID", "sendgrid_unsubscribe_group_id"
    )
    sendgrid_template_id: str | None = _env(None, "SENDGRID_TEMPLATE_ID", "sendgrid_template_id")
    twilio_account_sid: str | None = _env(None, "TWILIO_ACCOUNT_SID", "twilio_account_sid")
    twilio_auth_token: SecretStr | None = _env(None, "TWILIO_AUTH_TOKEN", "twilio_auth_token")
    twilio_messaging_service_sid: str | None = _env(
        None, "TWILIO_MESSAGING_SERVICE_SID", "twilio_messaging_service_sid"
    )
    twilio_sms_from: str | None = _env(None, "TWILIO_SMS_FROM", "twilio_sms_from")
    twilio_whatsapp_from: str | None = _env(None, "TWILIO_WHATSAPP_FROM", "twilio_whatsapp_from")
    twilio_api_base_url: str = _env(
        "https://api.twilio.com", "TWILIO_API_BASE_URL", "twilio_api_base_url"
    )

    @validator("clinic_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not is_timezone(value):
            raise ValueError(f"unknown IANA time zone {value!r}")
        return value

    @validator("clinic_country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        value = value.upper()
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown country code {value!r} (use ISO 3166 alpha-2, e.g. TR)")
        return value

    @validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: object) -> object:
        """``info`` means INFO, as in most tools."""
        return value.strip().upper() if isinstance(value, str) else value

    @validator("log_format", mode="before")
    @classmethod
    def _format_any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @validator("default_language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        return normalise_language(value)

    @validator(
        "dispatch_interval",
        "planning_interval",
        "housekeeping_interval",
        "provider_timeout",
        "email_rate",
        "sms_rate",
        "whatsapp_rate",
        "retry_base_seconds",
        "retry_max_seconds",
        "sync_interval",
    )
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @validator(
        "dispatch_batch_size", "dispatch_concurrency", "lease_seconds", "max_attempts", "http_port"
    )
    @classmethod
    def _positive_int(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @validator("dispatch_ahead")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @validator("webhook_max_age_seconds")
    @classmethod
    def _positive_age(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @validator("public_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        """Providers sign the exact URL they call, so this must be one: scheme, host, no query."""
        if not value:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(f"{value!r} is not a base URL like https://reminders.example.org")
        return value.strip().rstrip("/")

    @validator("sendgrid_webhook_public_key")
    @classmethod
    def _ec_public_key(cls, value: str | None) -> str | None:
        """The signed event webhook's verification key: base64 DER of a P-256 public key."""
        if not value:
            return None
        try:
            key = serialization.load_der_public_key(base64.b64decode(value.strip(), validate=True))
        except (ValueError, binascii.Error, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("not a base64 ECDSA public key (SendGrid Event Webhook settings)")
        return value.strip()

    @model_validator(mode="after")
    def _window_in_order(self) -> Settings:
        if self.send_window_start >= self.send_window_end:
            raise ValueError("REMINDERS_SEND_WINDOW_START must be before REMINDERS_SEND_WINDOW_END")
        return self

    @property
    def clinic_zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.clinic_timezone)


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices)
    first = alias.choices[0]
    assert isinstance(first, str)
    return first


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``) over ``settings.toml``."""
    environ = os.environ if environ is None else environ
    config_dir = Path(environ.get("REMINDERS_CONFIG_DIR") or default_config_dir())
    values: dict[str, Any] = {"config_dir": config_dir}
    values.update(_read_file(config_dir / SETTINGS_FILE))
    for field in Settings.model_fields:
        raw = environ.get(env_name(field))
        if raw is not None and raw.strip() != "":
            values[field] = raw.strip()
    values.update(overrides)
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def default_config_dir() -> Path:
    """``./config`` when there is one, else the defaults shipped inside the package."""
    local = Path("config")
    packaged = Path(__file__).resolve().parent / "_config"
    return packaged if not local.is_dir() and packaged.is_dir() else local


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    if "sync_database_url" in data:  # it holds the source's credentials
        raise ConfigError(f"{path}: sync_database_url comes from REMINDERS_SYNC_DATABASE_URL only")
    return data


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if field in Settings.model_fields:
            message = f"{env_name(field)}: {message}"
        lines.append(message)
    return "; ".join(lines)


def is_timezone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: name too long
        return False
    return True


def normalise_language(code: str) -> str:
    """A valid language code in canonical form (``tr``, ``pt_BR``), or ValueError."""
    cleaned = code.strip().replace("-", "_")
    try:
        locale = Locale.parse(cleaned)
    except (UnknownLocaleError, ValueError):
        raise ValueError(f"unknown language code {code!r}") from None
    return str(locale)
