"""``reminders send-test``."""

import click


@click.command("send-test")
def send_test() -> None:
    """Send one test message through a configured channel."""
    raise click.ClickException("not available yet")
