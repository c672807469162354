"""``python -m tests.perf``: the benchmarks of issue 9, each with its target.

    python -m tests.perf                 # the issue's sizes, PostgreSQL and SQLite (< 15 min)
    python -m tests.perf --quick         # a tenth of the sizes, a couple of minutes
    python -m tests.perf --only 3 --only 2 --backends postgresql

Every benchmark builds its own synthetic clinic in a fresh database (created and dropped here)
and prints ``figure | measured | target | PASS/FAIL``; the summary repeats them in order.
PostgreSQL databases are created next to ``REMINDERS_PERF_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from reminders.logs import configure as configure_logging
from tests.perf import (
    bench_claim,
    bench_console,
    bench_dispatch,
    bench_import,
    bench_latency,
    bench_memory,
    bench_planning,
)
from tests.perf.context import Context
from tests.perf.databases import BACKENDS, postgres_base_url
from tests.perf.report import Report, machine_speed
from tests.perf.sizes import BY_NAME, FULL, QUICK, TOY

Bench = Callable[[Context, str], None]
BENCHMARKS: dict[int, tuple[str, Bench, tuple[str, ...]]] = {
    1: ("import", bench_import.run, ("postgresql",)),
    2: ("planning", bench_planning.run, BACKENDS),
    3: ("claim", bench_claim.run, BACKENDS),
    4: ("dispatch throughput", bench_dispatch.run, ("postgresql",)),
    5: ("memory", bench_memory.run, ("postgresql",)),
    6: ("latency at rest", bench_latency.run, BACKENDS),
    7: ("console", bench_console.run, ("postgresql",)),
}
# The big clinic is built once per backend: planning needs it at steady state, claiming grows
# its history, the console reads it; then it is dropped before the other benchmarks.
ORDER = (2, 3, 7, 5, 6, 4, 1)
BIG_CLINIC = {2, 3, 7}


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.perf", description=__doc__.split("\n")[0]
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_const", const=QUICK, dest="sizes", help="smaller sizes"
    )
    size.add_argument(
        "--toy", action="store_const", const=TOY, dest="sizes", help="tiny sizes (smoke test)"
    )
    size.add_argument("--sizes", choices=sorted(BY_NAME), type=lambda n: BY_NAME[n], dest="sizes")
    parser.add_argument(
        "--only",
        type=int,
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this figure (repeatable)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated: postgresql, sqlite (default both, where each applies)",
    )
    parser.add_argument(
        "--everywhere",
        action="store_true",
        help="run every figure on every backend given (not only where it applies)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.set_defaults(sizes=FULL)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("no_proxy", "127.0.0.1,localhost")
    configure_logging("ERROR", "console")  # the service loop of figure 6 runs in here
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    wanted = [n for n in ORDER if not args.only or n in args.only]
    report = Report()
    report.section(f"benchmarks, {args.sizes.name} sizes, on {', '.join(backends)}")
    with tempfile.TemporaryDirectory(prefix="reminders-perf-") as scratch:
        report.note(machine_speed(postgres_base_url() if "postgresql" in backends else None))
        ctx = Context(args.sizes, report, Path(scratch))
        try:
            for backend in backends:
                _run_backend(ctx, backend, wanted, everywhere=args.everywhere)
        finally:
            ctx.close()
    failed = report.summary()
    return 1 if failed and args.strict else 0


def _run_backend(ctx: Context, backend: str, wanted: list[int], *, everywhere: bool) -> None:
    for number in wanted:
        name, bench, applies = BENCHMARKS[number]
        if backend not in applies and not everywhere:
            continue
        if number not in BIG_CLINIC:
            ctx.drop_clinic(backend)
        ctx.report.section(f"{number} {name} on {backend}")
        bench(ctx, backend)
    ctx.drop_clinic(backend)


if __name__ == "__main__":
    sys.exit(main())
