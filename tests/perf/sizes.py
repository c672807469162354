"""How big each benchmark's data is: the issue's sizes by default, smaller with ``--quick``,
tiny for the smoke test (``--toy``) that only proves the harness still runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    name: str
    # the big clinic (figures 2, 3 and 7)
    patients: int  # every patient on file (the console searches them)
    treated: int  # patients with a treatment history
    treatments_per_patient: int  # treatments = treated * treatments_per_patient
    reminders: int  # rows in the reminders table when claiming (older history is added)
    due: int  # reminders due at the claiming instant
    claim_batch: int
    changed: int  # planning: changed (patient, protocol) groups
    small_treated: int  # planning: the small clinic, for "cost follows the changes"
    # import (figure 1)
    import_patients: int
    import_treatments: int
    # memory (figure 5)
    backlog_small: int
    backlog: int
    # latency (figure 6)
    latency_reminders: int
    latency_spread: float  # seconds over which they come due
    dispatch_interval: float
    # dispatch throughput (figure 4)
    dispatch_messages: int  # per process
    drain_seconds: float  # memory: time limit of each drain
    # console (figure 7)
    console_requests: int  # per page kind

    @property
    def treatments(self) -> int:
        return self.treated * self.treatments_per_patient

    @property
    def small_treatments(self) -> int:
        return self.small_treated * self.treatments_per_patient


FULL = Sizes(
    name="full",
    patients=1_000_000,
    treated=250_000,
    treatments_per_patient=4,
    reminders=5_000_000,
    due=5_000,
    claim_batch=500,
    changed=1_000,
    small_treated=25_000,
    import_patients=250_000,
    import_treatments=1_000_000,
    backlog_small=10_000,
    backlog=100_000,
    latency_reminders=1_000,
    latency_spread=20.0,
    dispatch_interval=1.0,
    dispatch_messages=2_000,
    drain_seconds=60.0,
    console_requests=200,
)

QUICK = Sizes(
    name="quick",
    patients=100_000,
    treated=25_000,
    treatments_per_patient=4,
    reminders=500_000,
    due=2_000,
    claim_batch=500,
    changed=1_000,
    small_treated=2_500,
    import_patients=25_000,
    import_treatments=100_000,
    backlog_small=2_000,
    backlog=20_000,
    latency_reminders=300,
    latency_spread=10.0,
    dispatch_interval=1.0,
    dispatch_messages=1_000,
    drain_seconds=30.0,
    console_requests=100,
)

TOY = Sizes(
    name="toy",
    patients=1_000,
    treated=200,
    treatments_per_patient=4,
    reminders=4_000,
    due=400,
    claim_batch=200,
    changed=20,
    small_treated=50,
    import_patients=100,
    import_treatments=400,
    backlog_small=40,
    backlog=120,
    latency_reminders=20,
    latency_spread=1.0,
    dispatch_interval=0.5,
    dispatch_messages=40,
    drain_seconds=30.0,
    console_requests=10,
)

BY_NAME = {s.name: s for s in (FULL, QUICK, TOY)}
