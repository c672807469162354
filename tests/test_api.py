"""``/api/v1``: the bearer-token API clinic systems push patients and treatments to."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from reminders.channels.recording import RecordingSender
from reminders.importing.csv import import_csv
from reminders.models import AuditEntry, Consent, Patient, Reminder, Treatment
from reminders.records import PATIENT_FIELDS, PATIENT_OPTIONAL_FIELDS, TREATMENT_FIELDS
from reminders.runtime import Runtime, build_runtime
from reminders.service import Service
from reminders.settings import Settings
from reminders.web.app import create_app
from tests.conftest import empty_database
from tests.test_import_csv import PATIENT_HEADER, TREATMENT_HEADER, statements_that_write

TOKEN = "s3cret-token-for-tests"
NOW = dt.datetime(2026, 3, 4, 8, 0, tzinfo=dt.UTC)  # 11:00 in Istanbul
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AYSE = {
    "given_name": "Ayşe",
    "family_name": "Yılmaz",
    "email": "ayse@example.com",
    "phone": "0543 197 43 20",
    "language": "tr",
    "channels": ["sms", "email"],
    "consent_sms": True,
    "consent_email": "yes",
}
VISIT = {
    "patient_external_id": "p1",
    "protocol": "chronic_migraine",
    "administered_on": "2025-12-10",
}


def make_runtime(
    settings: Settings, senders: dict[str, RecordingSender], token: str | None
) -> Runtime:
    secret = SecretStr(token) if token is not None else None
    return build_runtime(
        settings.model_copy(update={"api_token": secret}), dict(senders), clock=lambda: NOW
    )


@pytest.fixture
def api_runtime(settings: Settings, senders: dict[str, RecordingSender]) -> Iterator[Runtime]:
    runtime = make_runtime(settings, senders, TOKEN)
    yield runtime
    empty_database(runtime)
    runtime.close()


@pytest.fixture
def client(api_runtime: Runtime) -> TestClient:
    return TestClient(create_app(api_runtime))


def put(client: TestClient, path: str, body: Any) -> Any:
    return client.put(f"/api/v1/{path}", json=body, headers=AUTH)


def count(runtime: Runtime, model: type) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


# Authentication


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
)
def test_a_missing_or_wrong_token_is_refused_with_401(
    client: TestClient, api_runtime: Runtime, headers: dict[str, str]
) -> None:
    response = client.put("/api/v1/patients/p1", json=AYSE, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/api/v1/patients/p1/reminders", headers=headers).status_code == 401
    assert count(api_runtime, Patient) == 0


@pytest.mark.parametrize("token", [None, ""])
def test_without_a_configured_token_the_api_is_off_with_503(
    settings: Settings, senders: dict[str, RecordingSender], token: str | None
) -> None:
    runtime = make_runtime(settings, senders, token)
    try:
        response = TestClient(create_app(runtime)).put(
            "/api/v1/patients/p1", json=AYSE, headers=AUTH
        )
    finally:
        runtime.close()
    assert response.status_code == 503
    assert "REMINDERS_API_TOKEN" in response.json()["detail"]


# Patients


def test_putting_a_patient_creates_it_with_normalised_values(
    client: TestClient, api_runtime: Runtime
) -> None:
    response = put(client, "patients/p1", AYSE)
    assert response.status_code == 201
    body = response.json()
    assert body["result"] == "created"
    assert body["patient"] == {
        "external_id": "p1",
        "given_name": "Ayşe",
        "family_name": "Yılmaz",
        "email": "ayse@example.com",
        "phone": "+905431974320",
        "whatsapp": None,
        "language": "tr",
        "timezone": "Europe/Istanbul",
        "channels": ["sms", "email"],
        "consents": {
            "sms": {"granted": True, "opted_out": False},
            "email": {"granted": True, "opted_out": False},
        },
        "travel_lead_days": 0,
        "active": True,
    }
    with api_runtime.sessions() as session:
        sources = set(session.scalars(select(Consent.granted_source)))
    assert sources == {"api"}


def test_putting_the_same_patient_again_writes_nothing(
    client: TestClient, api_runtime: Runtime
) -> None:
    put(client, "patients/p1", AYSE)
    with statements_that_write(api_runtime.engine) as writes:
        response = put(client, "patients/p1", {**AYSE, "phone": "+905431974320"})
    assert (response.status_code, response.json()["result"]) == (200, "unchanged")
    assert writes == []


def test_putting_a_changed_patient_updates_it_and_leaves_an_audit_entry(
    client: TestClient, api_runtime: Runtime
) -> None:
    put(client, "patients/p1", AYSE)
    response = put(client, "patients/p1", {**AYSE, "consent_email": False, "travel_lead_days": 7})
    assert (response.status_code, response.json()["result"]) == (200, "updated")
    assert response.json()["patient"]["consents"]["email"] == {"granted": False, "opted_out": False}
    with api_runtime.sessions() as session:
        audit = session.execute(
            select(AuditEntry.actor, AuditEntry.action, AuditEntry.detail)
        ).all()
    assert [tuple(a) for a in audit] == [
        ("api", "patient.put", "created"),
        ("api", "patient.put", "updated"),
    ]


def test_invalid_fields_are_refused_with_422_naming_each_and_nothing_is_written(
    client: TestClient, api_runtime: Runtime
) -> None:
    bad = {**AYSE, "phone": "12", "email": "ayse@", "timezone": "Mars", "channels": ["fax"]}
    response = put(client, "patients/p1", bad | {"travel_lead_days": 99, "shoe_size": 42})
    assert response.status_code == 422
    fields = {e["field"]: e["message"] for e in response.json()["detail"]}
    assert set(fields) == {
        "phone",
        "email",
        "timezone",
        "channels",
        "travel_lead_days",
        "shoe_size",
    }
    assert fields["shoe_size"] == "unknown field"
    assert (count(api_runtime, Patient), count(api_runtime, Consent)) == (0, 0)
    assert count(api_runtime, AuditEntry) == 0


def test_an_external_id_in_the_body_must_match_the_url(client: TestClient) -> None:
    response = put(client, "patients/p1", {**AYSE, "external_id": "p2"})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"field": "external_id", "message": "does not match the external_id in the URL"}
    ]


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"text"', ""])
def test_a_body_that_is_not_a_json_object_is_refused_with_400(
    client: TestClient, body: str
) -> None:
    response = client.put(
        "/api/v1/patients/p1", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"detail": "the body must be a JSON object"}


# Treatments and reminders


def test_putting_a_treatment_plans_its_reminders_at_once(
    client: TestClient, api_runtime: Runtime
) -> None:
    put(client, "patients/p1", AYSE)
    response = put(client, "treatments/t1", {**VISIT, "units": 155.5, "product": "Botox"})
    assert response.status_code == 201
    assert response.json()["treatment"] == {
        "external_id": "t1",
        "patient_external_id": "p1",
        "protocol": "chronic_migraine",
        "administered_on": "2025-12-10",
        "product": "Botox",
        "units": "155.50",
        "location": None,
    }
    with api_runtime.sessions() as session:
        steps = session.scalars(select(Reminder.step).order_by(Reminder.due_at)).all()
    assert steps == ["due", "last_call"]
    again = put(client, "treatments/t1", {**VISIT, "units": "155,50", "product": "Botox"})
    assert (again.status_code, again.json()["result"]) == (200, "unchanged")


def test_a_treatment_of_an_unknown_patient_is_refused_and_not_stored(
    client: TestClient, api_runtime: Runtime
) -> None:
    response = put(client, "treatments/t1", VISIT)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"field": "patient_external_id", "message": "no patient with this external_id"}
    ]
    assert count(api_runtime, Treatment) == 0


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"administered_on": "10.12.2025"}, "administered_on"),
        ({"administered_on": "2026-03-05"}, "administered_on"),
        ({"protocol": "botox"}, "protocol"),
        ({"units": -1}, "units"),
        ({"patient_external_id": None}, "patient_external_id"),
    ],
)
def test_a_bad_treatment_field_is_refused_with_422_naming_it(
    client: TestClient, api_runtime: Runtime, values: dict[str, Any], field: str
) -> None:
    put(client, "patients/p1", AYSE)
    response = put(client, "treatments/t1", {**VISIT, **values})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["detail"]] == [field]
    assert count(api_runtime, Treatment) == 0


def test_reading_a_patients_reminders_shows_each_with_its_deliveries(
    client: TestClient, api_runtime: Runtime, senders: dict[str, RecordingSender]
) -> None:
    put(client, "patients/p1", AYSE)
    put(client, "treatments/t1", VISIT)
    service = Service(api_runtime, owner="test")
    try:
        service.tick(dt.datetime(2026, 3, 4, 8, 0, tzinfo=dt.UTC))  # the due step: 2026-03-04
    finally:
        service.dispatcher.close()
    assert [m.to for m in senders["sms"].sent] == ["+905431974320"]
    response = client.get("/api/v1/patients/p1/reminders", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["patient_external_id"] == "p1"
    due, last_call = body["reminders"]
    assert (due["step"], due["status"], due["channel"]) == ("due", "sent", "sms")
    assert due["treatment_external_id"] == "t1"
    [delivery] = due["deliveries"]
    assert delivery["channel"] == "sms"
    assert delivery["address"] == "+90*******320"
    assert (last_call["status"], last_call["deliveries"]) == ("pending", [])


def test_reading_the_reminders_of_an_unknown_patient_is_404(client: TestClient) -> None:
    assert client.get("/api/v1/patients/nobody/reminders", headers=AUTH).status_code == 404


def test_deleting_a_treatment_cancels_its_unsent_reminders(
    client: TestClient, api_runtime: Runtime
) -> None:
    put(client, "patients/p1", AYSE)
    put(client, "treatments/t1", VISIT)
    response = client.delete("/api/v1/treatments/t1", headers=AUTH)
    assert response.json() == {"result": "deleted"}
    with api_runtime.sessions() as session:
        states = {(r[0], r[1]) for r in session.execute(select(Reminder.status, Reminder.reason))}
    assert states == {("cancelled", "deleted")}
    assert client.delete("/api/v1/treatments/t1", headers=AUTH).json() == {"result": "unchanged"}
    assert client.delete("/api/v1/treatments/t404", headers=AUTH).status_code == 404
    restored = put(client, "treatments/t1", VISIT)
    assert restored.json()["result"] == "updated"
    with api_runtime.sessions() as session:
        assert set(session.scalars(select(Reminder.status))) == {"pending"}


# One validation for the API and the CSV import


BAD_PATIENTS = [
    {"phone": "0543 197"},
    {"email": "ayse@example"},
    {"language": "xx-nope"},
    {"timezone": "Europe/Stambul"},
    {"channels": "sms|pigeon"},
    {"consent_sms": "maybe"},
    {"travel_lead_days": "61"},
    {"active": "sometimes"},
    {"given_name": ""},
]


@pytest.mark.parametrize("bad", BAD_PATIENTS)
def test_the_api_and_the_csv_import_refuse_a_patient_for_the_same_reason(
    client: TestClient, api_runtime: Runtime, tmp_path: Path, bad: dict[str, str]
) -> None:
    values = {**AYSE, "channels": "sms|email", "consent_sms": "yes", **bad}
    response = put(client, "patients/p1", values)
    api = [(e["field"], e["message"]) for e in response.json()["detail"]]
    row = {"external_id": "p1", **values}
    header = f"{PATIENT_HEADER},active"
    line = ",".join(row.get(c, "") for c in header.split(","))
    path = tmp_path / "p.csv"
    path.write_text(f"{header}\n{line}\n", encoding="utf-8")
    report = import_csv(api_runtime, "patients", path, now=NOW)
    assert api == [(e.field, e.reason) for e in report.errors]
    assert len(api) == 1


def test_the_api_and_the_csv_import_refuse_a_treatment_for_the_same_reason(
    client: TestClient, api_runtime: Runtime, tmp_path: Path
) -> None:
    values = {**VISIT, "administered_on": "2025/12/10", "units": "0"}
    api = [
        (e["field"], e["message"]) for e in put(client, "treatments/t1", values).json()["detail"]
    ]
    path = tmp_path / "t.csv"
    row = {"external_id": "t1", **values}
    line = ",".join(str(row.get(c, "")) for c in TREATMENT_HEADER.split(","))
    path.write_text(f"{TREATMENT_HEADER}\n{line}\n", encoding="utf-8")
    report = import_csv(api_runtime, "treatments", path, now=NOW)
    assert api == [(e.field, e.reason) for e in report.errors][: len(api)]
    assert [f for f, _ in api] == ["administered_on", "units"]


# The OpenAPI document


def test_the_openapi_document_covers_the_api_routes_only(client: TestClient) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert set(document["paths"]) == {
        "/api/v1/patients/{external_id}",
        "/api/v1/patients/{external_id}/reminders",
        "/api/v1/treatments/{external_id}",
    }
    assert set(document["paths"]["/api/v1/treatments/{external_id}"]) == {"put", "delete"}
    schemes = document["components"]["securitySchemes"]
    assert schemes == {
        "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "REMINDERS_API_TOKEN"}
    }


def test_the_openapi_document_describes_the_csv_fields_as_the_request_bodies(
    client: TestClient,
) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]

    def fields(path: str) -> set[str]:
        body = paths[path]["put"]["requestBody"]["content"]["application/json"]["schema"]
        return set(body["properties"])

    assert fields("/api/v1/patients/{external_id}") == {*PATIENT_FIELDS, *PATIENT_OPTIONAL_FIELDS}
    assert fields("/api/v1/treatments/{external_id}") == set(TREATMENT_FIELDS)
    responses = paths["/api/v1/patients/{external_id}"]["put"]["responses"]
    assert {"200", "201", "400", "401", "422", "503"} <= set(responses)
