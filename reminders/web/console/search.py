"""Finding a patient by name, phone, email or external id, with index-friendly queries.

What was typed decides the query, so each one can use an index:
- a phone number (national or E.164) is normalised to E.164: equality on ``phone`` / ``whatsapp``;
- anything with ``@`` is an email: equality, or a prefix as a range on the ``email`` index;
- anything else is first tried as the start of an external id (a range on its unique index);
  if no id starts so, it is the starts of names: every word must start the given or the
  family name.

A prefix is written as ``col >= 'abc' AND col < 'abd'`` (plus the LIKE, for exactness), which a
plain b-tree index serves on SQLite and on PostgreSQL whatever the collation's LIKE support.
Name prefixes compare ``lower(name)``; with an expression index on ``lower(given_name)`` and
``lower(family_name)`` they become index scans too (see the console notes in the README).
"""

from __future__ import annotations

import re
from typing import Any

import phonenumbers
from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from reminders.models import Patient

_PHONE = re.compile(r"^\+?[\d\s().-]{6,}$")
_LIKE_ESCAPE = "\\"


def _like_prefix(text: str) -> str:
    for special in (_LIKE_ESCAPE, "%", "_"):
        text = text.replace(special, _LIKE_ESCAPE + special)
    return text + "%"


def _prefix(column: Any, text: str) -> Any:
    upper = text[:-1] + chr(ord(text[-1]) + 1)
    return and_(column >= text, column < upper, column.like(_like_prefix(text), escape="\\"))


def as_phone(query: str, country: str) -> str | None:
    if not _PHONE.match(query):
        return None
    try:
        number = phonenumbers.parse(query, country)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _name_variants(word: str) -> set[str]:
    """Lower-case, and capitalised (also the Turkish way: i -> İ), because SQLite's lower()
    folds only ASCII: ``lower('Çelik')`` stays ``Çelik`` there, while ``lower('Işık')`` is
    ``işık`` on both backends (so ``ışı`` also looks for ``işı``)."""
    lower = word.lower()
    turkish = {"i": "İ", "ı": "I"}.get(lower[0], lower[0].upper()) + lower[1:]
    dotted = "i" + lower[1:] if lower[0] == "ı" else lower
    return {lower, lower[0].upper() + lower[1:], turkish, dotted}


def _name_condition(word: str) -> Any:
    columns = (func.lower(Patient.given_name), func.lower(Patient.family_name))
    return or_(*(_prefix(col, variant) for col in columns for variant in _name_variants(word)))


def condition(query: str, country: str) -> Any:
    """The WHERE clause for what was typed (None: list everyone)."""
    query = query.strip()
    if not query:
        return None
    phone = as_phone(query, country)
    if phone:
        return or_(Patient.phone == phone, Patient.whatsapp == phone)
    if "@" in query:
        lowered = query.lower()
        return or_(
            Patient.email == query, Patient.email == lowered, _prefix(Patient.email, lowered)
        )
    return and_(*(_name_condition(w) for w in query.split()))


def _by_external_id(query: str) -> Any:
    return or_(Patient.external_id == query, _prefix(Patient.external_id, query))


def _looks_like_name(query: str, country: str) -> bool:
    return bool(query.strip()) and "@" not in query and as_phone(query.strip(), country) is None


def statement(query: str, country: str) -> Select[Patient]:
    stmt = select(Patient)
    where = condition(query, country)
    if where is None:
        return stmt.order_by(Patient.id.desc())
    return stmt.where(where).order_by(Patient.family_name, Patient.given_name, Patient.id)


def search(session: Session, query: str, country: str, *, offset: int, limit: int) -> list[Patient]:
    """One page of matches. Text that starts an external id finds those patients (an index
    range); only text that starts none is searched as names."""
    stmt = statement(query, country)
    if _looks_like_name(query, country):
        by_id = _by_external_id(query.strip())
        if session.scalar(select(Patient.id).where(by_id).limit(1)) is not None:
            stmt = select(Patient).where(by_id).order_by(Patient.external_id)
    return list(session.scalars(stmt.offset(offset).limit(limit)))
