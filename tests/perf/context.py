"""What every benchmark gets: the sizes, the report, a scratch folder, fresh databases, and
the big clinic (built once per backend, shared by figures 2, 3 and 7)."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.perf.clinic import Clinic, add_history, build_clinic
from tests.perf.databases import fresh_database, runtime_for
from tests.perf.report import Report
from tests.perf.sizes import Sizes


@dataclass
class Context:
    sizes: Sizes
    report: Report
    scratch: Path
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _clinics: dict[str, Clinic] = field(default_factory=dict)

    def database(self, backend: str, prefix: str) -> contextlib.AbstractContextManager[str]:
        return fresh_database(backend, self.scratch, prefix)

    def clinic(self, backend: str, *, history: bool = False) -> Clinic:
        """The big clinic on ``backend``: steady state, or grown to the claim's size."""
        clinic = self._clinics.get(backend)
        if clinic is None:
            clinic = self._build(backend)
        if history and clinic.generations == clinic.per_patient:
            self._grow(clinic)
        return clinic

    def drop_clinic(self, backend: str) -> None:
        self._clinics.pop(backend, None)
        self.stack.close()
        self.stack = contextlib.ExitStack()

    def _build(self, backend: str) -> Clinic:
        s = self.sizes
        url = self.stack.enter_context(self.database(backend, "clinic"))
        rt = runtime_for(url)
        started = time.monotonic()
        clinic = build_clinic(
            url,
            patients=s.patients,
            treated=s.treated,
            per_patient=s.treatments_per_patient,
            now=dt.datetime.now(dt.UTC).replace(microsecond=0),
            protocols=rt.protocols,
            timing=rt.timing,
        )
        rt.close()
        self.report.note(
            f"built the clinic on {backend}: {s.patients:,} patients, {s.treated:,} in "
            f"treatment, {clinic.base_treatments:,} treatments, "
            f"in {time.monotonic() - started:.0f} s"
        )
        self._clinics[backend] = clinic
        return clinic

    def _grow(self, clinic: Clinic) -> None:
        rt = runtime_for(clinic.url)
        started = time.monotonic()
        added = add_history(clinic, self.sizes.reminders, rt.protocols, rt.timing)
        rt.close()
        self.report.note(
            f"added {added:,} older treatments (history) in {time.monotonic() - started:.0f} s"
        )

    def close(self) -> None:
        self.stack.close()
