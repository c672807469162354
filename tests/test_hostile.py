"""Hostile input, generated with hypothesis: CSV rows through the import, API payloads and
setting values. (Webhooks: ``test_hostile_webhooks.py``; templates:
``test_hostile_templates.py``.)

What must hold whatever comes in: never a traceback or a 5xx; a refusal is a clear error that
names the line, the field or the variable; and a refusal leaves the database as it was (not one
INSERT, UPDATE or DELETE). Example counts stay modest so each file runs in well under a minute.
"""

from __future__ import annotations

import csv
import io
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from reminders.importing.csv import CsvFileError, import_csv
from reminders.records import PATIENT_FIELDS, TREATMENT_FIELDS
from reminders.runtime import Runtime
from reminders.settings import ConfigError, Settings, env_name, load_settings
from reminders.web.app import create_app
from tests.conftest import CONFIG
from tests.hostile_support import (
    FEW,
    MANY,
    SOME,
    attempt,
    hostile_text,
    json_values,
    no_tracebacks,
    one_line,
)
from tests.test_import_csv import statements_that_write
from tests.webhook_support import NOW

TOKEN = "hostile-test-token"
AYSE = {"given_name": "Ayşe", "email": "ayse@example.com", "consent_email": "yes"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# CSV rows ------------------------------------------------------------------------------------

PATIENT_ROW = {
    "external_id": "hp-{n}",
    "given_name": "Ayşe",
    "family_name": "Yılmaz",
    "email": "ayse{n}@example.com",
    "phone": "0543 197 43 {n:02d}",
    "whatsapp": "",
    "language": "tr",
    "timezone": "Europe/Istanbul",
    "channels": "sms|email",
    "consent_email": "yes",
    "consent_sms": "yes",
    "consent_whatsapp": "",
    "travel_lead_days": "0",
}
TREATMENT_ROW = {
    "external_id": "ht-{n}",
    "patient_external_id": "hp-0",
    "protocol": "chronic_migraine",
    "administered_on": "2026-01-10",
    "product": "onabotulinumtoxinA",
    "units": "155",
    "location": "Istanbul",
}


def _rows(base: dict[str, str], fields: tuple[str, ...]) -> st.SearchStrategy[list[dict[str, str]]]:
    """One to three rows, each a valid row with up to three cells made hostile."""
    changes = st.dictionaries(st.sampled_from(fields), hostile_text, max_size=3)
    return st.lists(changes, min_size=1, max_size=3).map(
        lambda rows: [
            {k: v.format(n=i + 1) for k, v in base.items()} | change
            for i, change in enumerate(rows)
        ]
    )


def _csv(path: Path, fields: tuple[str, ...], rows: list[dict[str, str]]) -> Path:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def _imports_whole_or_refuses_clearly(
    runtime: Runtime, kind: str, path: Path, fields: tuple[str, ...], rows: int | None
) -> None:
    with statements_that_write(runtime.engine) as written:
        report, problem = attempt(
            lambda: import_csv(runtime, kind, path, now=NOW),  # type: ignore[arg-type]
            CsvFileError,
        )
    if report is None:  # the file as a whole: the message names the line
        assert problem and re.match(r"line \d+: ", problem) and one_line(problem), problem
        assert written == []
        return
    if report.refused:
        assert written == [] and report.errors
        for error in report.errors:
            assert re.fullmatch(r"line \d+", error.where) and error.number >= 2
            assert error.field in fields or error.field == ""
            assert one_line(error.describe()), error.describe()
    else:
        assert report.written and report.errors == []
        counts = report.counts
        assert rows is None or counts.created + counts.updated + counts.unchanged == rows


@pytest.fixture
def a_patient(runtime: Runtime, tmp_path: Path) -> Runtime:
    """``hp-0`` exists, for the treatments to belong to."""
    row = {k: v.format(n=0) for k, v in PATIENT_ROW.items()}
    report = import_csv(
        runtime, "patients", _csv(tmp_path / "p0.csv", PATIENT_FIELDS, [row]), now=NOW
    )
    assert report.written
    return runtime


@FEW
@given(rows=_rows(PATIENT_ROW, PATIENT_FIELDS))
def test_a_patients_file_with_hostile_cells_is_imported_whole_or_refused_naming_line_and_column(
    runtime, tmp_path, rows
) -> None:
    path = _csv(tmp_path / "patients.csv", PATIENT_FIELDS, rows)
    _imports_whole_or_refuses_clearly(runtime, "patients", path, PATIENT_FIELDS, len(rows))


@FEW
@given(rows=_rows(TREATMENT_ROW, TREATMENT_FIELDS))
def test_a_treatments_file_with_hostile_cells_is_imported_whole_or_refused_naming_line_and_column(
    a_patient, tmp_path, rows
) -> None:
    path = _csv(tmp_path / "treatments.csv", TREATMENT_FIELDS, rows)
    _imports_whole_or_refuses_clearly(a_patient, "treatments", path, TREATMENT_FIELDS, len(rows))


@FEW
@given(junk=st.binary(max_size=200))
def test_a_file_of_hostile_bytes_is_refused_naming_the_line_and_writes_nothing(
    runtime, tmp_path, junk
) -> None:
    header = ",".join(PATIENT_FIELDS).encode()
    path = tmp_path / "junk.csv"
    path.write_bytes(header + b"\n" + junk)
    _imports_whole_or_refuses_clearly(runtime, "patients", path, PATIENT_FIELDS, None)


# API payloads --------------------------------------------------------------------------------


@pytest.fixture
def api(runtime: Runtime) -> Iterator[TestClient]:
    runtime.settings = runtime.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
    runtime.clock = lambda: NOW
    with TestClient(create_app(runtime)) as client:
        assert client.put("/api/v1/patients/p1", json=AYSE, headers=AUTH).is_success
        yield client


def _payload(fields: tuple[str, ...], base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    known = st.dictionaries(st.sampled_from(fields), json_values, max_size=4)
    unknown = st.dictionaries(hostile_text, json_values, max_size=2)
    return st.tuples(known, unknown).map(lambda kv: {**base, **kv[1], **kv[0]})


external_ids = st.one_of(st.sampled_from(["p1", "p2"]), st.text(min_size=1, max_size=20))


def _put(client: TestClient, kind: str, external_id: str, body: Any, caplog: Any) -> None:
    path = f"/api/v1/{kind}/{urllib.parse.quote(external_id, safe='')}"
    engine = client.app.state.runtime.engine  # type: ignore[attr-defined]
    with no_tracebacks(caplog), statements_that_write(engine) as written:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()  # NaN, Infinity too
        answer = client.put(path, content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code < 500, answer.text
    assert "Traceback" not in answer.text
    if answer.status_code >= 400:
        assert written == [], (answer.status_code, answer.text)
        detail = answer.json()["detail"]
        if answer.status_code == 422:
            named = set(PATIENT_FIELDS + TREATMENT_FIELDS) | {"active"} | set(json.loads(raw))
            assert detail and all(d["field"] in named for d in detail), detail
            assert all(one_line(d["message"]) for d in detail), detail
        else:
            assert isinstance(detail, str) and one_line(detail), detail


@SOME
@given(external_id=external_ids, body=_payload((*PATIENT_FIELDS, "active"), AYSE))
def test_a_hostile_patient_payload_is_a_4xx_naming_the_field_or_stored_whole(
    api, caplog, external_id, body
) -> None:
    _put(api, "patients", external_id, body, caplog)


@SOME
@given(
    external_id=external_ids,
    body=_payload(
        TREATMENT_FIELDS,
        {
            "patient_external_id": "p1",
            "protocol": "chronic_migraine",
            "administered_on": "2026-01-10",
        },
    ),
)
def test_a_hostile_treatment_payload_is_a_4xx_naming_the_field_or_stored_whole(
    api, caplog, external_id, body
) -> None:
    _put(api, "treatments", external_id, body, caplog)


@FEW
@given(
    body=st.one_of(
        st.binary(max_size=100),
        json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    )
)
def test_a_body_that_is_not_a_json_object_is_a_clear_400(api, caplog, body) -> None:
    _put(api, "patients", "p9", body, caplog)


# setting values ------------------------------------------------------------------------------

SECRET_FIELDS = {n for n, f in Settings.model_fields.items() if "Secret" in str(f.annotation)}


@MANY
@given(
    field=st.sampled_from(sorted(set(Settings.model_fields) - {"config_dir"})),
    value=hostile_text.filter(lambda v: "\x00" not in v),
)
def test_a_hostile_setting_is_refused_with_one_line_naming_its_variable(field, value) -> None:
    variable = env_name(field)
    _, message = attempt(
        lambda: load_settings({"REMINDERS_CONFIG_DIR": str(CONFIG), variable: value}),
        ConfigError,
    )
    if message is not None:
        assert variable in message and one_line(message), message
        if field in SECRET_FIELDS and len(value.strip()) >= 4:
            assert value.strip() not in message


@pytest.mark.parametrize("value", ["ı" * 300, "x" * 3000])
def test_a_clinic_time_zone_too_long_for_a_file_name_is_refused_naming_the_variable(value) -> None:
    environ = {"REMINDERS_CONFIG_DIR": str(CONFIG), "REMINDERS_CLINIC_TIMEZONE": value}
    with pytest.raises(ConfigError, match="REMINDERS_CLINIC_TIMEZONE"):
        load_settings(environ)
