"""The /api/v1 bearer-token API for clinic systems."""

from fastapi import APIRouter

router = APIRouter()
