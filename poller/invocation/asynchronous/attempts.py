"""One attempt of an asynchronous event, and what follows it, written to the store: a retry at a
later time (function error, throttle), or the decision (Success, RetriesExhausted,
EventAgeExceeded) with the destinations it still has to reach.

What counts as a **throttle**: Lambda throttles an asynchronous event when the function has no
concurrency left (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-error-handling.html).
A function with ``reserved_concurrent_executions: 0`` throttles every event, without invoking it.
Otherwise the workers never start more attempts than the function's concurrency, and an attempt
that still finds every environment busy (the function's mappings use them too) waits in the pool,
as every invocation does there: that wait is the queue, not a throttle, and uses up no retries.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from poller.clock import Clock
from poller.config import Function
from poller.invocation.asynchronous.delivery import DEAD_LETTER, THROTTLE_ERROR, event_ids
from poller.invocation.asynchronous.queue import DELIVER, EventStore, LastAttempt, StoredEvent, Target
from poller.invocation.asynchronous.schedule import (
    EVENT_AGE_EXCEEDED,
    SUCCESS,
    GiveUp,
    RetryPolicy,
    after_function_error,
    after_throttle,
)
from poller.observability.async_spans import AsyncTelemetry
from poller.runtime.environments.api import Response
from poller.runtime.environments.environment import InvokeResult
from poller.runtime.function import InvocationReport, LambdaContext

log = logging.getLogger(__name__)

THROTTLE_MESSAGE = "Rate Exceeded: the function has no concurrency left (reserved_concurrent_executions is 0)"


class AsyncFunction(Protocol):
    """What the workers need of a function (a FunctionRuntime)."""

    name: str
    arn: str
    config: Function

    def new_context(self, request_id: str | None = None) -> LambdaContext: ...

    async def invoke_payload(
        self, payload: bytes, context: LambdaContext | None = None, *, report: InvocationReport | None = None
    ) -> InvokeResult: ...


@dataclass
class AsyncCounts:
    """One function's asynchronous events since start, read by the metrics at scrape time."""

    received: int = 0  # accepted by this process (AsyncEventsReceived)
    attempts: int = 0
    succeeded: int = 0
    retries: dict[str, int] = field(default_factory=dict)  # by reason: FunctionError, Throttled
    dropped: dict[str, int] = field(default_factory=dict)  # given up, by condition (AsyncEventsDropped)


def targets_of(config: Function, condition: str) -> list[Target]:
    """The destinations a decided event goes to: on_success, or on_failure and the dead-letter one."""
    destinations = config.event_invoke_config.destination_config
    if condition == SUCCESS:
        return [Target("on_success", destinations.on_success.destination)] if destinations.on_success else []
    targets = [Target("on_failure", destinations.on_failure.destination)] if destinations.on_failure else []
    if config.dead_letter_config is not None:
        targets.append(Target(DEAD_LETTER, config.dead_letter_config.destination))
    return targets


class Attempts:
    """Makes the attempts of events and writes down what each one came to. ``delivering`` is the
    workers' set of events being sent to destinations: a decided event is put there before its
    decision is written, so that the workers do not start sending it a second time.
    ``scheduled(due)`` hears of every retry written, so the workers wake for it."""

    def __init__(
        self,
        store: EventStore,
        telemetry: AsyncTelemetry,
        clock: Clock,
        delivering: set[str],
        scheduled: Callable[[float], None],
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.clock = clock
        self.delivering = delivering
        self.scheduled = scheduled
        self.counts: dict[str, AsyncCounts] = {}

    def counts_of(self, function: str) -> AsyncCounts:
        counts = self.counts.get(function)
        if counts is None:
            counts = self.counts[function] = AsyncCounts()
        return counts

    async def attempt(
        self, function: AsyncFunction, event: StoredEvent, invoked: Callable[[], None] = lambda: None
    ) -> StoredEvent | None:
        """Attempt the event and write down what follows; returns the event when it is decided
        and has destinations to reach. ``invoked()`` is called once the function is done with the
        event (its concurrency is free again), before what follows is written. Raises
        EventQueueError when the store cannot be written (the event is then attempted again later)."""
        policy = RetryPolicy.of(function.config.event_invoke_config)
        now = self.clock.now()
        if policy.expired(event.accepted_at, now):
            invoked()
            return await self._give_up(
                function, event, GiveUp(EVENT_AGE_EXCEEDED), event.attempts, event.throttles, event.last, now
            )
        counts = self.counts_of(event.function)
        attempt = event.attempts + event.throttles + 1
        with self.telemetry.attempt(
            event.function, event.request_id, event.trace_parent, attempt=attempt, age=now - event.accepted_at
        ) as report:
            if function.config.reserved_concurrent_executions == 0:
                report.throttled = True
                result = None
            else:
                counts.attempts += 1
                result = await function.invoke_payload(
                    event.payload, _context(function, event), report=report
                )
                report.error = result.error
        invoked()
        now = self.clock.now()
        if result is None:
            throttles = event.throttles + 1
            last = LastAttempt(event.last.response, THROTTLE_ERROR, THROTTLE_MESSAGE)
            decision = after_throttle(policy, throttles=throttles, accepted_at=event.accepted_at, now=now)
            attempts = event.attempts
        elif isinstance(result.answer, Response):
            counts.succeeded += 1
            last = LastAttempt(result.answer.payload)
            return await self._finish(
                function, event, SUCCESS, event.attempts + 1, event.throttles, last, now
            )
        else:
            error = result.answer
            throttles, attempts = event.throttles, event.attempts + 1
            last = LastAttempt(orjson.dumps(error.to_json()), error.error_type, error.message)
            decision = after_function_error(policy, attempts=attempts, accepted_at=event.accepted_at, now=now)
        if isinstance(decision, GiveUp):
            return await self._give_up(function, event, decision, attempts, throttles, last, now)
        await self.store.retry(
            event.request_id, due_at=decision.due, attempts=attempts, throttles=throttles, last=last
        )
        self.scheduled(decision.due)
        counts.retries[decision.reason] = counts.retries.get(decision.reason, 0) + 1
        # A throttled event retries every few minutes for hours: a line each time, but not a warning.
        log.log(
            logging.INFO if result is None else logging.WARNING,
            "async event %s of %s: %s (%s); retry in %.1f s",
            event.request_id,
            event.function,
            "throttled" if result is None else f"attempt {attempts} failed",
            last.error_type,
            decision.due - now,
            extra=event_ids(event),
        )
        return None

    async def _give_up(
        self,
        function: AsyncFunction,
        event: StoredEvent,
        decision: GiveUp,
        attempts: int,
        throttles: int,
        last: LastAttempt,
        now: float,
    ) -> StoredEvent | None:
        counts = self.counts_of(event.function)
        counts.dropped[decision.condition] = counts.dropped.get(decision.condition, 0) + 1
        log.error(
            "async event %s of %s: dropped after %d attempt(s), %s: %s",
            event.request_id,
            event.function,
            attempts,
            decision.condition,
            last.error_message or "the event was not attempted in time",
            extra=event_ids(event),
        )
        return await self._finish(function, event, decision.condition, attempts, throttles, last, now)

    async def _finish(
        self,
        function: AsyncFunction,
        event: StoredEvent,
        condition: str,
        attempts: int,
        throttles: int,
        last: LastAttempt,
        now: float,
    ) -> StoredEvent | None:
        targets = targets_of(function.config, condition)
        if targets:
            # Marked before the write, so that the dispatcher does not start the same delivery.
            self.delivering.add(event.request_id)
        try:
            await self.store.finish(
                event.request_id,
                condition=condition,
                now=now,
                attempts=attempts,
                throttles=throttles,
                last=last,
                targets=targets,
            )
        except BaseException:
            self.delivering.discard(event.request_id)
            raise
        if not targets:
            return None
        return dataclasses.replace(
            event,
            stage=DELIVER,
            attempts=attempts,
            throttles=throttles,
            last=last,
            condition=condition,
            finished_at=now,
            pending=tuple(targets),
            delivery_failures=0,
        )


def _context(function: AsyncFunction, event: StoredEvent) -> LambdaContext:
    # Every attempt of an event has the event's request id, as on Lambda.
    return function.new_context(event.request_id)
