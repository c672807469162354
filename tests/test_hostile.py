"""Hostile input, generated with hypothesis, at every door: CSV rows through the import, API
payloads, webhook bodies and headers, templates (sandbox escapes through dunder attributes
included) through the renderer and the console's save, and setting values.

What must hold whatever comes in: never a traceback or a 5xx; a refusal is a clear error that
names the line, the field or the variable; and a refusal leaves the database as it was (not one
INSERT, UPDATE or DELETE). Example counts stay modest so the file runs in well under a minute.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy import func, select
from structlog.testing import capture_logs

from reminders.importing.csv import CsvFileError, import_csv
from reminders.models import Template
from reminders.records import PATIENT_FIELDS, TREATMENT_FIELDS
from reminders.runtime import Runtime
from reminders.settings import ConfigError, Settings, env_name, load_settings
from reminders.templating import TemplateError, TemplateSpec, render
from reminders.web.app import create_app
from tests.conftest import CONFIG
from tests.console_support import console, post, staff
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.test_import_csv import statements_that_write
from tests.webhook_support import EVENTS_PATH, INBOUND_PATH, NOW, PUBLIC_URL, status_path
from tests.webhook_support import web_settings as with_webhook_secrets

__all__ = ["console", "staff"]  # fixtures from tests.console_support
T = TypeVar("T")
POSTGRES = os.environ.get("REMINDERS_TEST_DATABASE_URL", "").startswith("postgresql")
TOKEN = "hostile-test-token"
AYSE = {"given_name": "Ayşe", "email": "ayse@example.com", "consent_email": "yes"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FEW = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SOME = settings(FEW, max_examples=60)
MANY = settings(FEW, max_examples=200)

NASTY = [
    "", " ", "\t", "\r\n", "\x00", "\x1b[31m", "\u202e", "\ufeff", "🙂" * 40, "ı" * 300,
    "=cmd|' /C calc'!A0", "'; DROP TABLE patients; --", "<script>alert(1)</script>",
    "{{ 7 * 7 }}", "{% raw %}", "../../etc/passwd", "%s%s%n", "9" * 400, "x" * 3000,
    "ｙｅｓ", "yes\x00", "NaN", "Infinity", "-1", "1e309", "0x1F", "2026-02-30", "0000-00-00",
    "9999-12-31", "2026-13-01", "+00000000000", "+90 543 197 43 20 ext 5", "ayşe@ëxample.com",
    "a@b", "@", '"', ",", ";", "|", "sms|sms|email", "fax", "Europe/../../etc", "zz_ZZ",
    "Etc/GMT+14", "whatsapp:+905321234567", "yes|no", "1.005", "-0", "1,5",
]  # fmt: skip
hostile_text = st.one_of(st.sampled_from(NASTY), st.text(max_size=30))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=6,
)


@contextmanager
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails if anything logged an exception (structlog captured directly or through logging)."""
    caplog.clear()
    with caplog.at_level(logging.INFO), capture_logs() as captured:
        yield
    events = captured + [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    broken = [e for e in events if e.get("exc_info") or e.get("exception")]
    broken += [{"record": r.getMessage()} for r in caplog.records if r.exc_info]
    assert broken == []


def one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message and "Traceback" not in message


def count(runtime: Runtime, model: type) -> int:
    with runtime.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


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


def attempt(call: Callable[[], T], *errors: type[Exception]) -> tuple[T | None, str | None]:
    """``call()``'s result, or the message of one of ``errors`` it raised."""
    try:
        return call(), None
    except errors as refused:
        return None, str(refused)


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


# webhook bodies and headers ------------------------------------------------------------------


@pytest.fixture
def fakes() -> tuple[FakeTwilio, FakeSendGrid]:
    return FakeTwilio(), FakeSendGrid()  # not started: their secrets sign the webhooks


@pytest.fixture
def hooks(runtime: Runtime, fakes: tuple[FakeTwilio, FakeSendGrid]) -> Iterator[TestClient]:
    runtime.settings = with_webhook_secrets(runtime.settings, *fakes)
    runtime.clock = lambda: NOW
    with TestClient(create_app(runtime)) as client:
        yield client


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
WEBHOOKS = [status_path("x"), INBOUND_PATH, EVENTS_PATH]


@SOME
@given(
    path=st.sampled_from(WEBHOOKS),
    body=st.binary(max_size=300),
    signature=st.none() | header_text,
    timestamp=st.none() | header_text | st.integers(0, 2**40).map(str),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "application/json", "text/plain"]
    ),
)
def test_an_unsigned_webhook_is_refused_whatever_its_body_and_headers(
    hooks, caplog, path, body, signature, timestamp, content_type
) -> None:
    headers = {"Content-Type": content_type}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
        headers["X-Twilio-Email-Event-Webhook-Signature"] = signature
    if timestamp is not None:
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = timestamp
    engine = hooks.app.state.runtime.engine  # type: ignore[attr-defined]
    with no_tracebacks(caplog), statements_that_write(engine) as written:
        answer = hooks.post(path, content=body, headers=headers)
    assert answer.status_code in (400, 403), (answer.status_code, answer.text)
    assert written == []


# NUL is left to the explicit test below: PostgreSQL text cannot hold it.
no_nul = hostile_text.map(lambda v: v.replace("\x00", ""))
no_nul_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | no_nul,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(no_nul, inner, max_size=3),
    max_leaves=6,
)
form_fields = st.dictionaries(
    st.sampled_from(["MessageSid", "MessageStatus", "ErrorCode", "From", "To", "Body",
                     "OptOutType", "NumMedia", "SmsSid"]) | no_nul,
    no_nul,
    max_size=8,
)  # fmt: skip


@SOME
@given(path=st.sampled_from([status_path("x"), status_path(), INBOUND_PATH]), fields=form_fields)
def test_a_signed_twilio_webhook_with_hostile_fields_is_answered_without_a_traceback(
    hooks, fakes, caplog, path, fields
) -> None:
    with no_tracebacks(caplog):
        answer = _signed_twilio(hooks, fakes[0], path, fields)
    assert answer.status_code in (200, 400), (answer.status_code, answer.text)


events = st.lists(
    st.dictionaries(
        st.sampled_from(["event", "sg_event_id", "email", "delivery", "sg_message_id",
                         "reason", "type", "timestamp", "asm_group_id"]) | no_nul,
        no_nul_json,
        max_size=6,
    ) | no_nul_json,
    max_size=4,
)  # fmt: skip


@SOME
@given(batch=st.one_of(events, no_nul_json))
def test_a_signed_sendgrid_batch_of_hostile_events_is_answered_without_a_traceback(
    hooks, fakes, caplog, batch
) -> None:
    with no_tracebacks(caplog):
        answer = _signed_sendgrid(hooks, fakes[1], batch)
    assert answer.status_code in (200, 400), (answer.status_code, answer.text)


def _signed_twilio(hooks: TestClient, twilio: FakeTwilio, path: str, fields: dict[str, str]) -> Any:
    signature = twilio.sign(PUBLIC_URL + path, fields)
    return hooks.post(path, data=fields, headers={"X-Twilio-Signature": signature})


def _signed_sendgrid(hooks: TestClient, sendgrid: FakeSendGrid, batch: Any) -> Any:
    body = json.dumps(batch).encode()
    signature, ts = sendgrid.sign(body, str(int(NOW.timestamp())))
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
    }
    return hooks.post(EVENTS_PATH, content=body, headers=headers)


NUL_CASES = {
    "inbound From": lambda h, tw, sg: _signed_twilio(
        h, tw, INBOUND_PATH, {"MessageSid": "SM1", "From": "+90543\x00", "Body": "STOP"}
    ),
    "status MessageSid": lambda h, tw, sg: _signed_twilio(
        h, tw, status_path("x"), {"MessageSid": "SM\x001", "MessageStatus": "delivered"}
    ),
    "event sg_event_id": lambda h, tw, sg: _signed_sendgrid(
        h, sg, [{"event": "delivered", "sg_event_id": "e\x001"}]
    ),
    "event email": lambda h, tw, sg: _signed_sendgrid(
        h, sg, [{"event": "unsubscribe", "sg_event_id": "e2", "email": "a\x00@example.com"}]
    ),
}


@pytest.mark.parametrize("case", list(NUL_CASES))
def test_a_signed_webhook_carrying_a_nul_character_is_answered_without_a_traceback(
    hooks, fakes, caplog, case
) -> None:
    with no_tracebacks(caplog):
        answer = NUL_CASES[case](hooks, *fakes)
    assert answer.status_code in (200, 400)


# templates -----------------------------------------------------------------------------------

CONTEXT = {
    "language": "en",
    "patient": {"given_name": "Ayşe", "family_name": "Yılmaz"},
    "clinic": {"name": "Clinic", "phone": "+90 212 000 00 00"},
    "window": {"open": dt.date(2026, 3, 30), "close": dt.date(2026, 5, 5)},
}
ROOTS = ["patient", "patient.given_name", "clinic", "window.open", "''", "()", "[]", "{}",
         "range", "lipsum", "cycler", "joiner", "namespace", "self", "loop", "0",
         "1.5"]  # fmt: skip
DUNDERS = ["__class__", "__mro__", "__subclasses__", "__globals__", "__init__", "__builtins__",
           "__dict__", "__getattribute__", "__reduce_ex__", "__base__", "__bases__", "__code__",
           "__func__", "__self__", "__module__", "__import__", "__loader__", "__spec__",
           "_TemplateReference__context", "__call__", "__getitem__"]  # fmt: skip
SAFE_HOPS = [".upper", ".items", ".format", ".mro", ".real", "()", "[0]", "|list", "|string",
             "|first", "|e"]  # fmt: skip


@st.composite
def escape(draw: st.DrawFn) -> str:
    """An expression that reaches for a dunder: by attribute, by item, or by the attr filter."""
    dunder = draw(st.sampled_from(DUNDERS))
    reach = draw(st.sampled_from([".{}", "['{}']", '["{}"]', "|attr('{}')", ".{}()"])).format(
        dunder
    )
    before = "".join(draw(st.lists(st.sampled_from(SAFE_HOPS), max_size=2)))
    after = "".join(
        draw(st.lists(st.sampled_from(SAFE_HOPS + [f".{d}" for d in DUNDERS]), max_size=3))
    )
    return draw(st.sampled_from(ROOTS)) + before + reach + after


@st.composite
def escape_template(draw: st.DrawFn) -> tuple[str, int]:
    """A template whose line ``n`` (1-based) prints an escape attempt, somewhere in the text."""
    lines = draw(
        st.lists(st.sampled_from(["Hello {{ patient.given_name }}", "", "Bye"]), max_size=3)
    )
    n = len(lines) + 1
    wrapper = draw(st.sampled_from(["{{{{ {} }}}}", "{{% set x = {} %}}{{{{ x }}}}",
                                    "{{% for x in [{}] %}}{{{{ x }}}}{{% endfor %}}",
                                    "{{% if {} %}}yes{{% endif %}}"]))  # fmt: skip
    return "\n".join([*lines, "Dear " + wrapper.format(draw(escape()))]), n


@MANY
@given(template=escape_template(), field=st.sampled_from(["text", "subject", "html"]))
def test_no_dunder_escape_ever_renders_it_is_refused_naming_field_and_line(template, field) -> None:
    source, line = template
    spec = TemplateSpec(step="due", channel="email", language="en", **{field: source})
    with pytest.raises(TemplateError) as refused:
        render(spec, CONTEXT)
    assert refused.value.field == field
    assert refused.value.line in (line, None), (str(refused.value), source)
    assert one_line(str(refused.value))


@MANY
@given(source=st.text(max_size=80) | st.sampled_from(NASTY))
def test_any_text_either_renders_or_is_refused_naming_the_field(source) -> None:
    spec = TemplateSpec(step="due", channel="sms", language="en", text=source)
    rendered, refused = attempt(lambda: render(spec, CONTEXT), TemplateError)
    if refused is None:
        assert rendered is not None and isinstance(rendered.text, str)
    else:
        assert refused.startswith("text") and one_line(refused), refused


@FEW
@given(
    source=st.one_of(
        escape_template().map(lambda t: (t[0], True)),
        st.text(max_size=60).map(lambda t: (t, False)),
    )
)
def test_the_console_saves_a_hostile_template_only_if_it_renders_else_422_naming_the_line(
    staff, console, caplog, source
) -> None:
    source, escapes = source
    before = count(console, Template)
    with no_tracebacks(caplog):
        answer = post(
            staff, "/admin/templates/due/sms/en", {"text": source, "base_version": before}
        )
    assert answer.status_code in (303, 409, 422), answer.status_code  # type: ignore[attr-defined]
    if answer.status_code == 303:  # type: ignore[attr-defined]
        assert count(console, Template) == before + 1
        assert not escapes  # a dunder reach never saves
    else:
        assert count(console, Template) == before
    if answer.status_code == 422:  # type: ignore[attr-defined]
        assert re.search(r"text(, line \d+)?</strong>: ", answer.text)  # type: ignore[attr-defined]


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
