"""Starting the benchmarks' child processes and reading their one-line JSON answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from tests.perf.databases import ROOT


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """``python -m module json-args``; stderr goes to a file in ``scratch``."""

    def __init__(self, module: str, args: dict[str, Any], scratch: Path, name: str) -> None:
        self.name = name
        self.stderr_path = scratch / f"{name}.stderr"
        with self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", module, json.dumps(args)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env=child_env(),
                text=True,
            )

    def read(self) -> dict[str, Any]:
        """The next JSON line it prints (lines that are not JSON are skipped)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                answer: dict[str, Any] = json.loads(line)
                return answer
        self.process.wait()
        raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def tail(self, lines: int = 20) -> str:
        text = self.stderr_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self.process.poll() is None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_together(args: Sequence[dict[str, Any]], scratch: Path, name: str) -> list[dict[str, Any]]:
    """Start a worker per ``args``, let them all set up, start them at once, collect results."""
    children = [Child("tests.perf.worker", a, scratch, f"{name}-{i}") for i, a in enumerate(args)]
    try:
        for child in children:
            child.read()  # {"ready": true}
        for child in children:
            child.send("go")
        return [child.read() for child in children]
    finally:
        for child in children:
            child.close()
