"""``reminders import patients|treatments FILE.csv``."""

import click


@click.group("import")
def import_group() -> None:
    """Import patients or treatments from a CSV file."""
