"""``reminders users add EMAIL [--role staff|admin] [--password-stdin]``."""

from __future__ import annotations

import sys

import click


@click.group("users")
def users() -> None:
    """Manage staff console accounts."""


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@users.command("add")
@click.argument("email")
@click.option(
    "--role",
    type=click.Choice(["staff", "admin"]),
    default="staff",
    show_default=True,
    help="admin may also edit protocols and manage users.",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
)
def add(email: str, role: str, password_stdin: bool) -> None:
    """Create a console account for EMAIL (asks for the password twice)."""
    from reminders import auth
    from reminders.cli import _require_schema, _runtime, _settings

    runtime = _runtime(_settings(), channels=False)
    try:
        _require_schema(runtime)
        password = _read_password(password_stdin)
        with runtime.sessions() as session, session.begin():
            user = auth.create_user(session, email, password, role)
            click.echo(f"added {user.email} ({user.role})")
    except auth.AccountError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        runtime.close()
