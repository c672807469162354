"""English and Turkish for the console: gettext catalogues (``translations/<lang>.po``).

The ``.po`` files are the only source: they are compiled in memory when the console starts,
so there is no build step and no binary file in the repository. To add a string, write it in
English in a template (``{{ _("...") }}`` or ``{% trans %}``) or mark it with ``N_`` in Python,
then add its translation to every ``.po`` file (``tests/test_console_data.py`` checks that
none is missing; ``pybabel extract -F babel.cfg`` lists them all).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale, negotiate_locale
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import NullTranslations, Translations
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
CATALOGUES = HERE / "translations"
LANGUAGES = {"en": "English", "tr": "Türkçe"}
DEFAULT_LANGUAGE = "en"


def N_(message: str) -> str:  # noqa: N802 - the gettext convention for "translate later"
    """Marks a message for extraction; it is translated where it is shown."""
    return message


# Words the pages show from data (statuses, channels, roles, anchors): listed so that
# extraction finds them and every catalogue translates them.
DATA_WORDS = (
    N_("pending"),
    N_("claimed"),
    N_("in_doubt"),
    N_("sent"),
    N_("failed"),
    N_("cancelled"),
    N_("expired"),
    N_("upcoming"),
    N_("planned"),
    N_("sending"),
    N_("accepted"),
    N_("queued"),
    N_("delivered"),
    N_("read"),
    N_("deferred"),
    N_("undelivered"),
    N_("abandoned"),
    N_("email"),
    N_("sms"),
    N_("whatsapp"),
    N_("staff"),
    N_("admin"),
    N_("window_open"),
    N_("target"),
    N_("window_close"),
    N_("custom"),
    N_("default"),
    N_("missing"),
    N_("on_time"),
    N_("early"),
    N_("late"),
    N_("missed"),
)


@functools.cache
def translations(language: str) -> NullTranslations:
    with (CATALOGUES / f"{language}.po").open("rb") as source:
        catalog = read_po(source, locale=language)
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(fp=compiled)


def pick_language(cookie: str | None, accept_language: str | None) -> str:
    """The language chosen in the console, else the browser's preference, else English."""
    if cookie in LANGUAGES:
        return cookie
    wanted = [
        part.split(";")[0].strip().replace("-", "_") for part in (accept_language or "").split(",")
    ]
    return negotiate_locale([w for w in wanted if w], list(LANGUAGES), sep="_") or DEFAULT_LANGUAGE


@functools.cache
def environment(language: str, zone: ZoneInfo) -> Environment:
    """The Jinja environment of one language: autoescaped, strict, with gettext and date filters.
    One per language and zone for the process, so templates compile once."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "svg"]),
        undefined=StrictUndefined,
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    locale = Locale.parse(language)

    def when(value: dt.datetime | None, fmt: str = "yyyy-MM-dd HH:mm") -> str:
        return "" if value is None else format_datetime(value.astimezone(zone), fmt, locale=locale)

    def day(value: dt.date | None, fmt: str = "medium") -> str:
        return "" if value is None else format_date(value, fmt, locale=locale)

    env.filters["when"] = when
    env.filters["day"] = day
    env.globals["LANGUAGES"] = LANGUAGES
    return env
