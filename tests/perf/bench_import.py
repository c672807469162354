"""Figure 1: ``reminders import`` rows per second, patients first, then their treatments.

The CSV files look like a clinic's export: patients with national or E.164 numbers, consents,
languages; each patient's treatments 91 days apart, the latest within the last 91 days (so the
import plans their current cycles), the file in order of administration. Each import runs as
the real command in its own process. A run is one transaction, so one stopped at the time
limit (1.2 times what the target allows) leaves nothing behind: its rate is then below
rows / limit, a bound that already misses the target; the note shows how far the command's own
progress bar got (shown because stderr is a pseudo-terminal).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import pty
import re
import resource
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from reminders.records import PATIENT_FIELDS, TREATMENT_FIELDS
from tests.perf import sqlgen
from tests.perf.children import child_env
from tests.perf.clinic import consents, name_rows
from tests.perf.context import Context
from tests.perf.databases import CONFIG, ROOT, bulk_load, reset_sequences
from tests.perf.names import FAMILY, GIVEN
from tests.perf.worker import peak_rss_kb

TARGET_RATE = 20_000.0
PROTOCOLS = ("chronic_migraine", "cervical_dystonia", "upper_limb_spasticity", "myofascial_pain")
_PERCENT = re.compile(rb"(\d+)%")
PATIENT_HEADER = list(PATIENT_FIELDS)
TREATMENT_HEADER = list(TREATMENT_FIELDS)


@dataclass(frozen=True)
class Run:
    rows: int
    seconds: float
    progress: int  # the command's progress bar (checking, then writing) when it ended, in %
    finished: bool
    peak_mb: float
    output: str

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def run(ctx: Context, backend: str) -> None:
    s = ctx.sizes
    patients = write_patients(ctx.scratch / "patients.csv", s.import_patients)
    treatments = write_treatments(
        ctx.scratch / "treatments.csv", s.import_patients, s.import_treatments
    )
    limit = time_limit(ctx)
    with ctx.database(backend, "import") as url:
        first = import_file(url, "patients", patients, s.import_patients, limit)
        _note(ctx, "patients", first)
        if not first.finished:  # the treatments need their patients: write them directly
            load_patients(url, s.import_patients)
            ctx.report.note("patients written directly, to import the treatments")
        second = import_file(url, "treatments", treatments, s.import_treatments, limit)
        _note(ctx, "treatments", second)
    for kind, result in (("patients", first), ("treatments", second)):
        if result.finished:
            measured = f"{result.rate:,.0f} rows/s ({result.rows:,} rows in {result.seconds:.1f} s)"
        else:  # one transaction: nothing is stored, and the whole file needs longer than this
            measured = (
                f"< {result.rate:,.0f} rows/s (not done in {result.seconds:.0f} s; its progress"
                f" bar, checking then writing, at {result.progress}%)"
            )
        ctx.report.figure(
            1,
            f"import {kind} ({result.rows:,} rows)",
            measured + f", peak RSS {result.peak_mb:,.0f} MB",
            f">= {TARGET_RATE:,.0f} rows/s" if kind == "treatments" else "(no target)",
            result.finished and result.rate >= TARGET_RATE if kind == "treatments" else None,
            backend,
        )


def time_limit(ctx: Context) -> float:
    """Long enough to show the target is met (with a margin), short enough for the run."""
    return max(45.0, 1.2 * ctx.sizes.import_treatments / TARGET_RATE)


def _note(ctx: Context, kind: str, result: Run) -> None:
    tail = result.output.strip().splitlines()[-1:] if result.output.strip() else []
    ctx.report.note(f"reminders import {kind}: {' '.join(tail)[-200:]}")


def load_patients(url: str, count: int) -> None:
    """The patients of :func:`write_patients`, as the import would store them."""
    now = dt.datetime.now(dt.UTC)
    with bulk_load(url, ["patients", "consents"]) as conn:
        prefix, source = sqlgen.numbers(conn, count)
        pad8, pad7 = sqlgen.pad(conn, "g.i", 8), sqlgen.pad(conn, "g.i", 7)
        sqlgen.fill(conn, sqlgen.NAMES, name_rows())
        ng, nf = len(GIVEN), len(FAMILY)
        sqlgen.run(
            conn,
            "INSERT INTO patients (id, external_id, given_name, family_name, email, phone,"
            " language, timezone, channels, travel_lead_days, active, created_at, updated_at) "
            f"{prefix}SELECT g.i, 'IP' || {pad8}, gn.name, fn.name,"
            f" 'ip' || {pad8} || '@example.com', '+90532' || {pad7},"
            " CASE WHEN g.i % 4 = 0 THEN 'tr' ELSE 'en' END,"
            " CASE WHEN g.i % 5 = 0 THEN 'Europe/Berlin' ELSE 'Europe/Istanbul' END, 'sms|email',"
            f" CASE WHEN g.i % 10 = 0 THEN 14 ELSE 0 END, :yes, :now, :now FROM {source} "
            f"JOIN perf_names gn ON gn.kind = 'given' AND gn.idx = g.i % {ng} "
            f"JOIN perf_names fn ON fn.kind = 'family' AND fn.idx = (g.i / {ng}) % {nf}",
            yes=True,
            now=now,
        )
        consents(conn, count, now)
        reset_sequences(conn, ["patients"])
        sqlgen.drop_lookups(conn)


def write_patients(path: Path, count: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(PATIENT_HEADER)
        for i in range(1, count + 1):
            national = i % 3 == 0  # clinics type numbers as they are spoken
            number = (
                f"0532 {i // 10_000 % 1000:03d} {i % 10_000:04d}" if national else f"+90532{i:07d}"
            )
            out.writerow(
                [
                    f"IP{i:08d}", GIVEN[i % len(GIVEN)], FAMILY[i // len(GIVEN) % len(FAMILY)],
                    f"ip{i:08d}@example.com", number, "", "tr" if i % 4 == 0 else "en",
                    "" if i % 5 else "Europe/Berlin", "sms|email", "yes", "yes", "",
                    14 if i % 10 == 0 else 0,
                ]
            )  # fmt: skip
    return path


def write_treatments(path: Path, patients: int, count: int) -> Path:
    """``count`` treatments of ``patients`` patients, in order of administration."""
    today = dt.date.today()
    per = max(1, count // patients)
    rows = []
    for n in range(count):
        p, generation = n % patients + 1, per - 1 - n // patients
        offset = (p * 37) % 91 + 91 * generation
        rows.append((today - dt.timedelta(days=offset), p))
    rows.sort()
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(TREATMENT_HEADER)
        for n, (day, p) in enumerate(rows, start=1):
            out.writerow(
                [f"IT{n:09d}", f"IP{p:08d}", PROTOCOLS[p % len(PROTOCOLS)], day.isoformat(),
                 "onabotulinumtoxinA", "155", "Istanbul"]
            )  # fmt: skip
    return path


def import_file(url: str, kind: str, path: Path, rows: int, limit: float) -> Run:
    """``reminders import KIND FILE`` with stderr on a pseudo-terminal; stopped at ``limit``."""
    env = child_env() | {
        "REMINDERS_DATABASE_URL": url,
        "REMINDERS_CONFIG_DIR": str(CONFIG),
        "COLUMNS": "100",
    }
    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "reminders", "import", kind, str(path)]
    started = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL
    )
    os.close(follower)
    output, ended, peak_kb = _follow(leader, proc.pid, started + limit)
    seconds = time.monotonic() - started
    if ended is None:
        proc.terminate()
        ended = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(ended[1])  # reaped here, not by Popen
    os.close(leader)
    finished = seconds < limit
    text = output.decode(errors="replace")
    if finished and proc.returncode != 0:
        raise RuntimeError(f"reminders import {kind} failed ({proc.returncode}):\n{text[-2000:]}")
    percents = _PERCENT.findall(output)
    progress = 100 if finished else int(percents[-1]) if percents else 0
    return Run(rows, seconds, progress, finished, peak_kb / 1024, _last_line(text))


Ended = tuple[int, int, "resource.struct_rusage"]


def _follow(fd: int, pid: int, deadline: float) -> tuple[bytes, Ended | None, int]:
    """Everything written to the terminal until the process ends (with its exit status and
    resource usage) or the deadline passes (None), and its peak RSS in kB as last seen."""
    chunks: list[bytes] = []
    peak = 0
    while time.monotonic() < deadline:
        peak = max(peak, peak_rss_kb(pid))
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            with contextlib.suppress(OSError):  # the process closed the terminal
                chunks.append(os.read(fd, 65536))
        ended = os.wait4(pid, os.WNOHANG)
        if ended[0] == pid:
            return b"".join(chunks), ended, peak
    return b"".join(chunks), None, peak


def _last_line(text: str) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    return "\n".join(lines[-2:])
