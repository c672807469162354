"""``reminders demo``: a newcomer's first run seeds sample patients and prints reminders on the
console within a minute; Ctrl-C stops it cleanly, and a second run sends nothing twice."""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from pathlib import Path

from reminders.db import make_engine
from tests.conftest import CONFIG
from tests.test_service import Process, free_port, statuses

PRINTED = re.compile(r"^--- (sms|email|whatsapp) to \S+ \(reminder (\d+)\)$")


def demo(tmp_path: Path) -> Process:
    args = ["demo", "--database", "sqlite:///tmp.db", "--port", str(free_port())]
    return Process(args, {"REMINDERS_CONFIG_DIR": str(CONFIG)}, tmp_path)


def printed(output: list[str]) -> list[int]:
    return [int(m.group(2)) for line in output if (m := PRINTED.match(line))]


def test_the_demo_prints_reminders_within_a_minute_and_never_twice_across_restarts(
    tmp_path: Path,
) -> None:
    first = demo(tmp_path)
    try:
        first.wait_for("demo: 7 sample patients added to sqlite:///tmp.db", 60)
        first.wait_for("--- ", 60)
        code, seconds = first.signal(signal.SIGINT)
    finally:
        first.stop()
    sent_first = printed(first.drain())
    assert code == 0, first.output
    assert seconds < 10
    engine = make_engine(f"sqlite:///{tmp_path / 'tmp.db'}")
    try:
        after_first = statuses(engine)
        assert after_first["claimed"] == 0
        assert after_first["sent"] == len(sent_first) >= 1

        second = demo(tmp_path)
        try:
            second.wait_for("demo: using the sample patients already in sqlite:///tmp.db", 60)
            time.sleep(2.5)  # the first dispatch pass runs as the service starts
            code, _ = second.signal(signal.SIGINT)
        finally:
            second.stop()
        sent_second = printed(second.drain())
        assert code == 0, second.output
        assert not set(sent_first) & set(sent_second)
        assert Counter(sent_first + sent_second).most_common(1)[0][1] == 1
        assert statuses(engine)["sent"] == len(sent_first) + len(sent_second)
    finally:
        engine.dispose()
