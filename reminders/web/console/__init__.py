"""The staff console under /admin: server-rendered pages, one module per page in ``routes``.

Sign-in and roles live in :mod:`reminders.auth` and :mod:`reminders.web.console.base`; staff
see templates, patients, the outbox and the dashboard, administrators also protocols and users.
The pages' router is :data:`reminders.web.console.routes.router`: importing this package (the
``reminders users`` command does) does not load the web framework.
"""
