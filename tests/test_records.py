"""The one validation layer: what a patient or treatment row must look like."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from reminders.records import (
    PATIENT_FIELDS,
    InvalidRecordError,
    PatientRecord,
    Rules,
    TreatmentRecord,
    normalise_phone,
    parse_patient,
    parse_treatment,
)
from reminders.settings import load_settings

NOW = dt.datetime(2026, 3, 4, 7, 0, tzinfo=dt.UTC)
RULES = Rules(
    country="TR",
    timezone="Europe/Istanbul",
    language="en",
    protocols=frozenset({"chronic_migraine", "tmj_bruxism"}),
    today=dt.date(2026, 3, 4),
)


def patient(**values: Any) -> PatientRecord:
    return parse_patient({"external_id": "p1", "given_name": "Ayşe", **values}, RULES)


def treatment(**values: Any) -> TreatmentRecord:
    base = {
        "external_id": "t1",
        "patient_external_id": "p1",
        "protocol": "chronic_migraine",
        "administered_on": "2026-01-10",
    }
    return parse_treatment({**base, **values}, RULES)


def problems(parse: Any, **values: Any) -> dict[str, str]:
    with pytest.raises(InvalidRecordError) as caught:
        parse(**values)
    return {p.field: p.reason for p in caught.value.problems}


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("0543 197 43 20", "+905431974320"),
        ("0543-197-43-20", "+905431974320"),
        ("(0543) 197 43 20", "+905431974320"),
        ("543 197 43 20", "+905431974320"),
        ("+90 543 197 43 20", "+905431974320"),
        ("0090 543 197 43 20", "+905431974320"),
        ("+44 7911 123456", "+447911123456"),
        ("  0212 123 45 67  ", "+902121234567"),
    ],
)
def test_it_normalises_phone_numbers_to_e164_reading_national_ones_in_the_clinic_country(
    raw: str, e164: str
) -> None:
    assert patient(phone=raw).phone == e164


def test_it_reads_national_numbers_in_whatever_country_the_clinic_is_in() -> None:
    assert normalise_phone("0151 23456789", "DE") == "+4915123456789"
    with pytest.raises(ValueError, match="read as TR"):
        normalise_phone("0151 23456789", "TR")


def test_it_accepts_a_whatsapp_number_with_the_twilio_prefix() -> None:
    assert patient(whatsapp="whatsapp:+905431974320").whatsapp == "+905431974320"


@pytest.mark.parametrize("raw", ["0543 197 43 2O", "123", "+90", "call me", "0543 197 43 20 ext 5"])
def test_it_refuses_what_is_not_a_phone_number_without_repeating_it(raw: str) -> None:
    reason = problems(patient, phone=raw)["phone"]
    assert "phone number" in reason
    assert raw not in reason and "543" not in reason


def test_it_normalises_an_email_domain_and_refuses_a_bad_address_without_repeating_it() -> None:
    assert patient(email=" Ayse.Yilmaz@Example.COM ").email == "Ayse.Yilmaz@example.com"
    reason = problems(patient, email="ayse@@example")["email"]
    assert reason == "is not a valid email address"


def test_it_does_not_look_up_the_email_domain() -> None:
    # No DNS: a well-formed address at a domain that does not exist is accepted.
    assert patient(email="a@no-such-domain-for-reminders.invalid-tld-xyz.com").email


@pytest.mark.parametrize(
    ("raw", "code"), [("tr", "tr"), ("pt-BR", "pt_BR"), ("DE", "de"), ("", "en")]
)
def test_it_normalises_the_language_and_defaults_to_the_clinic_one(raw: str, code: str) -> None:
    assert patient(language=raw).language == code


def test_it_refuses_an_unknown_language() -> None:
    assert "not a known language" in problems(patient, language="klingon")["language"]


@pytest.mark.parametrize(
    ("raw", "zone"),
    [
        ("Europe/Berlin", "Europe/Berlin"),
        ("europe/berlin", "Europe/Berlin"),
        ("", "Europe/Istanbul"),
    ],
)
def test_it_takes_an_iana_zone_in_any_case_and_defaults_to_the_clinic_zone(
    raw: str, zone: str
) -> None:
    assert patient(timezone=raw).timezone == zone


@pytest.mark.parametrize("raw", ["Mars/Olympus", "GMT+3", "../etc/passwd", "Istanbul"])
def test_it_refuses_what_is_not_an_iana_zone(raw: str) -> None:
    assert "IANA" in problems(patient, timezone=raw)["timezone"]


def test_it_keeps_the_channel_order_given() -> None:
    assert patient(channels="email | WhatsApp|sms").channels == ("email", "whatsapp", "sms")


def test_without_channels_it_uses_every_channel_the_patient_has_an_address_for() -> None:
    record = patient(email="a@example.com", phone="0543 197 43 20")
    assert record.channels == ("sms", "email")
    assert patient(whatsapp="+905431974320").channels == ("whatsapp",)


def test_it_refuses_unknown_and_repeated_channels() -> None:
    assert "'telegram'" in problems(patient, channels="sms|telegram")["channels"]
    assert "twice" in problems(patient, channels="sms|sms")["channels"]


def test_consents_are_yes_or_no_and_a_blank_one_is_not_given() -> None:
    record = patient(consent_email="Yes", consent_sms="no", consent_whatsapp="")
    assert record.consents == {"email": True, "sms": False}
    assert "not yes or no" in problems(patient, consent_sms="maybe")["consent_sms"]


def test_a_patient_is_active_unless_the_row_says_no() -> None:
    assert patient().active is True
    assert patient(active="no").active is False


@pytest.mark.parametrize(("raw", "days"), [("", 0), ("0", 0), ("14", 14), ("60", 60), (7, 7)])
def test_travel_lead_days_is_a_whole_number_up_to_60(raw: object, days: int) -> None:
    assert patient(travel_lead_days=raw).travel_lead_days == days


@pytest.mark.parametrize("raw", ["61", "-1", "3.5", "two", 3.5])
def test_it_refuses_travel_lead_days_outside_0_to_60(raw: object) -> None:
    assert "0 to 60" in problems(patient, travel_lead_days=raw)["travel_lead_days"]


def test_it_lists_every_bad_field_at_once() -> None:
    found = problems(
        patient, external_id="", given_name=" ", phone="12", email="x@", timezone="Nowhere"
    )
    assert set(found) == {"external_id", "given_name", "phone", "email", "timezone"}
    assert found["external_id"] == "is required"


def test_it_refuses_unknown_fields_and_values_that_are_not_text() -> None:
    found = problems(patient, phone_number="0543", family_name={"a": 1})
    assert found == {"phone_number": "unknown field", "family_name": "must be text, not dict"}


def test_it_refuses_an_external_id_longer_than_the_column() -> None:
    assert "128" in problems(patient, external_id="x" * 129)["external_id"]


def test_json_values_read_like_their_csv_cells() -> None:
    from_json = patient(consent_sms=True, consent_email=False, channels=["sms"], travel_lead_days=3)
    from_csv = patient(consent_sms="yes", consent_email="no", channels="sms", travel_lead_days="3")
    assert from_json == from_csv


def test_patient_fields_are_the_csv_columns_of_the_product() -> None:
    assert PATIENT_FIELDS == (
        "external_id",
        "given_name",
        "family_name",
        "email",
        "phone",
        "whatsapp",
        "language",
        "timezone",
        "channels",
        "consent_email",
        "consent_sms",
        "consent_whatsapp",
        "travel_lead_days",
    )


# Treatments


def test_a_treatment_reads_into_typed_values() -> None:
    record = treatment(protocol="TMJ_Bruxism ", units="155", product=" Botox ", location="")
    assert record == TreatmentRecord(
        "t1", "p1", "tmj_bruxism", dt.date(2026, 1, 10), "Botox", Decimal("155"), None
    )


def test_it_refuses_an_unknown_protocol_naming_the_known_ones() -> None:
    reason = problems(treatment, protocol="botox")["protocol"]
    assert "'botox'" in reason and "chronic_migraine, tmj_bruxism" in reason


@pytest.mark.parametrize(
    "raw", ["02.01.2026", "2026-1-2", "2026/01/02", "20260102", "2026-02-30", "2026-01-02T10:00"]
)
def test_administered_on_must_be_an_iso_date(raw: str) -> None:
    reason = problems(treatment, administered_on=raw)["administered_on"]
    assert reason == f"{raw!r} is not a date in the form YYYY-MM-DD"


def test_administered_on_may_be_today_but_not_in_the_future() -> None:
    assert treatment(administered_on="2026-03-04").administered_on == dt.date(2026, 3, 4)
    assert "in the future" in problems(treatment, administered_on="2026-03-05")["administered_on"]


def test_today_is_the_clinic_local_date() -> None:
    settings = load_settings({}, clinic_timezone="Asia/Tokyo")
    late = dt.datetime(2026, 3, 4, 16, 0, tzinfo=dt.UTC)  # already the 5th in Tokyo
    assert Rules.of(settings, ["chronic_migraine"], late).today == dt.date(2026, 3, 5)


@pytest.mark.parametrize(
    ("raw", "units"),
    [("155", "155"), ("155.5", "155.5"), ("155,5", "155.5"), (200, "200"), ("", None)],
)
def test_units_are_a_positive_decimal_with_a_decimal_point_or_comma(
    raw: object, units: str | None
) -> None:
    assert treatment(units=raw).units == (Decimal(units) if units else None)


@pytest.mark.parametrize("raw", ["0", "-5", "abc", "1,500", "NaN", "Infinity", "1e12"])
def test_it_refuses_units_that_are_not_a_positive_number(raw: str) -> None:
    assert "not a positive number" in problems(treatment, units=raw)["units"]


def test_it_refuses_units_with_more_than_two_decimals() -> None:
    assert problems(treatment, units="1.234")["units"] == "has more than 2 decimal places"


def test_a_treatment_needs_its_ids_protocol_and_date() -> None:
    found = problems(parse_treatment_raw, raw={})
    assert found == {
        "external_id": "is required",
        "patient_external_id": "is required",
        "protocol": "is required",
        "administered_on": "is required",
    }


def parse_treatment_raw(raw: dict[str, Any]) -> TreatmentRecord:
    return parse_treatment(raw, RULES)
