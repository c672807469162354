"""The HTTP side of the service: health, metrics, webhooks, API and staff console."""
