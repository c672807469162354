"""The schema: patients, their consents, treatments, reminders, deliveries, templates.

A *reminder* is one planned step of one treatment (unique per treatment and step); a
*delivery* is one attempt of a reminder on one channel. Reminder state moves only through
:mod:`reminders.queries`.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from reminders.db import Base, utcnow


class Channel(enum.StrEnum):
    EMAIL = "email"
    SMS = "sms"
    WHATSAPP = "whatsapp"


class ReminderStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for next_attempt_at
    CLAIMED = "claimed"  # a dispatcher holds it until lease_until
    IN_DOUBT = "in_doubt"  # a send may have reached the provider; waiting to settle
    SENT = "sent"  # a provider accepted it
    FAILED = "failed"  # every usable channel failed permanently
    CANCELLED = "cancelled"  # superseded, opted out, inactive, staff
    EXPIRED = "expired"  # could not go out before its step stopped making sense


OPEN_STATUSES = (ReminderStatus.PENDING, ReminderStatus.CLAIMED, ReminderStatus.IN_DOUBT)


class DeliveryStatus(enum.StrEnum):
    SENDING = "sending"  # row written, provider call under way
    IN_DOUBT = "in_doubt"  # the process died or lost its lease mid-call
    ACCEPTED = "accepted"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    DEFERRED = "deferred"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    ABANDONED = "abandoned"  # in doubt past the grace period with no word from the provider


@functools.lru_cache(maxsize=256)
def channel_order(channels: str) -> tuple[Channel, ...]:
    """A patient's ``channels`` column (``"whatsapp|sms|email"``) as channels, in order: a few
    distinct values, remembered (planning asks it of every patient)."""
    return tuple(Channel(c) for c in channels.split("|") if c)


def channel_address(
    channel: Channel, email: str | None, phone: str | None, whatsapp: str | None
) -> str | None:
    """A patient's address on ``channel``: WhatsApp goes to the phone number unless told
    another."""
    if channel == Channel.EMAIL:
        return email
    if channel == Channel.SMS:
        return phone
    if channel == Channel.WHATSAPP:
        return whatsapp or phone
    raise KeyError(channel)


def _uuid() -> str:
    return uuid.uuid4().hex


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (
        # Name search in the console is a prefix range on lower(name): index-served.
        Index("ix_patients_given_name_lower", func.lower(text("given_name"))),
        Index("ix_patients_family_name_lower", func.lower(text("family_name"))),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    given_name: Mapped[str] = mapped_column(String(200))
    family_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str | None] = mapped_column(String(320), index=True)
    phone: Mapped[str | None] = mapped_column(String(32), index=True)
    whatsapp: Mapped[str | None] = mapped_column(String(32), index=True)
    language: Mapped[str] = mapped_column(String(35))
    timezone: Mapped[str] = mapped_column(String(64))
    channels: Mapped[str] = mapped_column(String(64))  # ordered, e.g. "whatsapp|sms|email"
    travel_lead_days: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    consents: Mapped[list[Consent]] = relationship(
        back_populates="patient", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def channel_order(self) -> list[Channel]:
        return list(channel_order(self.channels))

    def address(self, channel: Channel) -> str | None:
        return channel_address(channel, self.email, self.phone, self.whatsapp)

    def consent(self, channel: Channel) -> Consent | None:
        return next((c for c in self.consents if c.channel == channel), None)


class Consent(Base):
    """A patient's consent to one channel, and any opt-out from it (with when and how)."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("patient_id", "channel"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    granted: Mapped[bool] = mapped_column(Boolean, default=False)
    granted_at: Mapped[dt.datetime | None]
    granted_source: Mapped[str | None] = mapped_column(String(64))
    opted_out_at: Mapped[dt.datetime | None]
    opt_out_source: Mapped[str | None] = mapped_column(String(64))
    opt_out_reason: Mapped[str | None] = mapped_column(String(500))

    patient: Mapped[Patient] = relationship(back_populates="consents")

    @property
    def usable(self) -> bool:
        return self.granted and self.opted_out_at is None


class Treatment(Base):
    __tablename__ = "treatments"
    __table_args__ = (
        Index("ix_treatments_patient_protocol", "patient_id", "protocol", "administered_on"),
        Index(
            "ix_treatments_needs_plan",
            "patient_id",
            "protocol",
            postgresql_where=text("needs_plan"),
            sqlite_where=text("needs_plan = 1"),  # as SQLAlchemy renders the flag there
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    protocol: Mapped[str] = mapped_column(String(64))
    administered_on: Mapped[dt.date] = mapped_column(Date)  # clinic-local date
    product: Mapped[str | None] = mapped_column(String(200))
    units: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    location: Mapped[str | None] = mapped_column(String(200))
    deleted_at: Mapped[dt.datetime | None]
    # Who wrote it last: "import", "api" or "sync:<name>" (NULL: before revision 0005). A full
    # sync deletes only what it wrote itself.
    source: Mapped[str | None] = mapped_column(String(64))
    needs_plan: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    patient: Mapped[Patient] = relationship(lazy="joined")


UNCLAIMED = "status <> 'claimed'"  # ``ix_reminders_patient``'s predicate


class Reminder(Base):
    __tablename__ = "reminders"
    __table_args__ = (
        UniqueConstraint("treatment_id", "step", name="uq_reminders_treatment_step"),
        Index("ix_reminders_status_due", "status", "due_at", "id"),  # outbox views, leases
        Index(
            "ix_reminders_upcoming",
            "next_attempt_at",
            "id",
            postgresql_where=text("status IN ('pending', 'claimed')"),
            sqlite_where=text("status IN ('pending', 'claimed')"),
        ),  # also the claim's: status = 'pending' implies it
        # A patient's reminders. On PostgreSQL not those claimed (a moment while they are sent;
        # few, found by status): a claim changes status, so there it wrote a new entry into
        # every index for each row, this one's at a random page. SQLite leaves an index alone
        # when an update changes none of its columns: a predicate on status would cost its
        # claims instead. See ``reminders.queries.of_patient``.
        Index(
            "ix_reminders_patient",
            "patient_id",
            postgresql_where=text(UNCLAIMED),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    treatment_id: Mapped[int] = mapped_column(ForeignKey("treatments.id", ondelete="CASCADE"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id", ondelete="CASCADE"))
    protocol: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ReminderStatus.PENDING)
    reason: Mapped[str | None] = mapped_column(String(64))
    due_at: Mapped[dt.datetime]  # when the step is meant to go out (inside the send window)
    expires_at: Mapped[dt.datetime]  # when the step stops making sense
    next_attempt_at: Mapped[dt.datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None]
    channel: Mapped[str | None] = mapped_column(String(16))  # the channel that sent it
    sent_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    treatment: Mapped[Treatment] = relationship(lazy="raise")
    deliveries: Mapped[list[Delivery]] = relationship(
        back_populates="reminder", order_by="Delivery.id", lazy="raise"
    )


class Delivery(Base):
    """One attempt of a reminder on one channel; written before the provider is called."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_reminder", "reminder_id"),
        Index("ix_deliveries_provider_id", "provider_message_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True, default=_uuid)
    reminder_id: Mapped[int] = mapped_column(ForeignKey("reminders.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.SENDING)
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(String(500))
    permanent: Mapped[bool] = mapped_column(Boolean, default=False)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    reminder: Mapped[Reminder] = relationship(back_populates="deliveries")
    events: Mapped[list[DeliveryEvent]] = relationship(
        back_populates="delivery", order_by="DeliveryEvent.id", lazy="raise"
    )


class DeliveryEvent(Base):
    """The status history of a delivery, as reported by us and by the provider."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(32))  # dispatch, twilio, sendgrid, housekeeping
    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    delivery: Mapped[Delivery] = relationship(back_populates="events")


class Template(Base):
    """One version of the message for a step on a channel in a language."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("step", "channel", "language", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    step: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    language: Mapped[str] = mapped_column(String(35))
    version: Mapped[int] = mapped_column(Integer)
    subject: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str | None] = mapped_column(Text)
    content_sid: Mapped[str | None] = mapped_column(String(34))
    variables: Mapped[dict[str, str] | None] = mapped_column(JSON)
    author: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Reply(Base):
    """An inbound message from a patient (STOP, START, HELP or free text for staff)."""

    __tablename__ = "replies"
    __table_args__ = (Index("ix_replies_patient", "patient_id", "received_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id", ondelete="SET NULL"))
    channel: Mapped[str] = mapped_column(String(16))
    from_address: Mapped[str] = mapped_column(String(320))
    body: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(16))  # stop, start, help, other
    provider_message_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    handled_by: Mapped[str | None] = mapped_column(String(320))
    handled_at: Mapped[dt.datetime | None]


class WebhookEvent(Base):
    """Provider events already processed, so repeated deliveries of one event count once."""

    __tablename__ = "webhook_events"
    __table_args__ = (UniqueConstraint("source", "event_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SyncState(Base):
    """Where the last sync from a clinic database got to (its updated-at cursor)."""

    __tablename__ = "sync_state"

    source: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(String(64))
    last_run_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))


class SendSlot(Base):
    """One sender's rate, shared by every replica: the next free moment (Unix seconds) to
    send on it. :class:`reminders.ratelimit.SharedRateLimiter` reserves slots here."""

    __tablename__ = "send_slots"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    next_slot: Mapped[float] = mapped_column(Float(precision=53))


class User(Base):
    """A staff console account."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="staff")  # staff, admin
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]
    last_login_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ProtocolVersion(Base):
    """A staff edit of a protocol (intervals and steps); the newest version wins over config."""

    __tablename__ = "protocol_versions"
    __table_args__ = (UniqueConstraint("code", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    author: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who did what in the console or the API (consents, opt-outs, retries, cancels)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str | None] = mapped_column(String(1000))
    occurred_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
