"""What every console page shares: the session, the signed-in viewer, CSRF, rendering, problems.

Route handlers depend on :func:`page` (anyone), :func:`staff` (signed in) or :func:`admin`;
POST handlers also on :func:`staff_form` / :func:`admin_form`, which check the CSRF token and
hand over the parsed form. A :class:`Problem` raised anywhere becomes a small HTML page (or
JSON for the preview's fetch calls) with the right status, never a 500.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from reminders.auth import SessionCodec, SessionData, csrf_matches
from reminders.logs import get_logger
from reminders.models import User
from reminders.runtime import Runtime
from reminders.web.console.i18n import LANGUAGES, N_, environment, pick_language, translations

log = get_logger(__name__)
SESSION_COOKIE = "reminders_session"
LANGUAGE_COOKIE = "reminders_lang"
PAGE_SIZE = 50
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
_init_lock = threading.Lock()
T = TypeVar("T")


class ConsoleState:
    """Built once per app on first use: the session codec and one template set per language."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        secret = runtime.settings.secret_key
        if secret is None:
            log.warning("console_secret_key_missing", effect="sessions end when the process stops")
        key = secret.get_secret_value() if secret else secrets.token_urlsafe(32)
        self.codec = SessionCodec(key)
        zone = runtime.settings.clinic_zone
        self.catalogues = {lang: translations(lang) for lang in LANGUAGES}
        self.templates = {lang: Jinja2Templates(env=environment(lang, zone)) for lang in LANGUAGES}


def console_state(request: Request) -> ConsoleState:
    app_state = request.app.state
    with _init_lock:
        if getattr(app_state, "console", None) is None:
            app_state.console = ConsoleState(app_state.runtime)
    state: ConsoleState = app_state.console
    return state


@dataclass(frozen=True)
class Viewer:
    id: int
    email: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass
class Page:
    """One request's view of the console."""

    request: Request
    state: ConsoleState
    session: SessionData
    language: str
    viewer: Viewer | None = None
    new_session: bool = False

    @property
    def runtime(self) -> Runtime:
        return self.state.runtime

    def now(self) -> dt.datetime:
        return self.runtime.clock()

    def href(self, route: str, query: dict[str, Any] | None = None, /, **params: Any) -> str:
        path = self.request.scope.get("root_path", "") + str(
            self.request.app.url_path_for(route, **{k: str(v) for k, v in params.items()})
        )
        kept = {k: v for k, v in (query or {}).items() if v not in (None, "")}
        return f"{path}?{urlencode(kept)}" if kept else path

    def gettext(self, message: str, **params: Any) -> str:
        text = self.state.catalogues[self.language].gettext(message)
        return text % params if params else text

    def render(self, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
        full = {"page": self, "viewer": self.viewer, "csrf": self.session.csrf, **context}
        return self.state.templates[self.language].TemplateResponse(
            self.request, name, full, status_code=status_code
        )

    def redirect(
        self, route: str, query: dict[str, Any] | None = None, /, **params: Any
    ) -> Response:
        return RedirectResponse(self.href(route, query, **params), status_code=303)

    def sign_in(self, user: User) -> None:
        self.session = self.session.signed_in(user.id)
        self.new_session = True

    def sign_out(self) -> None:
        self.session = SessionData.anonymous()
        self.new_session = True


class Problem(Exception):  # noqa: N818 - a page to show, not an error of the program
    """Something the viewer should be told instead of the page they asked for."""

    status = 400

    def __init__(self, message: str = N_("That request could not be handled."), **params: Any):
        super().__init__(message)
        self.message, self.params = message, params


class LoginRequired(Problem):
    status = 401


class Forbidden(Problem):
    status = 403


class NotFound(Problem):
    status = 404


class Conflict(Problem):
    status = 409


async def page(request: Request) -> Page:
    state = console_state(request)
    loaded = state.codec.loads(request.cookies.get(SESSION_COOKIE))
    language = pick_language(
        request.cookies.get(LANGUAGE_COOKIE), request.headers.get("accept-language")
    )
    current = Page(request, state, loaded or SessionData.anonymous(), language)
    current.new_session = loaded is None
    request.state.console_page = current
    return current


def _viewer(current: Page) -> Page:
    user_id = current.session.user_id
    if user_id is None:
        raise LoginRequired(N_("Please sign in."))
    with current.runtime.sessions() as session:
        user = session.get(User, user_id)
        if user is None or not user.active:
            raise LoginRequired(N_("Please sign in."))
        current.viewer = Viewer(user.id, user.email, user.role)
    return current


def staff(current: Annotated[Page, Depends(page)]) -> Page:
    return _viewer(current)


def admin(current: Annotated[Page, Depends(staff)]) -> Page:
    if current.viewer is None or not current.viewer.is_admin:
        raise Forbidden(N_("Only an administrator can open this page."))
    return current


async def _checked_form(current: Page) -> FormData:
    form = await current.request.form()
    given = form.get("csrf_token") or current.request.headers.get("x-csrf-token")
    if current.new_session or not csrf_matches(current.session.csrf, str(given or "")):
        raise Forbidden(N_("This form has expired. Reload the page and try again."))
    return form


async def any_form(current: Annotated[Page, Depends(page)]) -> FormData:
    """A POST from anyone (sign-in, language): only the CSRF token is checked."""
    return await _checked_form(current)


async def staff_form(current: Annotated[Page, Depends(staff)]) -> FormData:
    return await _checked_form(current)


async def admin_form(current: Annotated[Page, Depends(admin)]) -> FormData:
    return await _checked_form(current)


@dataclass
class Pager:
    """Offset pagination without COUNT(*): fetch one row more than shown to know if more exist."""

    number: int = 1
    size: int = PAGE_SIZE
    rows: list[Any] = field(default_factory=list)
    has_next: bool = False

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def fetch(self) -> int:
        return self.size + 1

    def fill(self, rows: Sequence[T]) -> list[T]:
        self.rows = list(rows[: self.size])
        self.has_next = len(rows) > self.size
        return self.rows


def pager(p: int = 1) -> Pager:
    return Pager(number=max(1, min(p, 100_000)))


def _problem_response(request: Request, problem: Problem) -> Response:
    current: Page | None = getattr(request.state, "console_page", None)
    if current is None:
        return JSONResponse({"error": problem.message}, status_code=problem.status)
    message = current.gettext(problem.message, **problem.params)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse({"error": message}, status_code=problem.status)
    if isinstance(problem, LoginRequired) and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return current.redirect("console_login", {"next": target})
    return current.render("problem.html", {"message": message}, problem.status)


def _finish(request: Request, response: Response) -> None:
    current: Page | None = getattr(request.state, "console_page", None)
    if current is not None and current.new_session:
        response.set_cookie(
            SESSION_COOKIE,
            current.state.codec.dumps(current.session),
            max_age=int(current.state.codec.max_age.total_seconds()),
            path="/",
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")


class ConsoleRoute(APIRoute):
    """Turns problems into pages and adds the session cookie and security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                response = await handler(request)
            except Problem as problem:
                response = _problem_response(request, problem)
            except RequestValidationError:
                response = _problem_response(
                    request, Problem(N_("Some of the input is not valid."))
                )
            _finish(request, response)
            return response

        return handle


AnyPage = Annotated[Page, Depends(page)]
StaffPage = Annotated[Page, Depends(staff)]
AdminPage = Annotated[Page, Depends(admin)]
AnyForm = Annotated[FormData, Depends(any_form)]
StaffForm = Annotated[FormData, Depends(staff_form)]
AdminForm = Annotated[FormData, Depends(admin_form)]
Paging = Annotated[Pager, Depends(pager)]
