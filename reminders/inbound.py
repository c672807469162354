"""Messages from patients (Twilio inbound SMS and WhatsApp): STOP, START, HELP, or a reply.

``STOP`` opts the sending number out of the channel it wrote on (SMS, or WhatsApp when ``From``
starts with ``whatsapp:``) for every patient with that number; ``START`` undoes it; ``HELP``
gets the clinic's contact line in the patient's language (for a number we do not know: the
language of the keyword, ``YARDIM`` is Turkish, else the clinic's); anything else is stored
against the patient for staff. Twilio's Advanced Opt-Out verdict (``OptOutType``) wins over our
reading of the body, which follows Twilio's default keywords and their Turkish equivalents: the
whole body, case-insensitive.
Repeats of one ``MessageSid`` count once. Bodies are stored (staff read them) and never logged.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from reminders import consents, queries
from reminders.models import Channel, Patient, Reply
from reminders.settings import Settings
from reminders.templating import language_chain

WHATSAPP_PREFIX = "whatsapp:"


class Kind(enum.StrEnum):
    STOP = "stop"
    START = "start"
    HELP = "help"
    OTHER = "other"


# Twilio's default keywords
ENGLISH: dict[str, Kind] = {
    **dict.fromkeys(("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"), Kind.STOP),
    **dict.fromkeys(("START", "YES", "UNSTOP"), Kind.START),
    "HELP": Kind.HELP,
}
# RET is the opt-out word of Turkey's message registry (IYS); with and without the Turkish
# letters, as phones often type them
TURKISH: dict[str, Kind] = {
    **dict.fromkeys(("RET", "İPTAL", "IPTAL", "DUR"), Kind.STOP),
    **dict.fromkeys(("BAŞLA", "BASLA", "EVET"), Kind.START),
    "YARDIM": Kind.HELP,
}
KEYWORDS: dict[str, Kind] = {**ENGLISH, **TURKISH}

# The HELP answer per language: {clinic}, {contact}; the contact line with and without a phone.
HELP_TEXTS: dict[str, tuple[str, str, str]] = {
    "en": (
        "{clinic}: treatment reminders. For help {contact}. Reply STOP to stop these messages.",
        "call {phone}",
        "contact the clinic",
    ),
    "tr": (
        "{clinic}: tedavi hatırlatmaları. Yardım için {contact}. "
        "Bu mesajları durdurmak için STOP yazın.",
        "{phone} numarasını arayın",
        "kliniğe başvurun",
    ),
}


def _keyword(body: str) -> str:
    return body.strip().rstrip(".!").strip().upper()


def classify(body: str, opt_out_type: str | None = None) -> Kind:
    """What an inbound message asks for."""
    verdict = (opt_out_type or "").strip().lower()
    if verdict in (Kind.STOP, Kind.START, Kind.HELP):
        return Kind(verdict)
    return KEYWORDS.get(_keyword(body), Kind.OTHER)


@dataclass(frozen=True)
class Inbound:
    """One inbound message as Twilio posted it."""

    message_id: str
    sender: str  # From: +E164, or whatsapp:+E164
    body: str = ""
    opt_out_type: str | None = None

    @property
    def channel(self) -> Channel:
        return Channel.WHATSAPP if self.sender.startswith(WHATSAPP_PREFIX) else Channel.SMS

    @property
    def number(self) -> str:
        return self.sender.removeprefix(WHATSAPP_PREFIX).strip()


@dataclass(frozen=True)
class Received:
    kind: Kind
    patients: int  # patients with that number
    changed: int  # consents that this message stopped or restarted
    repeat: bool  # Twilio posted this message before
    language: str | None = None  # the first patient's with that number, or the keyword's


def patients_with(session: Session, channel: Channel, number: str) -> list[Patient]:
    """Patients reached at ``number`` on ``channel`` (WhatsApp falls back to the phone)."""
    if channel == Channel.SMS:
        match = Patient.phone == number
    else:
        wa = Patient.whatsapp.in_((number, WHATSAPP_PREFIX + number))
        match = or_(wa, and_(Patient.whatsapp.is_(None), Patient.phone == number))
    return list(session.scalars(select(Patient).where(match).order_by(Patient.id)))


def receive(session: Session, message: Inbound, *, now: dt.datetime) -> Received:
    """Store the message and act on it (opt-out, opt-in); the caller answers HELP."""
    kind = classify(message.body, message.opt_out_type)
    patients = patients_with(session, message.channel, message.number)
    language = patients[0].language if patients else _language_of(message.body)
    if not queries.first_seen(session, "twilio_inbound", message.message_id, now):
        return Received(kind, len(patients), 0, repeat=True, language=language)
    session.add(
        Reply(
            patient_id=patients[0].id if patients else None,
            channel=message.channel,
            from_address=message.sender[:320],
            body=message.body,
            kind=kind,
            provider_message_id=message.message_id[:128],
            received_at=now,
        )
    )
    changed = sum(_act(session, p, kind, message, now) for p in patients)
    return Received(kind, len(patients), changed, repeat=False, language=language)


def _language_of(body: str) -> str | None:
    return "tr" if _keyword(body) in TURKISH else None


def _act(
    session: Session, patient: Patient, kind: Kind, message: Inbound, now: dt.datetime
) -> bool:
    if kind == Kind.STOP:
        reason = f"replied {message.body.strip()[:20] or message.opt_out_type}"
        return consents.opt_out(
            session, patient, message.channel, source="twilio", now=now, reason=reason
        )
    if kind == Kind.START:
        return consents.opt_in(session, patient, message.channel, source="twilio", now=now)
    return False


def help_text(settings: Settings, language: str | None = None) -> str:
    """The HELP answer, who we are and how to reach the clinic, in ``language`` (its base
    language, the clinic's default, or English when we have no text for it)."""
    chain = language_chain(language or settings.default_language, settings.default_language)
    text, call, no_phone = next((HELP_TEXTS[c] for c in chain if c in HELP_TEXTS), HELP_TEXTS["en"])
    phone = settings.clinic_phone
    contact = call.format(phone=phone) if phone else no_phone
    return text.format(clinic=settings.clinic_name, contact=contact)
