"""The one validation layer: raw patient and treatment rows into typed records.

The CSV import, the SQL sync and the ``/api/v1`` API all turn their input into a mapping of
field name to raw value and call :func:`parse_patient` or :func:`parse_treatment`, so the three
agree on what is valid. A bad row raises :class:`InvalidRecordError` carrying every problem as a
(field, reason) pair. Reasons never quote a phone number or an email address: they end up in
logs, API responses and terminals.

An empty value means "not given": a default applies (``language``, ``timezone``, ``channels``,
``travel_lead_days``, ``active``), an optional field stays empty, and a consent stays as it is.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import sys
import zoneinfo
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from reminders.settings import Settings, normalise_language

CHANNELS = ("whatsapp", "sms", "email")
PATIENT_FIELDS = (
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
PATIENT_OPTIONAL_FIELDS = ("active",)
TREATMENT_FIELDS = (
    "external_id",
    "patient_external_id",
    "protocol",
    "administered_on",
    "product",
    "units",
    "location",
)
_PATIENT_KNOWN = frozenset(PATIENT_FIELDS + PATIENT_OPTIONAL_FIELDS)
_TREATMENT_KNOWN = frozenset(TREATMENT_FIELDS)
MAX_TRAVEL_LEAD_DAYS = 60
MAX_UNITS = Decimal("99999999.99")  # the column is NUMERIC(10, 2)
YES = frozenset({"yes", "y", "true", "1"})
NO = frozenset({"no", "n", "false", "0"})
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PHONE_CHARS = re.compile(r"\+?[0-9 ()./-]+")
_COMMA_DECIMAL = re.compile(r"\d+,\d{1,2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

RawValue = str | int | float | bool | Decimal | list[str] | None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a record: the field and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class InvalidRecordError(ValueError):
    """A record that cannot be stored; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class Rules:
    """What validation needs to know: the clinic's defaults, the protocols and today's date."""

    country: str
    timezone: str
    language: str
    protocols: frozenset[str]
    today: dt.date  # clinic-local: a treatment after it is in the future

    @classmethod
    def of(cls, settings: Settings, protocols: Collection[str], now: dt.datetime) -> Rules:
        return cls(
            country=settings.clinic_country,
            timezone=settings.clinic_timezone,
            language=settings.default_language,
            protocols=frozenset(protocols),
            today=now.astimezone(settings.clinic_zone).date(),
        )


@dataclass(frozen=True)
class PatientRecord:
    external_id: str
    given_name: str
    family_name: str
    email: str | None
    phone: str | None
    whatsapp: str | None
    language: str
    timezone: str
    channels: tuple[str, ...]
    consents: Mapping[str, bool] = field(default_factory=dict)  # only the consents given
    travel_lead_days: int = 0
    active: bool = True


@dataclass(frozen=True)
class TreatmentRecord:
    external_id: str
    patient_external_id: str
    protocol: str
    administered_on: dt.date
    product: str | None
    units: Decimal | None
    location: str | None


class _Fields:
    """Reads raw values as stripped text and collects problems instead of stopping at one."""

    def __init__(self, raw: Mapping[str, object], known: frozenset[str]) -> None:
        self.raw = raw
        self.problems = [] if known.issuperset(raw) else _unknown(raw, known)

    def fail(self, name: str, reason: str) -> None:
        self.problems.append(Problem(name, reason))

    def text(
        self, name: str, *, required: bool = False, max_length: int = 200, free: bool = False
    ) -> str:
        """The stripped text of a field ("" when not given); ``free`` text (names, product,
        location) has its runs of whitespace, line breaks included, made one space."""
        value = self.raw.get(name)
        if type(value) is str:  # the common case, first: as_text strips text
            value = value.strip()
        else:
            try:
                value = as_text(value)
            except TypeError as exc:
                self.fail(name, str(exc))
                return ""
        if free:
            value = " ".join(value.split())
        if not value:
            if required:
                self.fail(name, "is required")
            return ""
        if len(value) > max_length:
            self.fail(name, f"is longer than {max_length} characters")
        elif not value.isprintable() and _CONTROL.search(value):  # printable text has none
            self.fail(name, "contains control characters")
        else:
            return value
        return ""

    def raise_if_invalid(self) -> None:
        if self.problems:
            raise InvalidRecordError(self.problems)


def _unknown(raw: Mapping[str, object], known: frozenset[str]) -> list[Problem]:
    return [Problem(k, "unknown field") for k in raw if k not in known]


def as_text(value: object) -> str:
    """A raw value as stripped text: JSON booleans read as yes/no, lists as ``a|b``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return "|".join(v.strip() for v in value)
    raise TypeError(f"must be text, not {type(value).__name__}")


def parse_patient(raw: Mapping[str, object], rules: Rules) -> PatientRecord:
    """A patient record from raw values, or InvalidRecordError naming every bad field."""
    f = _Fields(raw, _PATIENT_KNOWN)
    email = _email(f)
    phone = _phone(f, "phone", rules.country)
    whatsapp = _phone(f, "whatsapp", rules.country)
    record = PatientRecord(
        external_id=f.text("external_id", required=True, max_length=128),
        given_name=f.text("given_name", required=True, free=True),
        family_name=f.text("family_name", free=True),
        email=email,
        phone=phone,
        whatsapp=whatsapp,
        language=_language(f, rules.language),
        timezone=_timezone(f, rules.timezone),
        channels=_channels(f, email=email, phone=phone, whatsapp=whatsapp),
        consents=_consents(f),
        travel_lead_days=_lead_days(f),
        active=bool(_yes_no(f, "active", default=True)),
    )
    f.raise_if_invalid()
    return record


def parse_treatment(raw: Mapping[str, object], rules: Rules) -> TreatmentRecord:
    """A treatment record from raw values, or InvalidRecordError naming every bad field."""
    f = _Fields(raw, _TREATMENT_KNOWN)
    record = TreatmentRecord(
        external_id=f.text("external_id", required=True, max_length=128),
        patient_external_id=f.text("patient_external_id", required=True, max_length=128),
        protocol=_protocol(f, rules.protocols),
        administered_on=_administered_on(f, rules.today),
        product=f.text("product", free=True) or None,
        units=_units(f),
        location=f.text("location", free=True) or None,
    )
    f.raise_if_invalid()
    return record


def _email(f: _Fields) -> str | None:
    value = f.text("email", max_length=320)
    if not value:
        return None
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError:
        f.fail("email", "is not a valid email address")
        return None


def normalise_phone(value: str, country: str) -> str:
    """``value`` in E.164 (national numbers read in ``country``), or ValueError."""
    bare = value.removeprefix("whatsapp:").strip()
    if not _PHONE_CHARS.fullmatch(bare):
        raise ValueError("has characters that are not part of a phone number")
    try:
        number = phonenumbers.parse(bare, country)
    except phonenumbers.NumberParseException:
        raise ValueError("is not a phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"is not a valid phone number (national numbers are read as {country})")
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def _phone(f: _Fields, name: str, country: str) -> str | None:
    value = f.text(name, max_length=64)
    if not value:
        return None
    try:
        return normalise_phone(value, country)
    except ValueError as exc:
        f.fail(name, str(exc))
        return None


def _language(f: _Fields, default: str) -> str:
    value = f.text("language", max_length=35)
    try:
        return normalise_language(value) if value else default
    except ValueError:
        f.fail("language", f"{value!r} is not a known language code (e.g. en, tr, pt_BR)")
        return default


@functools.cache
def _zones() -> dict[str, str]:
    return {name.lower(): name for name in zoneinfo.available_timezones()}


def _timezone(f: _Fields, default: str) -> str:
    value = f.text("timezone", max_length=64)
    if not value:
        return default
    zone = _zones().get(value.lower())
    if zone is None:
        f.fail("timezone", f"{value!r} is not an IANA time zone (e.g. Europe/Istanbul)")
        return default
    return zone


def _channels(
    f: _Fields, *, email: str | None, phone: str | None, whatsapp: str | None
) -> tuple[str, ...]:
    value = f.text("channels", max_length=64).lower()
    if not value:  # not given: every channel that has an address of its own
        have = {"whatsapp": whatsapp, "sms": phone, "email": email}
        return tuple(c for c in CHANNELS if have[c])
    names = [n.strip() for n in value.split("|")]
    unknown = [n for n in names if n not in CHANNELS]
    if unknown:
        f.fail("channels", f"unknown channel(s) {', '.join(map(repr, unknown))}; use {CHANNELS}")
    elif len(set(names)) != len(names):
        f.fail("channels", "names a channel twice")
    return tuple(names)


def _yes_no(f: _Fields, name: str, *, default: bool | None = None) -> bool | None:
    value = f.text(name, max_length=8).lower()
    if not value:
        return default
    if value in YES or value in NO:
        return value in YES
    f.fail(name, f"{value!r} is not yes or no")
    return default


def _consents(f: _Fields) -> dict[str, bool]:
    given = {c: _yes_no(f, f"consent_{c}") for c in CHANNELS}
    return {c: v for c, v in given.items() if v is not None}


def _lead_days(f: _Fields) -> int:
    value = f.text("travel_lead_days", max_length=8)
    if not value:
        return 0
    if not value.isdigit() or int(value) > MAX_TRAVEL_LEAD_DAYS:
        f.fail("travel_lead_days", f"must be a whole number from 0 to {MAX_TRAVEL_LEAD_DAYS}")
        return 0
    return int(value)


def _protocol(f: _Fields, protocols: frozenset[str]) -> str:
    value = f.text("protocol", required=True, max_length=64)
    code = sys.intern(value.lower())  # one string per protocol, however many rows
    if value and code not in protocols:
        f.fail("protocol", f"unknown protocol {value!r}; known: {', '.join(sorted(protocols))}")
    return code


def _administered_on(f: _Fields, today: dt.date) -> dt.date:
    value = f.text("administered_on", required=True, max_length=32)
    if not value:
        return today
    day = _read_date(value)
    if day is None:
        f.fail("administered_on", f"{value!r} is not a date in the form YYYY-MM-DD")
        return today
    if day > today:
        f.fail("administered_on", f"{value} is in the future (today is {today})")
    return day


@functools.lru_cache(maxsize=4096)  # a file's treatments fall on a few hundred days
def _read_date(value: str) -> dt.date | None:
    """The day of a ``YYYY-MM-DD`` value, or None."""
    if not _ISO_DATE.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def _units(f: _Fields) -> Decimal | None:
    value = f.text("units", max_length=32)
    if not value:
        return None
    units, problem = _read_units(value)
    if problem:
        f.fail("units", problem)
    return units


@functools.lru_cache(maxsize=1024)  # a clinic's files repeat a few doses
def _read_units(value: str) -> tuple[Decimal | None, str | None]:
    """The units of a non-empty value, or the reason it is refused."""
    if _COMMA_DECIMAL.fullmatch(value):  # a decimal comma, as Turkish spreadsheets write it
        value = value.replace(",", ".")
    try:
        units = Decimal(value)
    except InvalidOperation:
        units = Decimal("NaN")
    if not units.is_finite() or units <= 0 or units > MAX_UNITS:
        return None, f"{value!r} is not a positive number"
    if units != units.quantize(Decimal("0.01")):
        return None, "has more than 2 decimal places"
    return units, None
