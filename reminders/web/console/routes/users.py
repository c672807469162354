"""Users (administrators): the accounts, adding one, switching one off, lifting a lockout."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select
from starlette.responses import Response

from reminders import auth
from reminders.models import AuditEntry, User
from reminders.web.console.base import (
    AdminForm,
    AdminPage,
    ConsoleRoute,
    NotFound,
    Page,
    Pager,
    Paging,
    Problem,
)
from reminders.web.console.i18n import N_

router = APIRouter(route_class=ConsoleRoute)


def _render(current: Page, results: Pager, **extra: object) -> Response:
    with current.runtime.sessions() as session:
        results.fill(
            session.scalars(
                select(User).order_by(User.email).offset(results.offset).limit(results.fetch)
            ).all()
        )
    context = {"results": results, "roles": auth.ROLES, "error": None, "form": {}, **extra}
    context["done"] = current.request.query_params.get("done")
    return current.render("users.html", context, 422 if context["error"] else 200)


@router.get("/users", name="console_users")
def listing(current: AdminPage, results: Paging) -> Response:
    return _render(current, results)


@router.post("/users", name="console_users_add")
def add(current: AdminPage, form: AdminForm) -> Response:
    email, role = str(form.get("email") or ""), str(form.get("role") or "staff")
    password, again = str(form.get("password") or ""), str(form.get("password_again") or "")
    assert current.viewer is not None
    if password != again:
        error = current.gettext(N_("The two passwords differ."))
        return _render(current, Pager(), error=error, form={"email": email, "role": role})
    try:
        with current.runtime.sessions() as session, session.begin():
            user = auth.create_user(session, email, password, role)
            _audit(current, session, "user.added", user.email, role)
    except auth.AccountError as exc:
        error = current.gettext(exc.message, **exc.params)
        return _render(current, Pager(), error=error, form={"email": email, "role": role})
    return current.redirect("console_users", {"done": "added"})


def _audit(current: Page, session: object, action: str, subject: str, detail: str) -> None:
    assert current.viewer is not None
    session.add(  # type: ignore[attr-defined]
        AuditEntry(
            actor=current.viewer.email,
            action=action,
            subject=f"user:{subject}",
            detail=detail,
            occurred_at=current.now(),
        )
    )


@router.post("/users/{user_id}", name="console_user_change")
def change(
    user_id: int,
    current: AdminPage,
    form: AdminForm,
) -> Response:
    action = str(form.get("action") or "")
    assert current.viewer is not None
    with current.runtime.sessions() as session, session.begin():
        user = session.get(User, user_id)
        if user is None:
            raise NotFound(N_("There is no such account."))
        if user.id == current.viewer.id and action in ("deactivate", "make_staff"):
            raise Problem(N_("You cannot switch off or demote your own account."))
        if action == "deactivate":
            user.active = False
        elif action == "activate":
            user.active = True
        elif action == "unlock":
            user.locked_until, user.failed_logins = None, 0
        elif action in ("make_admin", "make_staff"):
            user.role = action.removeprefix("make_")
        else:
            raise Problem(N_("That request could not be handled."))
        _audit(current, session, f"user.{action}", user.email, "")
    return current.redirect("console_users", {"done": action})
