from reminders.cli import run_cli

run_cli()
