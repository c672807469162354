"""Helpers for the tests that run ``reminders`` as separate processes, as ops do."""
