"""Provider webhooks (Twilio status and inbound, SendGrid events)."""

from fastapi import APIRouter

router = APIRouter()
