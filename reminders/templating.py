"""Message templates: sandboxed Jinja2, strict about unknown variables, HTML autoescaped.

A template is one (step, channel, language). Staff versions live in the database; the
defaults live in ``templates/<language>.yaml`` in the config folder. Lookup falls back from
the patient's language to its base language (``pt_BR`` -> ``pt``) and then to the clinic's
default language.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from babel.dates import format_date
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, UndefinedError, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from reminders.settings import ConfigError

TEXT_FIELDS = ("subject", "text", "html")


class TemplateError(Exception):
    """A template does not render; names the field and line."""

    def __init__(self, field: str, reason: str, line: int | None = None) -> None:
        where = f"{field}, line {line}" if line else field
        super().__init__(f"{where}: {reason}")
        self.field, self.reason, self.line = field, reason, line


@dataclass(frozen=True)
class TemplateSpec:
    step: str
    channel: str
    language: str
    text: str = ""
    subject: str | None = None
    html: str | None = None
    content_sid: str | None = None
    variables: Mapping[str, str] | None = None
    version: int = 0  # 0: the default from the config folder


@dataclass(frozen=True)
class Rendered:
    text: str
    subject: str | None = None
    html: str | None = None
    content_sid: str | None = None
    content_variables: dict[str, str] = field(default_factory=dict)


@pass_context
def _date(context: Context, value: dt.date, format: str = "long") -> str:
    locale = context.get("language", "en")
    if _cacheable(value, format, locale):
        return _formatted_date(value, format, locale)
    return format_date(value, format=format, locale=locale)


_CACHED_FORMAT = 64  # characters: a staff template's odd long pattern is not kept


def _cacheable(value: object, format: object, locale: object) -> bool:
    """A plain date, with a short pattern and language: what the shipped templates pass."""
    return (
        type(value) is dt.date
        and isinstance(format, str)
        and isinstance(locale, str)
        and len(format) + len(locale) <= _CACHED_FORMAT
    )


@functools.lru_cache(maxsize=4096)
def _formatted_date(value: dt.date, format: str, locale: str) -> str:
    """Babel parses the locale and the pattern again for every date: dispatch renders the same
    few dates in the same few languages all day. A `due` SMS with two dates: 11 us a render
    against 23 us."""
    return format_date(value, format=format, locale=locale)


MAX_SIZE = 100_000  # characters or items a template may build in one operation
MAX_EXPONENT_BITS = 4_096


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox keeps staff templates away from Python's internals; this also keeps them
    from exhausting memory or CPU with one expression: ``'x' * 10**10``, ``10**10**10``,
    ``'x'.center(10**10)``, ``'x'|indent(10**10)``. A reminder never needs a number that big.
    ``namespace`` (the one mutable object a template can grow in a loop) is not offered."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals.pop("namespace", None)
        self.filters = {name: _bounded(f) for name, f in self.filters.items()}

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    _check_size(len(seq) * times)
        elif _is_int(left) and _is_int(right) and _too_big_power(left, right):
            raise SecurityError("the power is too large")
        return super().call_binop(context, operator, left, right)

    def call(
        __self,  # noqa: N805 (Jinja's own signature: keyword arguments may be called "self")
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        _check_arguments(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _too_big_power(base: int, exponent: int) -> bool:
    return exponent > 0 and abs(base) > 1 and abs(base).bit_length() * exponent > MAX_EXPONENT_BITS


def _check_size(size: int) -> None:
    if size > MAX_SIZE:
        raise SecurityError(f"the result would be too large (over {MAX_SIZE:,} characters)")


def _check_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if _is_int(value) and abs(value) > MAX_SIZE:
            raise SecurityError(f"the number {value} is too large (over {MAX_SIZE:,})")


_PRINTF_SIZES = re.compile(r"%[#0\- +]*(\d*)(?:\.(\d*))?")


def _check_format(source: str) -> None:
    """Widths and precisions in a ``str.format`` string (``'{:>999999999}'``)."""
    try:
        specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(source)]
    except ValueError:
        return  # str.format itself reports the malformed string
    for spec in specs:
        for number in re.findall(r"\d+", spec):
            _check_size(int(number))


def _check_printf(source: Any) -> None:
    """Widths and precisions in a ``%`` format for the ``format`` filter (``'%999999999s'``)."""
    if isinstance(source, str):
        for match in _PRINTF_SIZES.finditer(source):
            for number in match.groups():
                if number:
                    _check_size(int(number))


def _bounded(fn: Any) -> Any:
    """A filter whose numeric arguments are bounded (``center``, ``indent``, ``wordwrap``...);
    ``functools.wraps`` keeps Jinja's pass_context/pass_eval_context marks."""

    @functools.wraps(fn)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_arguments(args[1:], kwargs)
        if fn.__name__ == "do_format":
            _check_printf(next((a for a in args if isinstance(a, str)), None))
        return fn(*args, **kwargs)

    return bounded


def _environment(autoescape: bool) -> BoundedSandbox:
    env = BoundedSandbox(
        undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=False
    )
    env.filters["date"] = _bounded(_date)
    return env


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


@functools.lru_cache(maxsize=1024)
def _compiled(source: str, html: bool) -> Template:
    """Compiling costs far more than rendering, and dispatch renders the same few sources all
    day: each is compiled once. A source that does not compile raises (and is not cached)."""
    return (_HTML if html else _PLAIN).from_string(source)


def render_string(source: str, context: Mapping[str, Any], field: str) -> str:
    if "\x00" in source:  # no message carries one, and PostgreSQL cannot store it
        line = source.count("\n", 0, source.index("\x00")) + 1
        raise TemplateError(field, "holds a NUL character", line)
    try:
        return _compiled(source, field == "html").render(context).strip()
    except TemplateSyntaxError as exc:
        raise TemplateError(field, exc.message or "syntax error", exc.lineno) from None
    except UndefinedError as exc:
        raise TemplateError(field, exc.message or "undefined variable", _line(exc)) from None
    except SecurityError as exc:
        raise TemplateError(field, f"not allowed: {exc}", _line(exc)) from None
    except Exception as exc:  # any runtime error in a staff template is the template's fault
        raise TemplateError(field, f"{type(exc).__name__}: {exc}", _line(exc)) from None


def _line(exc: BaseException) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render(spec: TemplateSpec, context: Mapping[str, Any]) -> Rendered:
    """Render every part of ``spec``; raises TemplateError naming the first part that fails."""
    parts = {
        f: render_string(getattr(spec, f), context, f) for f in TEXT_FIELDS if getattr(spec, f)
    }
    variables = {}
    for key, source in (spec.variables or {}).items():
        value = render_string(source, context, f"variables.{key}")
        if not value or any(c in value for c in "\n\t"):
            raise TemplateError(f"variables.{key}", "must be one non-empty line (WhatsApp rule)")
        variables[str(key)] = value
    if spec.channel == "whatsapp" and spec.variables is None and spec.content_sid:
        raise TemplateError("variables", "a WhatsApp template needs its variable mapping")
    return Rendered(
        text=parts.get("text", ""),
        subject=parts.get("subject"),
        html=parts.get("html"),
        content_sid=spec.content_sid,
        content_variables=variables,
    )


def load_default_templates(config_dir: Path) -> dict[tuple[str, str, str], TemplateSpec]:
    """Every default template from ``templates/*.yaml``, keyed by (step, channel, language)."""
    found: dict[tuple[str, str, str], TemplateSpec] = {}
    for path in sorted((config_dir / "templates").glob("*.yaml")):
        language = path.stem
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for step, channels in data.items():
            for channel, body in (channels or {}).items():
                if channel not in ("email", "sms", "whatsapp") or not isinstance(body, dict):
                    raise ConfigError(f"{path}: {step}.{channel}: unknown channel or not a mapping")
                try:
                    found[(step, channel, language)] = TemplateSpec(
                        step=step, channel=channel, language=language, **body
                    )
                except TypeError as exc:
                    raise ConfigError(f"{path}: {step}.{channel}: {exc}") from None
    return found


def language_chain(language: str, default: str) -> list[str]:
    """Languages to try, most specific first: ``pt_BR`` -> ``pt`` -> the clinic default."""
    chain = [language]
    if "_" in language:
        chain.append(language.split("_", 1)[0])
    for fallback in (default, default.split("_", 1)[0]):
        if fallback not in chain:
            chain.append(fallback)
    return chain
