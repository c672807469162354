"""``reminders import patients|treatments FILE.csv`` and ``reminders import sync``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from reminders.importing.csv import CsvFileError, Kind, Progress, Report, import_scanned, scan_file

# Files with at least this many rows get a progress bar on stderr.
PROGRESS_ROWS = 5000
FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.group("import")
def import_group() -> None:
    """Import patients or treatments from a CSV file, or sync from the clinic's database."""


def _options(func: click.decorators.FC) -> click.decorators.FC:
    func = click.option(
        "--skip-invalid", is_flag=True, help="Import the good rows and list the bad ones."
    )(func)
    func = click.option(
        "--dry-run", is_flag=True, help="Check and report what would change; write nothing."
    )(func)
    return click.argument("file", type=FILE)(func)


@import_group.command("patients")
@_options
def patients(file: Path, dry_run: bool, skip_invalid: bool) -> None:
    """Create or update patients from FILE.csv (by external_id)."""
    _run("patients", file, dry_run, skip_invalid)


@import_group.command("treatments")
@_options
def treatments(file: Path, dry_run: bool, skip_invalid: bool) -> None:
    """Create or update treatments from FILE.csv (by external_id) and plan their reminders."""
    _run("treatments", file, dry_run, skip_invalid)


def _run(kind: Kind, file: Path, dry_run: bool, skip_invalid: bool) -> None:
    from reminders.cli import _require_schema, _runtime, _settings

    runtime = _runtime(_settings(), channels=False)
    try:
        _require_schema(runtime)
        scan = scan_file(file, kind)
        with _progress(scan.rows, kind) as progress:
            report = import_scanned(
                runtime,
                scan,
                now=runtime.clock(),
                dry_run=dry_run,
                skip_invalid=skip_invalid,
                progress=progress,
            )
    except CsvFileError as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    finally:
        runtime.close()
    _print(report, file, dry_run)


@contextlib.contextmanager
def _progress(rows: int, kind: Kind) -> Iterator[Progress | None]:
    if rows < PROGRESS_ROWS:
        yield None
        return
    label = f"importing {kind}"
    with click.progressbar(length=2 * rows, label=label, file=sys.stderr) as bar:
        yield bar.update


def _print(report: Report, file: Path, dry_run: bool) -> None:
    for error in report.errors:
        click.echo(f"{file}: {error.describe()}", err=True)
    if report.refused:
        good = report.rows - report.bad_rows
        hint = f", or use --skip-invalid to import the other {good}" if good else ""
        raise click.ClickException(
            f"{report.bad_rows} of {report.rows} rows are invalid: nothing imported "
            f"(fix them{hint})"
        )
    skipped = f"; {report.bad_rows} invalid rows skipped" if report.errors else ""
    if dry_run:
        click.echo(f"dry run, nothing written: {report.kind} would be {report.counts}{skipped}")
    else:
        click.echo(f"{report.kind}: {report.counts}{skipped}")


@import_group.command("sync")
@click.option(
    "--full", is_flag=True, help="Read every row, ignoring the cursor (and delete what is gone)."
)
def sync(full: bool) -> None:
    """Sync once from the clinic's database (REMINDERS_SYNC_DATABASE_URL, config/sync.toml)."""
    from sqlalchemy.exc import SQLAlchemyError

    from reminders.cli import _require_schema, _runtime, _settings
    from reminders.importing.source import load_sync_config
    from reminders.importing.sync import describe_failure, run_sync
    from reminders.settings import ConfigError

    runtime = _runtime(_settings(), channels=False)
    try:
        _require_schema(runtime)
        config = load_sync_config(runtime.settings.config_dir)
        report = run_sync(runtime, config, now=runtime.clock(), full=full)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None
    except SQLAlchemyError as exc:
        raise click.ClickException(f"sync failed: {describe_failure(exc)}") from None
    finally:
        runtime.close()
    for error in report.errors:
        click.echo(error.describe("field"), err=True)
    if report.skipped:
        click.echo(f"sync skipped: {report.skipped}")
        return
    skipped = f"; {len({e.number for e in report.errors})} invalid rows skipped"
    click.echo(
        f"patients: {report.patients}; treatments: {report.treatments}"
        + (skipped if report.errors else "")
    )
