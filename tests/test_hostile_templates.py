"""Hostile templates, generated with hypothesis: every reach for a dunder attribute (by
attribute, by item, by the ``attr`` filter, inside ``set``, ``for`` and ``if``) is refused by the
sandbox naming the field and the line, through :func:`reminders.templating.render` and through
the console's save, which then stores nothing; any other text renders or is refused the same
way."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reminders.models import Template
from reminders.templating import TemplateError, TemplateSpec, render
from tests.console_support import console, post, staff
from tests.hostile_support import FEW, MANY, NASTY, attempt, count, no_tracebacks, one_line

__all__ = ["console", "staff"]  # fixtures from tests.console_support


CONTEXT = {
    "language": "en",
    "patient": {"given_name": "Ayşe", "family_name": "Yılmaz"},
    "clinic": {"name": "Clinic", "phone": "+90 212 000 00 00"},
    "window": {"open": dt.date(2026, 3, 30), "close": dt.date(2026, 5, 5)},
}
ROOTS = ["patient", "patient.given_name", "clinic", "window.open", "''", "()", "[]", "{}",
         "range", "lipsum", "cycler", "joiner", "namespace", "self", "loop", "0",
         "1.5"]  # fmt: skip
DUNDERS = ["__class__", "__mro__", "__subclasses__", "__globals__", "__init__", "__builtins__",
           "__dict__", "__getattribute__", "__reduce_ex__", "__base__", "__bases__", "__code__",
           "__func__", "__self__", "__module__", "__import__", "__loader__", "__spec__",
           "_TemplateReference__context", "__call__", "__getitem__"]  # fmt: skip
SAFE_HOPS = [".upper", ".items", ".format", ".mro", ".real", "()", "[0]", "|list", "|string",
             "|first", "|e"]  # fmt: skip


@st.composite
def escape(draw: st.DrawFn) -> str:
    """An expression that reaches for a dunder: by attribute, by item, or by the attr filter."""
    dunder = draw(st.sampled_from(DUNDERS))
    reach = draw(st.sampled_from([".{}", "['{}']", '["{}"]', "|attr('{}')", ".{}()"])).format(
        dunder
    )
    before = "".join(draw(st.lists(st.sampled_from(SAFE_HOPS), max_size=2)))
    after = "".join(
        draw(st.lists(st.sampled_from(SAFE_HOPS + [f".{d}" for d in DUNDERS]), max_size=3))
    )
    return draw(st.sampled_from(ROOTS)) + before + reach + after


@st.composite
def escape_template(draw: st.DrawFn) -> tuple[str, int]:
    """A template whose line ``n`` (1-based) prints an escape attempt, somewhere in the text."""
    lines = draw(
        st.lists(st.sampled_from(["Hello {{ patient.given_name }}", "", "Bye"]), max_size=3)
    )
    n = len(lines) + 1
    wrapper = draw(st.sampled_from(["{{{{ {} }}}}", "{{% set x = {} %}}{{{{ x }}}}",
                                    "{{% for x in [{}] %}}{{{{ x }}}}{{% endfor %}}",
                                    "{{% if {} %}}yes{{% endif %}}"]))  # fmt: skip
    return "\n".join([*lines, "Dear " + wrapper.format(draw(escape()))]), n


@MANY
@given(template=escape_template(), field=st.sampled_from(["text", "subject", "html"]))
def test_no_dunder_escape_ever_renders_it_is_refused_naming_field_and_line(template, field) -> None:
    source, line = template
    spec = TemplateSpec(step="due", channel="email", language="en", **{field: source})
    with pytest.raises(TemplateError) as refused:
        render(spec, CONTEXT)
    assert refused.value.field == field
    assert refused.value.line in (line, None), (str(refused.value), source)
    assert one_line(str(refused.value))


@MANY
@given(source=st.text(max_size=80) | st.sampled_from(NASTY))
def test_any_text_either_renders_or_is_refused_naming_the_field(source) -> None:
    spec = TemplateSpec(step="due", channel="sms", language="en", text=source)
    rendered, refused = attempt(lambda: render(spec, CONTEXT), TemplateError)
    if refused is None:
        assert rendered is not None and isinstance(rendered.text, str)
    else:
        assert refused.startswith("text") and one_line(refused), refused


@FEW
@given(
    source=st.one_of(
        escape_template().map(lambda t: (t[0], True)),
        st.text(max_size=60).map(lambda t: (t, False)),
    )
)
def test_the_console_saves_a_hostile_template_only_if_it_renders_else_422_naming_the_line(
    staff, console, caplog, source
) -> None:
    source, escapes = source
    before = count(console, Template)
    with no_tracebacks(caplog):
        answer = post(
            staff, "/admin/templates/due/sms/en", {"text": source, "base_version": before}
        )
    assert answer.status_code in (303, 409, 422), answer.status_code  # type: ignore[attr-defined]
    if answer.status_code == 303:  # type: ignore[attr-defined]
        assert count(console, Template) == before + 1
        assert not escapes  # a dunder reach never saves
    else:
        assert count(console, Template) == before
    if answer.status_code == 422:  # type: ignore[attr-defined]
        assert re.search(r"text(, line \d+)?</strong>: ", answer.text)  # type: ignore[attr-defined]


# One expression must not exhaust the dispatcher's memory or CPU: every one of these would build
# gigabytes (or a number of billions of digits) without the bounds in BoundedSandbox.
EXHAUSTING = [
    "{{ 'x' * 10**10 }}",
    "{{ 10**10 * 'x' }}",
    "{{ [0] * 10**9 }}",
    "{{ 2 ** (10**9) }}",
    "{{ 'x'.center(10**10) }}",
    "{{ 'x'.ljust(width=10**10) }}",
    "{{ 'x' | center(10**10) }}",
    "{{ 'x' | indent(10**9) }}",
    "{{ 'x' | wordwrap(width=10**9) }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '{0:>{1}}'.format(1, 999999999) }}",
    "{{ '%999999999s' | format(1) }}",
    "{{ '%*s' | format(999999999, 1) }}",
    "{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s }}",
]


@pytest.mark.parametrize("expression", EXHAUSTING)
def test_an_expression_that_would_exhaust_memory_is_refused_naming_field_and_line(
    expression: str,
) -> None:
    source = f"Hello {{{{ patient.given_name }}}}\n{expression}"
    spec = TemplateSpec(step="due", channel="sms", language="en", text=source)
    with pytest.raises(TemplateError) as refused:
        render(spec, CONTEXT)
    assert refused.value.field == "text"
    assert refused.value.line in (2, None), str(refused.value)
    assert one_line(str(refused.value))


def test_ordinary_arithmetic_and_formatting_still_render() -> None:
    source = (
        "{{ '-' * 20 }} {{ 2 ** 10 }} {{ 2.5 ** 2 }} {{ (-2) ** 3 }} {{ 6 * 7 }} "
        "{{ '{:>6}'.format('ab') }} {{ '%05.1f' | format(3.14159) }} {{ 'x' | center(5) }}|"
    )
    spec = TemplateSpec(step="due", channel="sms", language="en", text=source)
    assert render(spec, CONTEXT).text == (
        "-------------------- 1024 6.25 -8 42     ab 003.1   x  |"
    )


def test_a_nul_character_is_refused_naming_field_and_line() -> None:
    """PostgreSQL cannot store one: the console would answer 500 instead of 422."""
    spec = TemplateSpec(step="due", channel="sms", language="en", text="Hello\nthere\x00")
    with pytest.raises(TemplateError, match=r"^text, line 2: holds a NUL character$"):
        render(spec, CONTEXT)
