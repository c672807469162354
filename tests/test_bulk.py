"""Lookups by many values (``among``) and the COPY text of bulk writes, on the real database.

On PostgreSQL integers, and text without a control character, go as one string the server
splits (``pg_array``); everything else as an array parameter. Both must find exactly the
rows asked for.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy import select

from reminders.importing.bulk import among, copy_value, patient_ids
from reminders.models import Patient
from reminders.runtime import Runtime
from tests import factories

AWKWARD = ["plain", "with,comma", "with space", "quote'd", 'dq"', "back\\slash", "{brace}", "çiğ"]


def test_lookups_by_many_values_find_exactly_those(runtime: Runtime) -> None:
    with runtime.sessions() as s, s.begin():
        made = {e: factories.patient(s, external_id=e).id for e in [*AWKWARD, "NULL", "other"]}
    with runtime.sessions() as s:
        assert patient_ids(s, AWKWARD) == {e: made[e] for e in AWKWARD}
        assert patient_ids(s, ["NULL", "missing"]) == {"NULL": made["NULL"]}
        # Not the split form: a separator, or an empty value, go as an array.
        assert patient_ids(s, ["plain", "x\x1fy", ""]) == {"plain": made["plain"]}
        wanted = [made["plain"], made["çiğ"], 10**9]
        found = s.scalars(select(Patient.external_id).where(among(s, Patient.id, wanted)))
        assert sorted(found) == ["plain", "çiğ"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "\\N"),
        ("a\\b\tc\nd\re", "a\\\\b\\tc\\nd\\re"),
        ("\\N", "\\\\N"),
        (True, "t"),
        (False, "f"),
        (42, "42"),
        (Decimal("155.50"), "155.50"),
        (dt.date(2026, 2, 20), "2026-02-20"),
        (
            dt.datetime(2026, 3, 4, 7, 0, 0, 123456, tzinfo=dt.UTC),
            "2026-03-04T07:00:00.123456+00:00",
        ),
    ],
)
def test_copy_text_of_each_kind_of_value(value: object, text: str) -> None:
    assert copy_value(value) == text


def test_copy_text_refuses_what_it_cannot_say_exactly() -> None:
    with pytest.raises(ValueError, match="naive"):
        copy_value(dt.datetime(2026, 3, 4, 7, 0))
    with pytest.raises(TypeError, match="float"):
        copy_value(1.5)
