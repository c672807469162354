"""Prometheus metrics, in a registry owned by the running service (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From a millisecond (a database on the same host, a fake provider) to Twilio's 10 s timeout.
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The service's counters; one instance per process, passed to whoever records."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.planned = Counter("reminders_planned", "Reminders planned.", ["protocol"], registry=r)
        self.sent = Counter(
            "reminders_sent", "Reminders accepted by a provider.", ["channel"], registry=r
        )
        self.failed = Counter(
            "reminders_failed",
            "Reminders ended without sending.",
            ["channel", "reason"],
            registry=r,
        )
        self.expired = Counter(
            "reminders_expired", "Reminders expired unsent.", ["reason"], registry=r
        )
        self.cancelled = Counter(
            "reminders_cancelled", "Reminders cancelled.", ["reason"], registry=r
        )
        self.retried = Counter(
            "reminders_retried", "Transient failures rescheduled.", ["channel"], registry=r
        )
        self.provider_errors = Counter(
            "reminders_provider_errors",
            "Provider errors by code.",
            ["channel", "kind", "code"],
            registry=r,
        )
        self.delivery_status = Counter(
            "reminders_delivery_status",
            "Delivery status updates.",
            ["channel", "status"],
            registry=r,
        )
        self.webhook_rejected = Counter(
            "reminders_webhook_rejected",
            "Webhook requests refused.",
            ["source", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "reminders_due_to_accepted_seconds",
            "From a reminder's due time to the provider's acceptance.",
            ["channel"],
            buckets=(1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600),
            registry=r,
        )
        # Where a dispatcher's time goes: a message waits for its delivery row to be committed
        # (a step), then for the provider. Seconds, by histogram, so ops can tell which of the
        # two holds the rate back.
        self.provider_call = Histogram(
            "reminders_provider_call_seconds",
            "A provider call, from the request to the answer (or the error).",
            ["channel"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.dispatch_step = Histogram(
            "reminders_dispatch_step_seconds",
            "A dispatch step: outcomes recorded and attempts' rows written and committed "
            "before their calls.",
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.due_depth = Gauge(
            "reminders_due_unsent", "Reminders due and not yet sent.", registry=r
        )
        self.channel_paused = Gauge(
            "reminders_channel_paused",
            "1 while a channel is paused for misconfiguration.",
            ["channel"],
            registry=r,
        )
        self.in_doubt = Gauge(
            "reminders_in_doubt",
            "Reminders whose last send may or may not have reached the provider.",
            registry=r,
        )
        self.webhook_events = Counter(
            "reminders_webhook_events",
            "Provider webhook events handled, by what they came to "
            "(applied, ignored, duplicate, unknown, settled_sent, fallback, retry, opt_out...).",
            ["source", "outcome"],
            registry=r,
        )
        self.opt_outs = Counter(
            "reminders_opt_outs",
            "Channels stopped (or restarted) by a patient or a provider.",
            ["channel", "source", "action"],
            registry=r,
        )
        self.replies = Counter(
            "reminders_inbound_replies", "Messages from patients.", ["channel", "kind"], registry=r
        )

    def set_depths(self, *, due: int, in_doubt: int) -> None:
        """Queue gauges, read from the database by whoever looked (housekeeping, a scrape)."""
        self.due_depth.set(due)
        self.in_doubt.set(in_doubt)
