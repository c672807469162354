"""Templates: the Jinja2 sandbox, strict variables, HTML escaping, dates in the patient's
language, the language fallback chain, and the shipped defaults."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from reminders import template_store
from reminders.models import Template
from reminders.protocols import load_protocols
from reminders.settings import ConfigError, load_settings
from reminders.templating import (
    TemplateError,
    TemplateSpec,
    _formatted_date,
    language_chain,
    load_default_templates,
    render,
    render_string,
)
from tests.conftest import CONFIG

CONTEXT = {
    "language": "en",
    "patient": {"given_name": "Ayşe", "family_name": "Yılmaz"},
    "clinic": {"name": "Clinic & Co", "phone": "+90 212 000 00 00"},
    "window": {"open": dt.date(2026, 3, 30), "close": dt.date(2026, 5, 5)},
    "items": [1, 2],
}


@pytest.mark.parametrize(
    "source",
    [
        "{{ patient.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ clinic.items.__globals__ }}",
        "{{ self.__init__.__globals__ }}",
        "{{ items.append(3) }}",  # the immutable sandbox refuses changes too
        "{{ range.__self__.__import__('os').system('true') }}",
        "{{ ''.format.__self__.__class__ }}",
    ],
)
def test_the_sandbox_refuses_to_reach_python_internals(source: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render_string(source, CONTEXT, "text")
    assert caught.value.field == "text"


def test_an_undefined_variable_is_an_error_naming_the_field_and_line() -> None:
    with pytest.raises(TemplateError) as caught:
        render_string("Dear {{ patient.given_name }},\n{{ patient.nickname }}", CONTEXT, "text")
    assert (caught.value.field, caught.value.line) == ("text", 2)
    assert "nickname" in str(caught.value)


def test_a_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateError, match=r"subject, line 1"):
        render_string("{% if %}", CONTEXT, "subject")


def test_html_is_autoescaped_and_plain_text_is_not() -> None:
    context = {**CONTEXT, "patient": {"given_name": "<script>x</script>"}}
    spec = TemplateSpec(
        step="due",
        channel="email",
        language="en",
        text="Hi {{ patient.given_name }} from {{ clinic.name }}",
        html="<p>Hi {{ patient.given_name }} from {{ clinic.name }}</p>",
    )
    content = render(spec, context)
    assert content.html == "<p>Hi &lt;script&gt;x&lt;/script&gt; from Clinic &amp; Co</p>"
    assert content.text == "Hi <script>x</script> from Clinic & Co"


@pytest.mark.parametrize(
    ("language", "expected"),
    [("en", "March 30, 2026"), ("tr", "30 Mart 2026"), ("de", "30. März 2026")],
)
def test_dates_are_written_in_the_templates_language(language: str, expected: str) -> None:
    text = render_string("{{ window.open | date }}", {**CONTEXT, "language": language}, "text")
    assert text == expected


def test_a_date_formatted_again_keeps_its_language_and_format() -> None:
    """Formatted dates are remembered (a batch of reminders repeats a few): the language and
    the format are part of what is remembered, other values are formatted as before, and what
    cannot be formatted is still the template's error."""
    cases = [
        ("en", "long", "March 30, 2026"),
        ("tr", "long", "30 Mart 2026"),
        ("en", "short", "3/30/26"),
        ("en", "MMMM", "March"),
        ("de", "MMMM", "März"),
    ]
    hits = _formatted_date.cache_info().hits
    for _ in range(2):
        for language, form, expected in cases:
            source = f"{{{{ window.open | date('{form}') }}}}"
            text = render_string(source, {**CONTEXT, "language": language}, "text")
            assert text == expected
    assert _formatted_date.cache_info().hits >= hits + len(cases)  # the second round
    moment = dt.datetime(2026, 3, 30, 23, 30, tzinfo=dt.UTC)
    assert render_string("{{ at | date }}", {**CONTEXT, "at": moment}, "text") == "March 30, 2026"
    for _ in range(2):
        with pytest.raises(TemplateError, match="text"):
            render_string("{{ window.open | date }}", {**CONTEXT, "language": "xx"}, "text")


def test_whatsapp_variables_must_be_single_non_empty_lines() -> None:
    spec = TemplateSpec(
        step="due",
        channel="whatsapp",
        language="en",
        content_sid="HX" + "0" * 32,
        variables={"1": "{{ patient.given_name }}", "2": "{{ window.open | date('short') }}"},
    )
    assert render(spec, CONTEXT).content_variables == {"1": "Ayşe", "2": "3/30/26"}
    broken = TemplateSpec(**{**spec.__dict__, "variables": {"1": "a\nb"}})
    with pytest.raises(TemplateError, match=r"variables\.1"):
        render(broken, CONTEXT)
    unmapped = TemplateSpec(**{**spec.__dict__, "variables": None})
    with pytest.raises(TemplateError, match="variable mapping"):
        render(unmapped, CONTEXT)


@pytest.mark.parametrize(
    ("language", "default", "chain"),
    [
        ("pt_BR", "en", ["pt_BR", "pt", "en"]),
        ("tr", "en", ["tr", "en"]),
        ("en", "en", ["en"]),
        ("de", "pt_BR", ["de", "pt_BR", "pt"]),
    ],
)
def test_the_language_chain_goes_from_specific_to_the_clinic_default(language, default, chain):
    assert language_chain(language, default) == chain


def test_a_staff_version_wins_over_the_default_and_languages_fall_back(runtime) -> None:
    defaults = runtime.templates
    with runtime.sessions() as s, s.begin():
        for version, text in ((1, "v1"), (2, "v2")):
            s.add(
                Template(
                    step="due", channel="sms", language="pt", version=version, text=text, author="a"
                )
            )
    with runtime.sessions() as s:
        find = lambda lang: template_store.find(s, defaults, "due", "sms", lang, "en")  # noqa: E731
        assert find("pt_BR").text == "v2"  # newest staff version of the base language
        assert (find("tr").language, find("tr").version) == ("tr", 0)  # shipped default
        assert find("ja").language == "en"  # the clinic default
        assert template_store.find(s, defaults, "nope", "sms", "tr", "en") is None


PROTOCOLS = load_protocols(CONFIG)
DEFAULTS = load_default_templates(CONFIG)


@pytest.mark.parametrize("key", sorted(DEFAULTS), ids=lambda k: ".".join(k))
def test_every_shipped_template_renders_for_every_protocol(key: tuple[str, str, str]) -> None:
    settings = load_settings({}, config_dir=CONFIG, clinic_name="Clinic")
    spec = DEFAULTS[key]
    for protocol in PROTOCOLS.values():
        content = render(spec, template_store.sample_context(protocol, settings, spec.language))
        assert content.text or content.content_sid
        if spec.channel != "email":  # SMS and WhatsApp never name the condition
            assert protocol.indication not in content.text


def test_every_step_of_every_protocol_has_an_english_template_on_every_channel() -> None:
    steps = {s.name for p in PROTOCOLS.values() for s in p.steps}
    for step in steps:
        for channel in ("email", "sms", "whatsapp"):
            assert (step, channel, "en") in DEFAULTS, (step, channel)


def test_a_broken_template_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "en.yaml").write_text("due:\n  fax:\n    text: hi\n")
    with pytest.raises(ConfigError, match=r"en\.yaml: due\.fax"):
        load_default_templates(tmp_path)
