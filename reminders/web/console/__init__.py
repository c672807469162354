"""The staff console under /admin: server-rendered pages, one module per page in ``routes``.

Sign-in and roles live in :mod:`reminders.auth` and :mod:`reminders.web.console.base`; staff
see templates, patients, the outbox and the dashboard, administrators also protocols and users.
"""

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
