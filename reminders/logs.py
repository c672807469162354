"""Structured logging, with the helpers that keep contact data out of it."""

from __future__ import annotations

import logging
import sys

import structlog


def mask_phone(number: str | None) -> str:
    """``+905431974320`` -> ``+90*******320``: enough to tell numbers apart, not to call."""
    if not number:
        return ""
    bare = number.removeprefix("whatsapp:")
    return bare[:3] + "*" * max(len(bare) - 6, 0) + bare[-3:]


def mask_email(address: str | None) -> str:
    """``ayse.yilmaz@example.com`` -> ``a***@e***.com``."""
    if not address or "@" not in address:
        return ""
    local, _, domain = address.partition("@")
    host, _, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***.{tld}"


def mask_address(channel: str, address: str | None) -> str:
    return mask_email(address) if channel == "email" else mask_phone(address)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """JSON lines (or a readable console form) on stderr, one line per event."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processor=renderer)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The SDKs log request lines (with phone numbers in URLs and bodies) at INFO.
    for noisy in ("twilio.http_client", "python_http_client", "apscheduler", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
