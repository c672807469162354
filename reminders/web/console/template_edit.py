"""Checking a staff template before it is saved, and rendering its live preview.

A draft is refused when any part does not parse, names a variable the message context does not
have (even in a branch the sample patient would not take), touches a private attribute, or does
not render for the sample patient of every protocol that has its step. Each refusal is a
:class:`~reminders.templating.TemplateError` with the field, the line and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from starlette.datastructures import FormData

from reminders.protocols import Protocol
from reminders.settings import Settings
from reminders.template_store import sample_context
from reminders.templating import TEXT_FIELDS, Rendered, TemplateError, TemplateSpec, render
from reminders.web.console.sms import analyse

CHANNEL_FIELDS = {
    "email": ("subject", "text", "html"),
    "sms": ("text",),
    "whatsapp": ("content_sid", "text"),
}
REQUIRED = {"email": ("subject", "text"), "sms": ("text",), "whatsapp": ()}
CONTENT_SID = re.compile(r"^HX[0-9a-fA-F]{32}$")
_parser = ImmutableSandboxedEnvironment()
# Only parsed and compiled here, never rendered: the filters just have to exist by name.
_parser.filters["date"] = str


@dataclass
class Draft:
    """What the editor form holds."""

    subject: str = ""
    text: str = ""
    html: str = ""
    content_sid: str = ""
    variables: list[str] = field(default_factory=list)

    @classmethod
    def from_form(cls, form: FormData) -> Draft:
        def value(name: str) -> str:
            return str(form.get(name) or "").replace("\r\n", "\n").strip()

        variables = [str(v).strip() for v in form.getlist("variable")]
        while variables and not variables[-1]:
            variables.pop()
        return cls(value("subject"), value("text"), value("html"), value("content_sid"), variables)

    @classmethod
    def from_spec(cls, spec: TemplateSpec) -> Draft:
        mapping = spec.variables or {}
        variables = [mapping[k] for k in sorted(mapping, key=_number)]
        return cls(
            spec.subject or "", spec.text, spec.html or "", spec.content_sid or "", variables
        )

    def spec(self, step: str, channel: str, language: str) -> TemplateSpec:
        keep = CHANNEL_FIELDS[channel]
        return TemplateSpec(
            step=step,
            channel=channel,
            language=language,
            text=self.text,
            subject=(self.subject or None) if "subject" in keep else None,
            html=(self.html or None) if "html" in keep else None,
            content_sid=(self.content_sid or None) if channel == "whatsapp" else None,
            variables=(
                {str(i): v for i, v in enumerate(self.variables, 1)}
                if channel == "whatsapp"
                else None
            ),
        )


def _number(key: str) -> int:
    return int(key) if key.isdigit() else 10_000


def shape(context: Mapping[str, Any]) -> dict[str, set[str] | None]:
    """The variables a template may use: top-level names, and the keys of the mappings."""
    return {k: set(v) if isinstance(v, Mapping) else None for k, v in context.items()}


def _first_line(ast: nodes.Template, name: str) -> int | None:
    for node in ast.find_all(nodes.Name):
        if node.name == name:
            return node.lineno
    return None


def _attribute_errors(
    ast: nodes.Template, fieldname: str, allowed: Mapping[str, set[str] | None]
) -> Iterable[TemplateError]:
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        key = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if not isinstance(key, str):
            continue
        if key.startswith("_"):
            yield TemplateError(fieldname, f"not allowed: private attribute {key!r}", node.lineno)
            continue
        root = node.node.name if isinstance(node.node, nodes.Name) else None
        keys = allowed.get(root) if root else None
        if keys is not None and key not in keys:
            known = ", ".join(f"{root}.{k}" for k in sorted(keys))
            reason = f"unknown variable '{root}.{key}' (known: {known})"
            yield TemplateError(fieldname, reason, node.lineno)


def check_source(
    source: str, fieldname: str, allowed: Mapping[str, set[str] | None]
) -> TemplateError | None:
    """The first static problem of one part: syntax, unknown variable, private attribute."""
    try:
        ast = _parser.parse(source)
        undeclared = meta.find_undeclared_variables(ast)  # compiles: unknown filters fail here
    except TemplateSyntaxError as exc:
        return TemplateError(fieldname, exc.message or "syntax error", exc.lineno)
    for name in sorted(undeclared - set(allowed)):
        known = ", ".join(sorted(allowed))
        return TemplateError(
            fieldname, f"unknown variable '{name}' (known: {known})", _first_line(ast, name)
        )
    return next(iter(_attribute_errors(ast, fieldname, allowed)), None)


def _shape_errors(spec: TemplateSpec) -> list[TemplateError]:
    errors = [
        TemplateError(f, "must not be empty")
        for f in REQUIRED[spec.channel]
        if not getattr(spec, f)
    ]
    if spec.channel == "whatsapp":
        if spec.content_sid and not CONTENT_SID.match(spec.content_sid):
            errors.append(TemplateError("content_sid", "must be HX followed by 32 hex digits"))
        for key, source in (spec.variables or {}).items():
            if not source:
                errors.append(TemplateError(f"variables.{key}", "must not be empty"))
    return errors


def sources(spec: TemplateSpec) -> list[tuple[str, str]]:
    parts = [(f, getattr(spec, f)) for f in TEXT_FIELDS if getattr(spec, f)]
    return parts + [(f"variables.{k}", v) for k, v in (spec.variables or {}).items()]


def check(
    spec: TemplateSpec, protocols: Mapping[str, Protocol], settings: Settings
) -> list[TemplateError]:
    """Every reason not to save ``spec`` (empty when it may be saved)."""
    errors = _shape_errors(spec)
    contexts = sample_contexts(spec, protocols, settings)
    allowed = shape(contexts[0])
    for fieldname, source in sources(spec):
        problem = check_source(source, fieldname, allowed)
        if problem is not None:
            errors.append(problem)
    if errors:
        return errors
    for context in contexts:
        try:
            render(spec, context)
        except TemplateError as exc:
            return [exc]
    return []


def sample_contexts(
    spec: TemplateSpec, protocols: Mapping[str, Protocol], settings: Settings
) -> list[dict[str, Any]]:
    """The sample patient under each protocol with this step (or the first protocol)."""
    using = [p for p in protocols.values() if spec.step in {s.name for s in p.steps}]
    chosen = using or list(protocols.values())[:1]
    return [{**sample_context(p, settings, spec.language), "step": spec.step} for p in chosen]


def preview(spec: TemplateSpec, context: Mapping[str, Any]) -> dict[str, Any]:
    """What the editor shows: the rendered parts, SMS counts, or the error with its line
    (the same static checks as saving, then the render)."""
    allowed = shape(context)
    try:
        for fieldname, source in sources(spec):
            problem = check_source(source, fieldname, allowed)
            if problem is not None:
                raise problem
        rendered = render(spec, {**context, "language": spec.language})
    except TemplateError as exc:
        return {"ok": False, "error": {"field": exc.field, "line": exc.line, "reason": exc.reason}}
    return {"ok": True, **_parts(spec.channel, rendered)}


def _parts(channel: str, rendered: Rendered) -> dict[str, Any]:
    parts: dict[str, Any] = {"text": rendered.text}
    if channel == "email":
        parts.update(subject=rendered.subject or "", html=rendered.html or "")
    if channel == "sms":
        info = analyse(rendered.text)
        parts["sms"] = {**asdict(info), "forcing_ucs2": list(info.forcing_ucs2)}
    if channel == "whatsapp":
        parts.update(content_sid=rendered.content_sid or "", variables=rendered.content_variables)
    return parts
