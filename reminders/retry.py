"""Retry policy: a pure function of the attempt number (and the provider's Retry-After)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped, never sooner than the provider asked."""

    base_seconds: float = 30.0
    max_seconds: float = 3600.0
    max_attempts: int = 12
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_seconds, self.base_seconds * 2 ** max(attempt - 1, 0))
        jittered = ceiling * (0.5 + self.rng.random() / 2)  # "equal jitter": never hot-loops
        return float(max(jittered, retry_after or 0.0))

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts
