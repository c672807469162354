"""The staff console under /admin."""

from fastapi import APIRouter

router = APIRouter()
