"""``/api/v1``: clinic systems put patients and treatments and read a patient's reminders.

Every call but the OpenAPI document needs ``Authorization: Bearer <REMINDERS_API_TOKEN>``
(compared in constant time): missing or wrong is 401. With no token configured the API is off
and answers 503, so a client can tell "not switched on" from "wrong credentials".

Bodies go through the validation layer the CSV import uses (:mod:`reminders.records`), with the
same field names: a bad field is 422 ``{"detail": [{"field", "message"}]}``, a body that is not
a JSON object is 400. A PUT is the whole record, as a CSV row is: a field left out is "not
given" (its default, or empty), except consents, which stay as they are. Each call is one
transaction, so nothing is half-written, and a PUT equal to what is stored writes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from reminders.importing.bulk import patient_ids
from reminders.logs import get_logger, mask_address
from reminders.models import AuditEntry, Delivery, Patient, Reminder, Treatment
from reminders.queries import of_patient
from reminders.records import (
    CHANNELS,
    MAX_TRAVEL_LEAD_DAYS,
    InvalidRecordError,
    Problem,
    Rules,
    parse_patient,
    parse_treatment,
)
from reminders.runtime import Runtime
from reminders.upsert import (
    Outcome,
    UnknownPatientError,
    delete_treatments,
    upsert_patients,
    upsert_treatments,
)

log = get_logger(__name__)
R = TypeVar("R")
router = APIRouter(prefix="/api/v1")
_bearer = HTTPBearer(auto_error=False, description="REMINDERS_API_TOKEN")
ACTOR = "api"


Channel = Literal["whatsapp", "sms", "email"]
YesNo = bool | Literal["yes", "no"]


class PatientBody(BaseModel):
    """A patient, with the columns of the patients CSV (documentation of the PUT body)."""

    external_id: str | None = Field(None, description="Optional; must equal the one in the URL")
    given_name: str
    family_name: str | None = None
    email: str | None = None
    phone: str | None = Field(None, description="E.164, or national for the clinic's country")
    whatsapp: str | None = Field(None, description="As phone; empty: the phone is used")
    language: str | None = Field(None, description="e.g. tr, en, pt_BR; default the clinic's")
    timezone: str | None = Field(None, description="IANA zone; default the clinic's")
    channels: list[Channel] | str | None = Field(
        None, description="In order of preference; default: every channel with an address"
    )
    consent_email: YesNo | None = Field(None, description="Left out: unchanged")
    consent_sms: YesNo | None = Field(None, description="Left out: unchanged")
    consent_whatsapp: YesNo | None = Field(None, description="Left out: unchanged")
    travel_lead_days: int | None = Field(None, ge=0, le=MAX_TRAVEL_LEAD_DAYS)
    active: YesNo | None = Field(None, description="Default yes")


class TreatmentBody(BaseModel):
    """A treatment, with the columns of the treatments CSV (documentation of the PUT body)."""

    external_id: str | None = Field(None, description="Optional; must equal the one in the URL")
    patient_external_id: str
    protocol: str = Field(description="A protocol code, e.g. chronic_migraine")
    administered_on: str = Field(
        description="YYYY-MM-DD, clinic-local, not in the future", pattern=r"^\d{4}-\d{2}-\d{2}$"
    )
    product: str | None = None
    units: float | str | None = Field(None, description="A positive number, 2 decimals at most")
    location: str | None = None


class ConsentOut(BaseModel):
    granted: bool
    opted_out: bool


class PatientOut(BaseModel):
    external_id: str
    given_name: str
    family_name: str
    email: str | None
    phone: str | None
    whatsapp: str | None
    language: str
    timezone: str
    channels: list[str]
    consents: dict[str, ConsentOut]
    travel_lead_days: int
    active: bool


class TreatmentOut(BaseModel):
    external_id: str
    patient_external_id: str
    protocol: str
    administered_on: dt.date
    product: str | None
    units: Decimal | None
    location: str | None


class DeliveryOut(BaseModel):
    channel: str
    address: str = Field(description="Masked")
    status: str
    error_code: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ReminderOut(BaseModel):
    treatment_external_id: str
    protocol: str
    step: str
    status: str
    reason: str | None
    due_at: dt.datetime
    expires_at: dt.datetime
    sent_at: dt.datetime | None
    channel: str | None
    deliveries: list[DeliveryOut]


class RemindersResult(BaseModel):
    patient_external_id: str
    reminders: list[ReminderOut]


class PatientResult(BaseModel):
    result: Literal["created", "updated", "unchanged"]
    patient: PatientOut


class TreatmentResult(BaseModel):
    result: Literal["created", "updated", "unchanged"]
    treatment: TreatmentOut


class DeleteResult(BaseModel):
    result: Literal["deleted", "unchanged"]


class ErrorOut(BaseModel):
    detail: str


class FieldError(BaseModel):
    field: str
    message: str


class FieldErrorsOut(BaseModel):
    detail: list[FieldError]


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    503: {"model": ErrorOut, "description": "The API is off (no REMINDERS_API_TOKEN)"},
}
PUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "Created"},
    400: {"model": ErrorOut, "description": "The body is not a JSON object"},
    422: {"model": FieldErrorsOut, "description": "Fields that are not valid, and why"},
    **AUTH_RESPONSES,
}


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    content = {"application/json": {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def _runtime(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    token = runtime.settings.api_token
    if token is None or not token.get_secret_value():
        raise HTTPException(503, "the API is off: set REMINDERS_API_TOKEN to turn it on")
    given = credentials.credentials if credentials else ""
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
    return runtime


Authorised = Annotated[Runtime, Depends(_runtime)]


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise HTTPException(400, "the body must be a JSON object")
    return body


def _invalid(problems: list[Problem]) -> HTTPException:
    return HTTPException(422, [{"field": p.field, "message": p.reason} for p in problems])


def _with_id(body: dict[str, Any], external_id: str) -> dict[str, Any]:
    if body.get("external_id") not in (None, external_id):
        raise _invalid([Problem("external_id", "does not match the external_id in the URL")])
    return {**body, "external_id": external_id}


@contextmanager
def _transaction(runtime: Runtime) -> Iterator[Session]:
    with runtime.sessions() as session, session.begin():
        yield session


def _retrying(func: Any) -> Any:
    """Run a write again once if a concurrent call created the same record first."""

    @functools.wraps(func)
    def run(*args: Any) -> Any:
        try:
            return func(*args)
        except IntegrityError:
            return func(*args)

    return run


def _audit(session: Session, action: str, subject: str, outcome: Outcome) -> None:
    if outcome in (Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED):
        session.add(AuditEntry(actor=ACTOR, action=action, subject=subject, detail=outcome.value))
    log.info("api_" + action.replace(".", "_"), external_id=subject, result=outcome.value)


def _parsed(
    parser: Callable[[dict[str, Any], Rules], R],
    runtime: Runtime,
    body: dict[str, Any],
    now: dt.datetime,
) -> R:
    """The record a body describes; a 422 naming every bad field otherwise."""
    try:
        return parser(body, Rules.of(runtime.settings, runtime.protocols, now))
    except InvalidRecordError as exc:
        raise _invalid(exc.problems) from None


def _answer(outcome: Outcome, key: str, value: Any) -> JSONResponse:
    status = 201 if outcome is Outcome.CREATED else 200
    return JSONResponse({"result": outcome.value, key: value}, status_code=status)


@router.put(
    "/patients/{external_id}",
    summary="Create or update a patient",
    openapi_extra=_body_schema(PatientBody),
    responses=PUT_RESPONSES,
    response_model=PatientResult,
)
async def put_patient(external_id: str, request: Request, runtime: Authorised) -> JSONResponse:
    body = _with_id(await _body(request), external_id)
    return await run_in_threadpool(_put_patient, runtime, body)


@_retrying
def _put_patient(runtime: Runtime, body: dict[str, Any]) -> JSONResponse:
    now = runtime.clock()
    record = _parsed(parse_patient, runtime, body, now)
    with _transaction(runtime) as session:
        [outcome] = upsert_patients(session, runtime, [record], source=ACTOR, now=now)
        _audit(session, "patient.put", record.external_id, outcome)
        patient = _patient_view(session, record.external_id)
    return _answer(outcome, "patient", patient)


@router.put(
    "/treatments/{external_id}",
    summary="Create or update a treatment (its reminders are planned at once)",
    openapi_extra=_body_schema(TreatmentBody),
    responses=PUT_RESPONSES,
    response_model=TreatmentResult,
)
async def put_treatment(external_id: str, request: Request, runtime: Authorised) -> JSONResponse:
    body = _with_id(await _body(request), external_id)
    return await run_in_threadpool(_put_treatment, runtime, body)


@_retrying
def _put_treatment(runtime: Runtime, body: dict[str, Any]) -> JSONResponse:
    now = runtime.clock()
    record = _parsed(parse_treatment, runtime, body, now)
    unknown = [Problem("patient_external_id", "no patient with this external_id")]
    with _transaction(runtime) as session:
        if not patient_ids(session, [record.patient_external_id]):
            raise _invalid(unknown)
        try:
            [outcome] = upsert_treatments(session, runtime, [record], source=ACTOR, now=now)
        except UnknownPatientError:  # deleted between the check and the write
            raise _invalid(unknown) from None
        _audit(session, "treatment.put", record.external_id, outcome)
        treatment = _treatment_view(session, record.external_id)
    return _answer(outcome, "treatment", treatment)


@router.delete(
    "/treatments/{external_id}",
    summary="Delete a treatment: its unsent reminders are cancelled",
    responses={404: {"description": "No such treatment"}, **AUTH_RESPONSES},
    response_model=DeleteResult,
)
def delete_treatment(external_id: str, runtime: Authorised) -> dict[str, str]:
    with _transaction(runtime) as session:
        now = runtime.clock()
        [outcome] = delete_treatments(session, runtime, [external_id], now=now)
        if outcome is Outcome.MISSING:
            raise HTTPException(404, "no treatment with this external_id")
        _audit(session, "treatment.delete", external_id, outcome)
    return {"result": outcome.value}


@router.get(
    "/patients/{external_id}/reminders",
    summary="A patient's reminders, each with its delivery attempts",
    responses={404: {"description": "No such patient"}, **AUTH_RESPONSES},
    response_model=RemindersResult,
)
def get_reminders(external_id: str, runtime: Authorised) -> RemindersResult:
    with runtime.sessions() as session:
        result = _reminders_view(session, external_id)
    if result is None:
        raise HTTPException(404, "no patient with this external_id")
    return result


@router.get("/openapi.json", include_in_schema=False)
def openapi_document() -> JSONResponse:
    """The OpenAPI document of this API alone (no token needed to read it)."""
    return JSONResponse(_document())


@functools.cache
def _document() -> dict[str, Any]:
    routes = [r for r in router.routes if isinstance(r, APIRoute) and r.include_in_schema]
    return get_openapi(
        title="reminders API",
        version="1",
        description=__doc__ or "",
        routes=routes,
    )


# Reading back


def _patient_out(row: Patient) -> PatientOut:
    consents = {
        c.channel: ConsentOut(granted=c.granted, opted_out=c.opted_out_at is not None)
        for c in row.consents
    }
    return PatientOut(
        external_id=row.external_id,
        given_name=row.given_name,
        family_name=row.family_name,
        email=row.email,
        phone=row.phone,
        whatsapp=row.whatsapp,
        language=row.language,
        timezone=row.timezone,
        channels=[c.value for c in row.channel_order],
        consents={c: consents[c] for c in CHANNELS if c in consents},
        travel_lead_days=row.travel_lead_days,
        active=row.active,
    )


def _patient_view(session: Session, external_id: str) -> dict[str, Any]:
    row = session.scalars(select(Patient).where(Patient.external_id == external_id)).one()
    session.refresh(row)
    return _patient_out(row).model_dump(mode="json")


def _treatment_view(session: Session, external_id: str) -> dict[str, Any]:
    row = session.scalars(select(Treatment).where(Treatment.external_id == external_id)).one()
    session.refresh(row)
    out = TreatmentOut(
        external_id=row.external_id,
        patient_external_id=row.patient.external_id,
        protocol=row.protocol,
        administered_on=row.administered_on,
        product=row.product,
        units=row.units,
        location=row.location,
    )
    return out.model_dump(mode="json")


def _reminders_view(session: Session, external_id: str) -> RemindersResult | None:
    patient_id = session.scalar(select(Patient.id).where(Patient.external_id == external_id))
    if patient_id is None:
        return None
    rows = session.execute(
        select(Reminder, Treatment.external_id)
        .join(Treatment, Reminder.treatment_id == Treatment.id)
        .where(of_patient(patient_id))
        .order_by(Reminder.due_at, Reminder.id)
    ).all()
    attempts: dict[int, list[DeliveryOut]] = {}
    ids = [reminder.id for reminder, _ in rows]
    for d in session.scalars(
        select(Delivery).where(Delivery.reminder_id.in_(ids)).order_by(Delivery.id)
    ):
        attempts.setdefault(d.reminder_id, []).append(_delivery_out(d))
    return RemindersResult(
        patient_external_id=external_id,
        reminders=[_reminder_out(r, t, attempts.get(r.id, [])) for r, t in rows],
    )


def _delivery_out(row: Delivery) -> DeliveryOut:
    return DeliveryOut(
        channel=row.channel,
        address=mask_address(row.channel, row.address),
        status=row.status,
        error_code=row.error_code,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _reminder_out(row: Reminder, treatment_id: str, deliveries: list[DeliveryOut]) -> ReminderOut:
    return ReminderOut(
        treatment_external_id=treatment_id,
        protocol=row.protocol,
        step=row.step,
        status=row.status,
        reason=row.reason,
        due_at=row.due_at,
        expires_at=row.expires_at,
        sent_at=row.sent_at,
        channel=row.channel,
        deliveries=deliveries,
    )
