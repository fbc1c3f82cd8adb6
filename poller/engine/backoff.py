"""One schedule for every wait after a failure: exponential backoff with "equal jitter".

The retry planner uses it for failed batches (1 s doubling to 60 s, SPEC section 6), and every loop
that reconnects, re-sends or re-reads uses it for its own failures, so that all of poller backs off
the same way. Pure: it counts failures and computes delays; the caller sleeps (``Clock.wait``).
Jitter keeps replicas and shards that failed together from retrying in step
(https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).

    backoff = Backoff(first=1.0, maximum=30.0)
    while not stopping.is_set():
        try:
            await connect()
        except SourceError:
            await clock.wait(backoff.next(), until=stopping)
        else:
            backoff.reset()
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from ``first`` up to ``maximum``; with ``jitter`` each is half fixed and
    half random, so it lies between half the nominal delay and the nominal delay."""

    first: float = 1.0
    maximum: float = 30.0
    jitter: bool = True
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)
    failures: int = 0  # consecutive failures so far; reset() after a success

    def delay(self, attempt: int) -> float:
        """The delay before attempt number ``attempt`` (1-based) after as many failures."""
        nominal = min(self.maximum, self.first * 2.0 ** max(0, attempt - 1))
        if not self.jitter:
            return nominal
        return nominal / 2 + self.rng.random() * nominal / 2

    def next(self) -> float:
        """Count one more failure and return how long to wait before trying again."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        """The operation worked: the next failure waits ``first`` again."""
        self.failures = 0
