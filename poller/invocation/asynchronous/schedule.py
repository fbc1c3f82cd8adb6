"""When an asynchronous event is attempted again, and when it is given up. Pure: times in, decisions out.

As Lambda handles errors of asynchronous invocations
(https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html):

- a **function error** (the handler raised, timed out, crashed, ran out of memory; its init failed)
  is retried ``maximum_retry_attempts`` times, the first retry ``retry_delay_in_seconds`` after the
  failure and each further one after twice the previous wait (AWS: about 1 minute, then 2);
  after the last one the event is given up with ``RetriesExhausted``;
- a **throttle** (the function has no concurrency for it) is not a failed attempt: it is retried
  with backoff from 1 s to 5 minutes (with jitter), for as long as the event is young enough;
- an event older than ``maximum_event_age_in_seconds`` is never attempted: it is given up with
  ``EventAgeExceeded`` when its age runs out, so a retry that would fall due later is not waited
  for (the event is given up at the moment it expires, with what its last attempt returned).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

from poller.config.invocation import EventInvokeConfig
from poller.engine.backoff import Backoff

RETRIES_EXHAUSTED = "RetriesExhausted"
EVENT_AGE_EXCEEDED = "EventAgeExceeded"
SUCCESS = "Success"
# Lambda retries throttles "with backoff from 1 second to 5 minutes".
THROTTLE_BACKOFF_FIRST, THROTTLE_BACKOFF_MAX = 1.0, 300.0
_RNG = random.Random()  # for the jitter of throttle retries; seeding one per event costs more than an attempt


@dataclass(frozen=True)
class RetryPolicy:
    """The retry settings of one function's asynchronous invocations."""

    maximum_retry_attempts: int = 2
    maximum_event_age: float = 21600.0
    retry_delay: float = 60.0
    throttle_backoff: Backoff = field(
        default_factory=lambda: Backoff(THROTTLE_BACKOFF_FIRST, THROTTLE_BACKOFF_MAX, rng=_RNG), compare=False
    )

    @classmethod
    @functools.lru_cache(maxsize=256)
    def of(cls, config: EventInvokeConfig) -> RetryPolicy:
        return cls(
            config.maximum_retry_attempts, config.maximum_event_age_in_seconds, config.retry_delay_in_seconds
        )

    def expires_at(self, accepted_at: float) -> float:
        return accepted_at + self.maximum_event_age

    def expired(self, accepted_at: float, now: float) -> bool:
        """Whether the event is too old to be attempted (its age has reached the maximum)."""
        return now >= self.expires_at(accepted_at)

    def function_error_delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt: the delay, doubling after each retry."""
        return Backoff(self.retry_delay, float("inf"), jitter=False, rng=_RNG).delay(attempts)


@dataclass(frozen=True)
class Retry:
    """Attempt the event again at ``due`` (epoch seconds); ``reason`` is FunctionError or Throttled."""

    due: float
    reason: str


@dataclass(frozen=True)
class GiveUp:
    """Stop attempting the event; ``condition`` is RetriesExhausted or EventAgeExceeded."""

    condition: str


Decision = Retry | GiveUp


def after_function_error(policy: RetryPolicy, *, attempts: int, accepted_at: float, now: float) -> Decision:
    """What follows a failed attempt; ``attempts`` counts the attempts made, this one included."""
    if attempts > policy.maximum_retry_attempts:
        return GiveUp(RETRIES_EXHAUSTED)
    return _retry(policy, now + policy.function_error_delay(attempts), "FunctionError", accepted_at, now)


def after_throttle(policy: RetryPolicy, *, throttles: int, accepted_at: float, now: float) -> Decision:
    """What follows a throttled attempt; ``throttles`` counts the throttles so far, this one included."""
    return _retry(policy, now + policy.throttle_backoff.delay(throttles), "Throttled", accepted_at, now)


def _retry(policy: RetryPolicy, due: float, reason: str, accepted_at: float, now: float) -> Decision:
    if policy.expired(accepted_at, now):
        return GiveUp(EVENT_AGE_EXCEEDED)
    # A retry past the event's expiry is not waited for: the event is given up when it expires.
    return Retry(min(due, policy.expires_at(accepted_at)), reason)
