"""The Dockerfile, read with ``dockerfile-parse``, as the tests need it: its stages, and what the
final stage puts into the image (files, environment, entrypoint, health check).

With no Docker engine here, :func:`lay_out` copies the final stage's files under a folder that
stands for the image's ``/``, and :func:`in_root` moves the image's paths there, so the image's
exact entrypoint can run against a venv built from the wheel.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
INITS = ("tini", "dumb-init")
_APP_PATH = re.compile(r"(?<![\w.])(/app)(?=/|$)")


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    dest: str
    flags: dict[str, str]


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]

    def last(self, instruction: str) -> str | None:
        found = self.values(instruction)
        return found[-1] if found else None

    def copies(self) -> list[Copy]:
        return [_copy(value) for value in self.values("COPY")]


@dataclass
class Image:
    stages: list[Stage]
    env: dict[str, str]  # the final stage's, as the container sees it

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    @property
    def entrypoint(self) -> list[str]:
        raw = self.final.last("ENTRYPOINT")
        assert raw is not None, "the image has no ENTRYPOINT"
        return list(json.loads(raw))

    @property
    def healthcheck(self) -> tuple[str, list[str]]:
        """(the options, the command in exec form)."""
        raw = self.final.last("HEALTHCHECK") or ""
        options, _, command = raw.partition("CMD ")
        return options.strip(), list(json.loads(command))


def load(path: Path = ROOT / "Dockerfile") -> Image:
    parser = DockerfileParser(path=str(path))
    stages: list[Stage] = []
    for item in parser.structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            base, _, name = value.partition(" AS ")
            stages.append(Stage(name.strip() or None, base.strip()))
        elif instruction != "COMMENT" and stages:
            stages[-1].instructions.append((instruction, value))
    return Image(stages, dict(parser.envs))


def service_argv(image: Image, root: Path) -> list[str]:
    """The ENTRYPOINT, without its init (tini only forwards signals, which the test sends to
    the process itself), with the image's paths moved under ``root``."""
    argv = image.entrypoint
    if Path(argv[0]).name in INITS:
        argv = argv[argv.index("--") + 1 :]
    return [in_root(part, root) for part in argv]


def in_root(value: str, root: Path) -> str:
    """``/app/...`` in an image path or URL, moved under ``root``."""
    return _APP_PATH.sub(lambda m: f"{root}{m.group(1)}", value)


def lay_out(image: Image, context: Path, root: Path) -> None:
    """The files the final stage copies from the build context, under ``root``."""
    for copy in image.final.copies():
        assert "from" not in copy.flags, "the final stage copies files out of another stage"
        for source in copy.sources:
            target = Path(in_root(copy.dest, root))
            lay_out_file(context / source, target, copy.flags.get("chmod"))
    workdir = image.final.last("WORKDIR") or "/"
    Path(in_root(workdir, root)).mkdir(parents=True, exist_ok=True)


def lay_out_file(source: Path, target: Path, chmod: str | None = None) -> None:
    """``COPY source target``: a file, or a folder without Python caches."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copy2(source, target)
    if chmod:
        target.chmod(int(chmod, 8))


def _copy(value: str) -> Copy:
    words = shlex.split(value)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return Copy(paths[:-1], paths[-1], flags)
