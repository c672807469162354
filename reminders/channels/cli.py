"""``reminders send-test``: one real message through a configured channel, and what the
provider answered. It renders the step's template (staff version when the database has one)
with the made-up sample patient the console previews use."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import click
import phonenumbers
from sqlalchemy.exc import SQLAlchemyError

from reminders import template_store
from reminders.channels import Attachment, ChannelError, OutboundMessage, Receipt
from reminders.channels.calendar import FILENAME, MIME_TYPE, window_event
from reminders.channels.registry import CHANNELS, build_senders, channel_status
from reminders.logs import configure as configure_logging
from reminders.logs import mask_address
from reminders.planning import Window
from reminders.runtime import Runtime, build_runtime
from reminders.settings import ConfigError, Settings, load_settings, normalise_language
from reminders.templating import Rendered, TemplateError, TemplateSpec, language_chain, render


@click.command("send-test")
@click.option("--channel", required=True, type=click.Choice(CHANNELS), help="Channel to test.")
@click.option("--to", "to", required=True, help="Phone number (E.164 or national) or email.")
@click.option("--step", default="due", show_default=True, help="Template step to send.")
@click.option("--language", default=None, help="Template language [default: the clinic's].")
@click.option("--protocol", default=None, help="Protocol for the sample dates [default: first].")
@click.option("--content-sid", default=None, help="WhatsApp: an approved ContentSid (HX...).")
def send_test(
    channel: str,
    to: str,
    step: str,
    language: str | None,
    protocol: str | None,
    content_sid: str | None,
) -> None:
    """Send one test message through a configured channel and print the provider's answer."""
    settings = _settings()
    reason = channel_status(settings)[channel]
    if reason is not None:
        raise click.ClickException(f"channel {channel} is off: {reason}")
    address = _address(channel, to, settings.clinic_country)
    configure_logging(settings.log_level, settings.log_format)
    runtime = _runtime(settings)
    try:
        message = _message(runtime, channel, address, step, language, protocol, content_sid)
        try:
            receipt = runtime.senders[channel].send(message)
        except ChannelError as exc:
            _print_refusal(channel, address, exc)
            raise click.exceptions.Exit(1) from None
        _print_receipt(channel, address, receipt)
    finally:
        runtime.close()


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def _runtime(settings: Settings) -> Runtime:
    try:
        return build_runtime(settings, build_senders(settings))
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def _address(channel: str, to: str, country: str) -> str:
    """The address as the provider wants it: an email, or a phone number in E.164."""
    if channel == "email":
        if "@" not in to.strip(" @"):
            raise click.BadParameter(f"{to!r} is not an email address", param_hint="--to")
        return to.strip()
    try:
        number = phonenumbers.parse(to.removeprefix("whatsapp:"), country)
    except phonenumbers.NumberParseException:
        number = None
    if number is None or not phonenumbers.is_valid_number(number):
        raise click.BadParameter(f"{to!r} is not a valid phone number", param_hint="--to")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _message(
    runtime: Runtime,
    channel: str,
    address: str,
    step: str,
    language: str | None,
    protocol_code: str | None,
    content_sid: str | None,
) -> OutboundMessage:
    protocol = runtime.protocols.get(protocol_code or sorted(runtime.protocols)[0])
    if protocol is None:
        raise click.BadParameter(f"unknown protocol {protocol_code!r}", param_hint="--protocol")
    spec = _spec(runtime, channel, step, language, content_sid)
    context = template_store.sample_context(protocol, runtime.settings, spec.language)
    content = _render(spec, context)
    if channel == "whatsapp" and not content.content_sid:
        raise click.ClickException(
            f"the {step!r} WhatsApp template has no approved ContentSid: pass --content-sid HX..."
        )
    delivery = f"test{uuid.uuid4().hex[:28]}"
    attachments = _calendar(runtime, content, context) if channel == "email" else ()
    return OutboundMessage(channel, address, content, delivery, 0, attachments)


def _spec(
    runtime: Runtime, channel: str, step: str, language: str | None, content_sid: str | None
) -> TemplateSpec:
    try:
        lang = normalise_language(language or runtime.settings.default_language)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--language") from None
    spec = _template(runtime, step, channel, lang)
    if spec is None:
        raise click.ClickException(f"no {channel} template for step {step!r}")
    return dataclasses.replace(spec, content_sid=content_sid) if content_sid else spec


def _calendar(
    runtime: Runtime, content: Rendered, context: dict[str, Any]
) -> tuple[Attachment, ...]:
    ics = window_event(
        uid=f"send-test-{uuid.uuid4().hex}@reminders.invalid",
        window=Window(**context["window"]),
        summary=content.subject or content.text[:60],
        description=content.text,
        stamp=runtime.clock(),
    )
    return (Attachment(FILENAME, MIME_TYPE, ics),)


def _template(runtime: Runtime, step: str, channel: str, language: str) -> TemplateSpec | None:
    """The staff version from the database when it can be read, else the shipped default."""
    default = runtime.settings.default_language
    try:
        with runtime.sessions() as session:
            return template_store.find(session, runtime.templates, step, channel, language, default)
    except SQLAlchemyError:
        click.echo("note: database not readable, using the default templates", err=True)
    keys = [(step, channel, lang) for lang in language_chain(language, default)]
    return next((runtime.templates[k] for k in keys if k in runtime.templates), None)


def _render(spec: TemplateSpec, context: dict[str, Any]) -> Rendered:
    try:
        return render(spec, context)
    except TemplateError as exc:
        where = f"{spec.step}/{spec.channel}/{spec.language}"
        raise click.ClickException(f"template {where}: {exc}") from None


def _print_receipt(channel: str, address: str, receipt: Receipt) -> None:
    click.echo(f"{channel} to {mask_address(channel, address)}: {receipt.status}")
    click.echo(f"  provider id: {receipt.provider_id or '(none given)'}")
    for key, value in receipt.details.items():
        click.echo(f"  {key}: {value}")


def _print_refusal(channel: str, address: str, exc: ChannelError) -> None:
    click.echo(f"{channel} to {mask_address(channel, address)}: refused")
    click.echo(f"  kind: {exc.kind}\n  code: {exc.code}\n  message: {exc}")
    if exc.retry_after is not None:
        click.echo(f"  retry after: {exc.retry_after:.0f} s")
