"""Benchmarks of issue 9 with their targets: ``python -m tests.perf`` (see ``__main__``)."""
