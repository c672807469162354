"""Signing in and out, the language switch, the console's static files."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response

from reminders import auth
from reminders.logs import get_logger
from reminders.web.console.base import (
    LANGUAGE_COOKIE,
    AnyForm,
    AnyPage,
    ConsoleRoute,
    NotFound,
    StaffForm,
    StaffPage,
)
from reminders.web.console.i18n import HERE, LANGUAGES, N_

log = get_logger(__name__)
router = APIRouter(route_class=ConsoleRoute)
STATIC = HERE / "static"
_STATIC_FILES = {p.name: p for p in STATIC.iterdir() if p.is_file()}
_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def safe_next(target: str | None) -> str | None:
    """Only a path inside the console: never another site (``//evil``, ``https://...``)."""
    if not target or "\\" in target or target.startswith("//"):
        return None
    return target if target == "/admin" or target.startswith("/admin/") else None


@router.get("", name="console_home")
def home(current: StaffPage) -> Response:
    return current.redirect("console_dashboard")


@router.get("/login", name="console_login")
def login_form(current: AnyPage, next: str | None = None) -> Response:
    return current.render("login.html", {"next": safe_next(next) or "", "error": None})


@router.post("/login", name="console_login_post")
def login(current: AnyPage, form: AnyForm) -> Response:
    email, password = str(form.get("email") or ""), str(form.get("password") or "")
    target = safe_next(str(form.get("next") or ""))
    with current.runtime.sessions() as session, session.begin():
        user = auth.authenticate(session, email, password, now=current.now())
        user_id = user.id if user else None
    if user is None:
        log.info("console_sign_in_refused")
        error = N_("Wrong email or password, or the account is locked after too many attempts.")
        context = {"next": target or "", "error": error, "email": email}
        return current.render("login.html", context, status_code=401)
    current.session = current.session.signed_in(user_id)  # type: ignore[arg-type]
    current.new_session = True
    log.info("console_signed_in", user_id=user_id)
    if target:
        return _to(target)
    return current.redirect("console_dashboard")


def _to(path: str) -> Response:
    from fastapi.responses import RedirectResponse

    return RedirectResponse(path, status_code=303)


@router.post("/logout", name="console_logout")
def logout(current: StaffPage, _form: StaffForm) -> Response:
    current.sign_out()
    return current.redirect("console_login")


@router.post("/language", name="console_language")
def language(current: AnyPage, form: AnyForm) -> Response:
    chosen = str(form.get("language") or "")
    if chosen not in LANGUAGES:
        raise NotFound(N_("%(name)s is not a language code."), name=chosen)
    response = _to(safe_next(str(form.get("next") or "")) or current.href("console_home"))
    response.set_cookie(
        LANGUAGE_COOKIE,
        chosen,
        max_age=365 * 24 * 3600,
        path="/admin",
        samesite="lax",
        httponly=True,
        secure=current.request.url.scheme == "https",
    )
    return response


@router.get("/static/{name}", name="console_static")
def static(name: str) -> Response:
    path = _STATIC_FILES.get(name)
    if path is None:
        raise NotFound(N_("There is no such page."))
    headers = {"Cache-Control": "public, max-age=3600"}
    return FileResponse(path, media_type=_TYPES.get(path.suffix), headers=headers)
