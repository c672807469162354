"""``reminders users add EMAIL``."""

import click


@click.group("users")
def users() -> None:
    """Manage staff console accounts."""
