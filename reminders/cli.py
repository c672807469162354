"""The command line, and the composition root: settings are read once here and every part
(engine, channels, scheduler, web app) is built from them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import click

from reminders import migrate as migrations
from reminders.channels.registry import build_senders, channel_status
from reminders.logs import configure as configure_logging
from reminders.runtime import Runtime, build_runtime
from reminders.settings import ConfigError, Settings, load_settings


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def _runtime(settings: Settings, *, channels: bool = True) -> Runtime:
    configure_logging(settings.log_level, settings.log_format)
    try:
        return build_runtime(settings, build_senders(settings) if channels else {})
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


@click.group()
@click.version_option(package_name="reminders")
def main() -> None:
    """Repeat-injection reminders by email, SMS and WhatsApp."""


@main.command()
def migrate() -> None:
    """Upgrade the database to the newest schema."""
    settings = _settings()
    runtime = _runtime(settings, channels=False)
    migrations.upgrade(runtime.engine)
    click.echo(f"database at {migrations.current_revision(runtime.engine)} (head)")
    runtime.close()


def _parse_now(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> dt.datetime | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not ISO-8601 (e.g. 2026-12-01T09:30:00+03:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@main.command()
@click.option(
    "--now", callback=_parse_now, help="Pretend it is this instant (ISO-8601; UTC if no offset)."
)
def tick(now: dt.datetime | None) -> None:
    """One planning and dispatch pass, then exit (for cron and tests)."""
    from reminders.service import Service

    runtime = _runtime(_settings())
    _require_schema(runtime)
    service = Service(runtime)
    try:
        result = service.tick(now)
    finally:
        service.dispatcher.close()
        runtime.close()
    click.echo(" ".join(f"{k}={v}" for k, v in sorted(result.items())) or "nothing to do")


@main.command()
def run() -> None:
    """Run the service: scheduler and HTTP server, until SIGTERM or SIGINT."""
    runtime = _runtime(_settings())
    _require_schema(runtime)
    _serve(runtime)


def _serve(runtime: Runtime, banner: Callable[[], None] | None = None) -> None:
    import uvicorn

    from reminders.service import Service
    from reminders.web.app import create_app

    service = Service(runtime)
    s = runtime.settings
    config = uvicorn.Config(
        create_app(runtime),
        host=s.http_host,
        port=s.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    service.start()
    if banner:
        banner()
    try:
        server.run()  # returns on SIGTERM / SIGINT
    finally:
        service.stop()
        runtime.close()


def _require_schema(runtime: Runtime) -> None:
    if not migrations.at_head(runtime.engine):
        raise click.ClickException("the database schema is not at head: run `reminders migrate`")


@main.command("check-config")
def check_config() -> None:
    """Validate settings, protocols and templates; say which channels are on."""
    settings = _settings()
    runtime = _runtime(settings, channels=False)
    click.echo(f"settings: ok (database {settings.database_url.split('@')[-1]})")
    click.echo(f"protocols: {', '.join(sorted(runtime.protocols))}")
    click.echo(f"templates: {len(runtime.templates)} defaults")
    for channel, reason in channel_status(settings).items():
        click.echo(f"channel {channel}: {'on' if reason is None else 'off (' + reason + ')'}")
    try:
        ready = migrations.at_head(runtime.engine)
        click.echo(f"database: {'at head' if ready else 'needs `reminders migrate`'}")
    except Exception as exc:
        click.echo(f"database: unreachable ({type(exc).__name__})")
    runtime.close()


@main.command()
@click.option(
    "--database",
    default="sqlite:///reminders-demo.db",
    show_default=True,
    help="A SQLite URL for the demo's own data.",
)
@click.option(
    "--port", default=None, type=int, help="HTTP port (default REMINDERS_HTTP_PORT or 8000)."
)
def demo(database: str, port: int | None) -> None:
    """Try it out: sample patients, console channel, staff console on 127.0.0.1."""
    from reminders import demo as sample
    from reminders.planner import plan_pending

    if not database.startswith("sqlite"):
        raise click.BadParameter("the demo only uses a local SQLite file", param_hint="--database")
    overrides: dict[str, Any] = {
        "database_url": database,
        "delivery_mode": "console",
        "log_format": "console",
        "dispatch_interval": 5.0,
        "planning_interval": 5.0,
        "sms_rate": 5.0,
    }
    if port:
        overrides["http_port"] = port
    settings = _settings(**overrides)
    runtime = _runtime(settings)
    migrations.upgrade(runtime.engine)
    now = runtime.clock()
    lengths = {c: (p.min_interval_days, p.max_interval_days) for c, p in runtime.protocols.items()}
    with runtime.sessions() as session, session.begin():
        added = sample.seed(session, lengths, runtime.timing.send_window, now=now)
    plan_pending(runtime, now=now)

    def banner() -> None:
        click.echo(
            f"demo: {added} sample patients added to {database}"
            if added
            else f"demo: using the sample patients already in {database}"
        )
        click.echo(
            f"demo: reminders print below as they go out; staff console on "
            f"http://{settings.http_host}:{settings.http_port}/admin ; Ctrl-C to stop"
        )

    _serve(runtime, banner)


def _register_commands() -> None:
    from reminders.channels.cli import send_test
    from reminders.importing.cli import import_group
    from reminders.web.console.cli import users

    for command in (send_test, import_group, users):
        main.add_command(command)


_register_commands()


def run_cli() -> None:  # pragma: no cover - console entry for python -m
    main(prog_name="reminders")


if __name__ == "__main__":  # pragma: no cover
    run_cli()
