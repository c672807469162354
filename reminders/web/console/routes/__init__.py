"""One module per console page, and the router of them all (under /admin)."""

from fastapi import APIRouter

from reminders.web.console.routes import (
    account,
    dashboard,
    outbox,
    patients,
    protocols,
    templates,
    users,
)

router = APIRouter(include_in_schema=False)
for _page in (account, dashboard, templates, protocols, patients, outbox, users):
    router.include_router(_page.router, prefix="/admin")
