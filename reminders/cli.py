"""The command line, and the composition root: settings are read once here and every part
(engine, channels, scheduler, web app) is built from them."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from reminders import migrate as migrations
from reminders.channels.registry import build_senders, channel_status
from reminders.interpreter import tune_for_service, tune_interpreter
from reminders.logs import configure as configure_logging
from reminders.logs import get_logger
from reminders.runtime import Runtime, build_runtime
from reminders.settings import ConfigError, Settings, env_name, load_settings

log = get_logger("reminders.cli")


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def _runtime(settings: Settings, *, channels: bool = True) -> Runtime:
    _check_database_url(settings.database_url)
    configure_logging(settings.log_level, settings.log_format, _secrets(settings))
    try:
        runtime = build_runtime(settings)  # the config folder first: its error is the one line
        runtime.senders.update(build_senders(settings) if channels else {})
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    return runtime


def _check_database_url(url: str) -> None:
    """A URL that SQLAlchemy can use with an installed driver, or one line naming the variable
    (never the URL itself: it may hold a password)."""
    try:
        make_url(url).get_dialect().import_dbapi()
        return
    except ArgumentError:
        problem = "not a database URL (e.g. postgresql+psycopg://user:password@host:5432/db)"
    except NoSuchModuleError:
        kind = url.partition(":")[0]
        problem = f"unknown kind of database {kind!r} (use postgresql+psycopg:// or sqlite://)"
    except ImportError as exc:
        problem = f"its database driver is not installed ({exc.name})"
    raise click.ClickException(f"configuration: {env_name('database_url')}: {problem}")


def _secrets(settings: Settings) -> list[str]:
    """Values that no log line may show: every secret setting, and the password of each
    database URL."""
    values = [v.get_secret_value() for _, v in settings if isinstance(v, SecretStr)]
    return [*values, *(_password(v) for v in [settings.database_url, *values] if "://" in v)]


def _password(url: str) -> str:
    try:
        return make_url(url).password or ""
    except ArgumentError:
        return ""


@contextmanager
def _database_errors() -> Iterator[None]:
    """A database that cannot be used ends the command with one line, not a traceback."""
    try:
        yield
    except DBAPIError as exc:
        message = f"{env_name('database_url')}: cannot use the database: {migrations.describe(exc)}"
        raise click.ClickException(message) from None


@click.group()
@click.version_option(package_name="reminders")
def main() -> None:
    """Repeat-injection reminders by email, SMS and WhatsApp."""


@main.command()
def migrate() -> None:
    """Upgrade the database to the newest schema (waiting for the database to come up)."""
    runtime = _runtime(_settings(), channels=False)
    engine = runtime.engine
    with _database_errors():
        migrations.when_available(engine, lambda: migrations.upgrade(engine))
        log.info("schema_at_head", revision=migrations.current_revision(engine))
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
    """Run the service: scheduler and HTTP server, until SIGTERM or SIGINT. Waits for the
    database to come up first; then an outage only pauses the work (``/readyz`` says so)."""
    runtime = _runtime(_settings())
    _require_schema(runtime, wait=True)
    _serve(runtime)


def _serve(runtime: Runtime, banner: Callable[[], None] | None = None) -> None:
    import uvicorn

    from reminders.service import Service
    from reminders.web.app import create_app
    from reminders.web.server import Server

    service = Service(runtime)
    s = runtime.settings
    config = uvicorn.Config(
        create_app(runtime),
        host=s.http_host,
        port=s.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=3,  # then up to 5 s for sends in flight: out within 10 s
    )
    server = Server(config, on_exit=service.request_stop)
    tune_for_service()
    service.start()
    if banner:
        banner()
    try:
        server.run()  # returns on SIGTERM / SIGINT
    finally:
        try:
            service.stop()
        except DBAPIError as exc:  # the database is away: the claims' leases will run out
            log.error("claims_not_given_back", error=migrations.describe(exc))
        runtime.close()


def _require_schema(runtime: Runtime, *, wait: bool = False) -> None:
    """The schema must be at head (or newer: a rolling upgrade, see
    :func:`reminders.migrate.schema_problem`); with ``wait``, an unreachable database is
    waited for."""
    check = functools.partial(migrations.compatible, runtime.engine)
    with _database_errors():
        ready = migrations.when_available(runtime.engine, check) if wait else check()
    if not ready:
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


def run_cli() -> None:  # pragma: no cover - the `reminders` command and python -m reminders
    tune_interpreter()
    main(prog_name="reminders")


if __name__ == "__main__":  # pragma: no cover
    run_cli()
