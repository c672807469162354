"""The console over HTTP: CSRF, roles, templates (refusals, versions, preview), consents,
the outbox, protocol edits. Each test drives the real app with a real database."""

# ruff: noqa: F811  (fixtures imported from tests.console_support are used as arguments)

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from reminders.models import (
    AuditEntry,
    Consent,
    ProtocolVersion,
    Reminder,
    Template,
    Treatment,
)
from reminders.planner import plan_pending
from tests import factories
from tests.console_support import admin, anonymous, console, post, staff, token  # noqa: F401

SMS_DUE = "/admin/templates/due/sms/en"


# --- CSRF ------------------------------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused(staff) -> None:
    response = staff.post(SMS_DUE, data={"text": "Hi", "base_version": "0"})
    assert response.status_code == 403
    assert "This form has expired" in response.text


def test_a_post_with_another_sessions_csrf_token_is_refused(staff, anonymous) -> None:
    foreign = token(anonymous)
    response = staff.post(SMS_DUE, data={"text": "Hi", "base_version": "0", "csrf_token": foreign})
    assert response.status_code == 403


def test_the_sign_in_form_needs_its_csrf_token_too(anonymous) -> None:
    anonymous.get("/admin/login")
    response = anonymous.post(
        "/admin/login", data={"email": "staff@example.com", "password": "x" * 12}
    )
    assert response.status_code == 403


def test_the_preview_accepts_the_token_in_a_header(staff) -> None:
    csrf = token(staff, "/admin/dashboard")
    response = staff.post(
        "/admin/templates/preview",
        data={"step": "due", "channel": "sms", "language": "en", "text": "Hi"},
        headers={"X-CSRF-Token": csrf, "Accept": "application/json"},
    )
    assert response.status_code == 200 and response.json()["text"] == "Hi"


# --- roles -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/admin/protocols", "/admin/protocols/chronic_migraine", "/admin/users"]
)
def test_staff_cannot_open_protocols_or_users(staff, admin, path: str) -> None:
    refused = staff.get(path)
    assert refused.status_code == 403
    assert "Only an administrator" in refused.text
    assert admin.get(path).status_code == 200


def test_staff_cannot_change_a_protocol_or_add_a_user(staff, console) -> None:
    edit = post(staff, "/admin/protocols/chronic_migraine", {"min_interval_days": "10"})
    added = post(
        staff,
        "/admin/users",
        {"email": "x@example.com", "password": "p" * 12, "password_again": "p" * 12},
    )
    assert edit.status_code == 403 and added.status_code == 403
    with console.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ProtocolVersion)) == 0


@pytest.mark.parametrize(
    "path",
    [
        "/admin/templates",
        "/admin/patients",
        "/admin/outbox",
        "/admin/outbox/tomorrow",
        "/admin/dashboard",
    ],
)
def test_staff_can_open_templates_patients_outbox_and_dashboard(staff, path: str) -> None:
    assert staff.get(path).status_code == 200


# --- templates -------------------------------------------------------------------------------


def _save(client, path: str = SMS_DUE, base: int = 0, **fields: str) -> object:
    return post(client, path, {"base_version": str(base), **fields})


def _versions(console, step: str = "due", channel: str = "sms") -> list[Template]:
    with console.sessions() as session:
        return list(
            session.scalars(
                select(Template)
                .where(Template.step == step, Template.channel == channel)
                .order_by(Template.version)
            )
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Hello {{ patient.given_name }},\nsee you {{ patient.nickname }}",
            "text, line 2</strong>: unknown variable &#39;patient.nickname&#39;",
        ),
        ("Hi\n\n{{ doctor }}", "text, line 3</strong>: unknown variable &#39;doctor&#39;"),
        ("Hi {{ patient.given_name", "text, line 1</strong>: unexpected end of template"),
        (
            "{% if step %}\n{{ patient.__class__.__mro__ }}{% endif %}",
            "text, line 2</strong>: not allowed: private attribute",
        ),
        (
            "Hi\n{{ patient.given_name | attr('__class__') }}",
            "text, line 2</strong>: not allowed: access to attribute &#39;__class__&#39;",
        ),
        ("{{ window.open | nosuchfilter }}", "No filter named &#39;nosuchfilter&#39;"),
        ("", "text</strong>: must not be empty"),
    ],
)
def test_a_template_that_does_not_render_is_refused_with_line_and_reason(
    staff, console, text: str, expected: str
) -> None:
    response = _save(staff, text=text)
    assert response.status_code == 422
    assert expected in response.text
    assert _versions(console) == []


def test_an_unknown_variable_is_refused_even_in_a_branch_the_sample_would_skip(
    staff, console
) -> None:
    response = _save(staff, text="{% if false %}\n\n{{ patient.birthday }}{% endif %}Hi")
    assert response.status_code == 422 and "line 3" in response.text
    assert _versions(console) == []


def test_every_save_is_a_new_version_with_author_and_time(staff, console, now) -> None:
    assert _save(staff, text="First {{ patient.given_name }}").status_code == 303
    response = _save(staff, base=1, text="Second {{ patient.given_name }}")
    assert response.headers["location"] == f"{SMS_DUE}?saved=2"
    rows = _versions(console)
    assert [(r.version, r.text, r.author, r.created_at) for r in rows] == [
        (1, "First {{ patient.given_name }}", "staff@example.com", now),
        (2, "Second {{ patient.given_name }}", "staff@example.com", now),
    ]
    assert "Second {{ patient.given_name }}" in staff.get(SMS_DUE).text


def test_a_save_based_on_an_outdated_version_is_refused(staff, console) -> None:
    _save(staff, text="First")
    response = _save(staff, base=0, text="Written over a stale page")
    assert response.status_code == 409 and "Someone saved this template" in response.text
    assert [r.text for r in _versions(console)] == ["First"]


def test_an_older_version_is_restored_as_a_new_version(staff, console) -> None:
    _save(staff, text="One")
    _save(staff, base=1, text="Two")
    restored = post(staff, f"{SMS_DUE}/restore", {"version": "1", "base_version": "2"})
    assert restored.status_code == 303
    assert [(r.version, r.text) for r in _versions(console)] == [(1, "One"), (2, "Two"), (3, "One")]
    with console.sessions() as session:
        actions = session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
    assert actions == ["template.saved", "template.saved", "template.restored"]


def test_the_default_from_the_config_folder_can_be_restored(staff, console) -> None:
    _save(staff, text="Custom")
    post(staff, f"{SMS_DUE}/restore", {"version": "0", "base_version": "1"})
    default = console.templates[("due", "sms", "en")].text
    assert [r.text for r in _versions(console)] == ["Custom", default]


def test_an_email_template_needs_a_subject_and_keeps_its_html(staff, console) -> None:
    path = "/admin/templates/due/email/tr"
    refused = _save(staff, path, text="Merhaba", html="<p>Merhaba</p>")
    assert refused.status_code == 422 and "subject</strong>: must not be empty" in refused.text
    saved = _save(staff, path, subject="Randevu", text="Merhaba", html="<p>{{ clinic.name }}</p>")
    assert saved.status_code == 303
    row = _versions(console, channel="email")[0]
    assert (row.language, row.subject, row.html) == ("tr", "Randevu", "<p>{{ clinic.name }}</p>")


def test_a_whatsapp_template_maps_its_content_sid_and_numbered_variables(staff, console) -> None:
    sid = "HX" + "a" * 32
    path = "/admin/templates/due/whatsapp/en"
    bad = post(staff, path, {"base_version": "0", "content_sid": "HX123", "variable": ["x"]})
    assert bad.status_code == 422 and "HX followed by 32 hex digits" in bad.text
    ok = post(
        staff,
        path,
        {
            "base_version": "0",
            "content_sid": sid,
            "text": "preview",
            "variable": ["{{ patient.given_name }}", "{{ window.open | date }}", ""],
        },
    )
    assert ok.status_code == 303
    row = _versions(console, channel="whatsapp")[0]
    assert (row.content_sid, row.variables) == (
        sid,
        {"1": "{{ patient.given_name }}", "2": "{{ window.open | date }}"},
    )


def _preview(client, **fields: object) -> dict[str, object]:
    data = {"step": "due", "channel": "sms", "language": "en", **fields}
    response = post(
        client, "/admin/templates/preview", data, headers={"Accept": "application/json"}
    )
    assert response.status_code in (200, 404)
    body: dict[str, object] = response.json()
    return body


def test_the_sms_preview_counts_segments_and_names_the_characters_that_force_ucs2(staff) -> None:
    plain = _preview(staff, text="Hello " * 30)
    assert plain["sms"] == {
        "characters": 179,
        "encoding": "GSM-7",
        "units": 179,
        "segments": 2,
        "forcing_ucs2": [],
    }
    turkish = _preview(staff, text="Randevunuzu alın, teşekkürler")
    sms = turkish["sms"]
    assert sms["encoding"] == "UCS-2" and sms["segments"] == 1  # type: ignore[index]
    assert sms["forcing_ucs2"] == ["ı", "ş"]  # type: ignore[index]


def test_the_preview_renders_for_a_chosen_patient_or_the_sample_one(staff, console) -> None:
    with console.sessions() as session, session.begin():
        p = factories.patient(session, external_id="P-77", given_name="Zeynep")
        factories.treatment(session, p, dt.date(2026, 1, 10))
    text = "{{ patient.given_name }} from {{ window.open | date('yyyy-MM-dd') }}"
    chosen = _preview(staff, text=text, patient="P-77")
    assert (chosen["text"], chosen["for"]) == ("Zeynep from 2026-04-04", "Zeynep Yılmaz")
    sample = _preview(staff, text=text)
    assert sample["ok"] and str(sample["text"]).startswith("Ayşe from")
    missing = _preview(staff, text=text, patient="NOPE")
    assert missing["ok"] is False and "NOPE" in str(missing["error"])


def test_the_preview_reports_a_render_error_with_its_line(staff) -> None:
    body = _preview(staff, text="Hi\n{{ patient.given_name.nope }}")
    assert body["ok"] is False
    assert body["error"]["field"] == "text" and body["error"]["line"] == 2  # type: ignore[index]


def test_the_grid_shows_custom_default_and_missing_templates(staff) -> None:
    _save(staff, text="Custom")
    page = staff.get("/admin/templates?language=de&step=due&channel=sms", follow_redirects=False)
    assert page.headers["location"] == "/admin/templates/due/sms/de"
    _save(staff, "/admin/templates/due/sms/de", text="Hallo {{ patient.given_name }}")
    grid = staff.get("/admin/templates").text
    assert 'aria-label="due sms en: custom"' in grid
    assert 'aria-label="due email en: default"' in grid
    assert 'aria-label="due email de: missing"' in grid


# --- patients --------------------------------------------------------------------------------


def _patient(console, **fields: object) -> int:
    with console.sessions() as session, session.begin():
        p = factories.patient(session, **fields)
        factories.treatment(session, p, dt.date(2025, 12, 20))
        return p.id


def test_staff_record_an_opt_out_with_a_reason_and_it_takes_effect(staff, console, now) -> None:
    patient_id = _patient(console)
    plan_pending(console, now=now)
    missing = post(
        staff,
        f"/admin/patients/{patient_id}/consent",
        {"channel": "sms", "action": "opt_out", "reason": ""},
    )
    assert missing.status_code == 400 and "needs a reason" in missing.text
    done = post(
        staff,
        f"/admin/patients/{patient_id}/consent",
        {"channel": "sms", "action": "opt_out", "reason": "asked by phone"},
    )
    assert done.status_code == 303
    with console.sessions() as session:
        row = session.scalars(select(Consent).where(Consent.channel == "sms")).one()
        assert (row.opted_out_at, row.opt_out_source, row.opt_out_reason) == (
            now,
            "staff",
            "asked by phone",
        )
        assert session.scalars(select(Treatment.needs_plan)).all() == [True]
        audit = session.scalars(select(AuditEntry)).one()
        assert (audit.actor, audit.action, audit.detail) == (
            "staff@example.com",
            "opt_out.sms",
            "asked by phone",
        )
    assert "asked by phone" in staff.get(f"/admin/patients/{patient_id}").text


def test_recording_consent_on_an_opted_out_channel_lifts_the_opt_out(staff, console, now) -> None:
    patient_id = _patient(console, channels="whatsapp|sms", whatsapp="+905431970000")
    post(
        staff,
        f"/admin/patients/{patient_id}/consent",
        {"channel": "whatsapp", "action": "opt_out", "reason": "wrong number"},
    )
    post(
        staff, f"/admin/patients/{patient_id}/consent", {"channel": "whatsapp", "action": "consent"}
    )
    with console.sessions() as session:
        row = session.scalars(select(Consent).where(Consent.channel == "whatsapp")).one()
        assert row.usable and row.granted_source == "staff"


def test_the_patient_page_shows_reminders_deliveries_and_the_window(staff, console, now) -> None:
    patient_id = _patient(console, given_name="Deniz", family_name="Aydın")
    plan_pending(console, now=now)
    page = staff.get(f"/admin/patients/{patient_id}").text
    assert "Deniz Aydın" in page and "Timeline of chronic_migraine" in page
    assert page.count('class="badge status-pending"') == 2  # due and last_call ahead
    assert staff.get("/admin/patients/999999").status_code == 404


# --- outbox ----------------------------------------------------------------------------------


def _reminders(console, now) -> dict[str, int]:
    _patient(console)
    plan_pending(console, now=now)
    with console.sessions() as session:
        return {r.step: r.id for r in session.scalars(select(Reminder))}


def _status(console, reminder_id: int) -> tuple[str, str | None]:
    with console.sessions() as session:
        r = session.get_one(Reminder, reminder_id)
        return r.status, r.reason


def test_staff_cancel_a_pending_reminder_once(staff, console, now) -> None:
    ids = _reminders(console, now)
    done = post(
        staff, f"/admin/outbox/{ids['due']}/cancel", {"back": "/admin/outbox?view=upcoming"}
    )
    assert done.headers["location"] == "/admin/outbox?view=upcoming&done=cancelled"
    assert _status(console, ids["due"]) == ("cancelled", "staff")
    again = post(staff, f"/admin/outbox/{ids['due']}/cancel", {})
    assert again.status_code == 409


def test_staff_retry_a_failed_reminder_now_but_never_a_sent_one(staff, console, now) -> None:
    ids = _reminders(console, now)
    with console.sessions() as session, session.begin():
        session.get_one(Reminder, ids["due"]).status = "failed"
        session.get_one(Reminder, ids["due"]).attempts = 12
        session.get_one(Reminder, ids["last_call"]).status = "sent"
    assert post(staff, f"/admin/outbox/{ids['due']}/retry", {}).status_code == 303
    with console.sessions() as session:
        r = session.get_one(Reminder, ids["due"])
        assert (r.status, r.next_attempt_at, r.attempts) == ("pending", now, 0)
        assert session.scalars(select(AuditEntry.action)).all() == ["reminder.retry"]
    assert post(staff, f"/admin/outbox/{ids['last_call']}/retry", {}).status_code == 409
    assert _status(console, ids["last_call"]) == ("sent", None)


def test_the_outbox_filters_by_state(staff, console, now) -> None:
    ids = _reminders(console, now)
    post(staff, f"/admin/outbox/{ids['due']}/cancel", {})
    upcoming = staff.get("/admin/outbox?view=upcoming").text
    cancelled = staff.get("/admin/outbox?view=cancelled").text
    assert upcoming.count("Cancel reminder") == 1 and cancelled.count("Retry reminder") == 1
    assert staff.get("/admin/outbox?since=yesterday").status_code == 400


def test_the_forecast_counts_what_goes_out_tomorrow_in_the_clinic_zone(staff, console, now) -> None:
    with console.sessions() as session, session.begin():
        p = factories.patient(session)
        # the window opens on 2026-03-05, tomorrow in Istanbul when now is 2026-03-04 10:00
        factories.treatment(session, p, dt.date(2026, 3, 5) - dt.timedelta(days=84))
    plan_pending(console, now=now)
    page = staff.get("/admin/outbox/tomorrow").text
    assert '<strong id="forecast-total">1</strong>' in page
    assert "<td>chronic_migraine</td><td>due</td><td>1</td>" in page


# --- protocols -------------------------------------------------------------------------------


def _protocol_form(**overrides: object) -> dict[str, object]:
    form: dict[str, object] = {
        "indication": "chronic migraine",
        "min_interval_days": "84",
        "target_interval_days": "90",
        "max_interval_days": "120",
        "step_name": ["upcoming", "due", "last_call", ""],
        "step_anchor": ["window_open", "window_open", "window_close", "window_open"],
        "step_offset": ["-14", "0", "-7", "0"],
        "step_lead": ["0", "1"],
    }
    form.update(overrides)
    return form


def test_a_protocol_edit_is_a_new_version_and_replans_unsent_reminders(admin, console, now) -> None:
    ids = _reminders(console, now)
    with console.sessions() as session:
        due_before = session.get_one(Reminder, ids["due"]).due_at
    response = post(
        admin,
        "/admin/protocols/chronic_migraine",
        _protocol_form(
            min_interval_days="88",
            target_interval_days="95",
            step_name=["upcoming", "due", ""],
            step_anchor=["window_open"] * 3,
            step_offset=["-14", "0", "0"],
        ),
    )
    assert response.status_code == 303
    assert console.protocols["chronic_migraine"].min_interval_days == 88
    plan_pending(console, now=now)
    with console.sessions() as session:
        version = session.scalars(select(ProtocolVersion)).one()
        assert (version.version, version.author) == (1, "admin@example.com")
        due = session.get_one(Reminder, ids["due"])
        assert due.due_at - due_before == dt.timedelta(days=4)
        last_call = session.get_one(Reminder, ids["last_call"])
        assert (last_call.status, last_call.reason) == ("cancelled", "protocol_changed")


def test_a_protocol_edit_that_does_not_hold_together_is_refused_naming_the_field(
    admin, console
) -> None:
    bad_order = post(
        admin, "/admin/protocols/chronic_migraine", _protocol_form(min_interval_days="150")
    )
    assert bad_order.status_code == 422 and "min_interval_days &lt;= target" in bad_order.text
    bad_offset = post(
        admin,
        "/admin/protocols/chronic_migraine",
        _protocol_form(step_offset=["soon", "0", "-7", "0"]),
    )
    assert bad_offset.status_code == 422 and "steps.0.offset_days" in bad_offset.text
    with console.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ProtocolVersion)) == 0
    assert console.protocols["chronic_migraine"].min_interval_days == 84


# --- users -----------------------------------------------------------------------------------


def test_an_admin_adds_an_account_and_lifts_a_lockout(admin, console, now) -> None:
    added = post(
        admin,
        "/admin/users",
        {
            "email": "nurse@example.com",
            "role": "staff",
            "password": "p" * 12,
            "password_again": "p" * 12,
        },
    )
    assert added.status_code == 303
    differ = post(
        admin,
        "/admin/users",
        {
            "email": "n2@example.com",
            "role": "staff",
            "password": "p" * 12,
            "password_again": "q" * 12,
        },
    )
    assert differ.status_code == 422 and "The two passwords differ" in differ.text
    from reminders import auth

    with console.sessions() as session, session.begin():
        user = auth.find_user(session, "nurse@example.com")
        assert user is not None
        user.locked_until, user_id = now + dt.timedelta(minutes=10), user.id
    post(admin, f"/admin/users/{user_id}", {"action": "unlock"})
    with console.sessions() as session:
        assert session.get_one(type(user), user_id).locked_until is None
