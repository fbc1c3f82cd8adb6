"""Asynchronous invocation (SPEC section 13): events accepted into a durable queue, attempted by
workers within each function's concurrency, retried as Lambda retries them, and sent on to the
function's destinations (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async.html).

:meth:`AsyncInvocations.accept` is the ``EventQueue`` behind the Invoke API's ``Event`` type: it
returns once the event is committed to the store. :meth:`AsyncInvocations.run` works the store:
the store is the truth, so events that another process added (``poller invoke --async``) are
found by looking at it every :data:`POLL_INTERVAL` seconds; events accepted here wake the workers
at once. Each step of an event is a write to its row (see :mod:`.async_store`): an attempt that
a crash interrupted is made again after the restart, and retry waits are rows with a later
``due_at``, not tasks, so a backlog costs no memory beyond the attempts running.

**Concurrency**: at most ``reserved_concurrent_executions`` attempts of a function at once (the
pool's limit, which the function's mappings share), or :data:`UNRESERVED_CONCURRENCY` for a
function without a reservation. **Throttles**: Lambda throttles an asynchronous event when the
function has no concurrency left and retries it with backoff until the event is too old. Here a
function with reserved concurrency 0 throttles every event; otherwise an attempt that finds
every environment busy (the function's mappings took them) waits for one, as the pool makes
every invocation wait: that wait is the queue, not a throttle, so it uses up no retries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from poller.clock import Clock
from poller.config import Function
from poller.connections.aws import ACCOUNT_ID, default_region
from poller.destinations import Destination
from poller.engine.backoff import Backoff
from poller.errors import PollerError
from poller.invocation.async_store import (
    DELIVER,
    EventQueueError,
    EventStore,
    FunctionBacklog,
    LastAttempt,
    QueueBusy,
    StoredEvent,
    Target,
)
from poller.invocation.delivery import DEAD_LETTER, THROTTLE_ERROR, Deliveries, event_ids
from poller.invocation.schedule import (
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

MAX_PAYLOAD = 1_048_576  # bytes: Lambda's limit for an asynchronous invocation's payload
UNRESERVED_CONCURRENCY = 10  # attempts at once of a function without reserved concurrency
DELIVERY_CONCURRENCY = 16  # events sent to destinations at once
POLL_INTERVAL = 0.5  # seconds between looks at the store for events added by other processes
BACKLOG_REFRESH = 1.0  # seconds between counts of the events in the store (for the metrics)
STORE_RETRY_FIRST, STORE_RETRY_MAX = 0.5, 10.0
THROTTLE_MESSAGE = "Rate Exceeded: the function has no concurrency left (reserved_concurrent_executions is 0)"


class PayloadTooLarge(PollerError):
    """An asynchronous invocation's payload is over Lambda's 1 MB limit."""


class AsyncFunction(Protocol):
    """What the invoker needs of a function (a FunctionRuntime)."""

    name: str
    arn: str
    config: Function

    def new_context(self) -> LambdaContext: ...

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


class AsyncInvocations:
    """The queue of asynchronous events of every function, and its workers. :meth:`open` before
    :meth:`accept`; :meth:`run` works the queue until :meth:`stop`, then drains; :meth:`close`."""

    def __init__(
        self,
        store: EventStore,
        *,
        functions: Mapping[str, AsyncFunction],
        destination_of: Callable[[str], Destination | None],
        telemetry: AsyncTelemetry,
        clock: Clock | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        """``functions`` and ``destination_of`` are read at every step, so a reload's new
        function (or destination) takes the events that wait."""
        self.store = store
        self.functions = functions
        self.clock = clock or Clock()
        self.telemetry = telemetry
        self.drain_timeout = drain_timeout
        self.counts: dict[str, AsyncCounts] = {}
        self.backlog: dict[str, FunctionBacklog] = {}
        self.deliveries = Deliveries(store, destination_of, self._arn_of, self.clock, telemetry)
        self._opened = False
        self._opening = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._attempting: dict[str, set[str]] = {}  # function -> request ids attempted now
        self._delivering: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog_at = float("-inf")
        self.consuming = False  # this process holds the queue (and works it)

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store, creating it (raises EventQueueError when it cannot be). Done by the
        first :meth:`accept`, or by :meth:`run` once another process created the store: a poller
        that is never asked for an asynchronous invocation creates no file."""
        async with self._opening:
            if not self._opened:
                await self.store.open()
                self._opened = True

    async def close(self) -> None:
        await self.store.close()
        self._opened = False

    def stop(self) -> None:
        """Stop starting attempts; :meth:`run` drains what runs and returns."""
        self._stopping.set()
        self._wake.set()

    def attempting(self, function: str) -> int:
        return len(self._attempting.get(function, ()))

    # --- accepting -------------------------------------------------------------------------------

    async def accept(
        self, function: AsyncFunction, payload: bytes, *, request_id: str, trace_parent: str | None
    ) -> None:
        """Store an event for ``function``; returns once it is committed to disk. Raises
        PayloadTooLarge over 1 MB, EventQueueError when the store cannot be written."""
        await self.open()
        await enqueue(
            self.store, self.telemetry, function.name, payload, request_id, trace_parent, self.clock.now()
        )
        self._counts(function.name).received += 1
        self._wake.set()

    # --- the workers -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Work the queue until :meth:`stop`: wait to be the process that works it, then attempt
        and deliver events as they fall due. At stop, what runs has ``drain_timeout`` seconds to
        finish; what does not is cancelled and stays in the store."""
        if not await self._become_consumer():
            return
        try:
            async with asyncio.TaskGroup() as group:
                await self._dispatch(group)
                if self._tasks:
                    _, late = await asyncio.wait(self._tasks, timeout=self.drain_timeout)
                    for task in late:
                        task.cancel()
                    if late:
                        log.warning(
                            "async invocations: %d attempt(s) cut short by the drain; they stay queued",
                            len(late),
                        )
        finally:
            self.consuming = False
            self.store.release_consumer()

    async def _become_consumer(self) -> bool:
        backoff = Backoff(STORE_RETRY_FIRST, POLL_INTERVAL * 20)
        told = False
        while not self._stopping.is_set():
            try:
                if not self._opened and not self.store.exists():
                    await self.clock.wait(POLL_INTERVAL, until=self._wake)  # accept opens it
                    self._wake.clear()
                    continue
                await self.open()
                self.store.acquire_consumer()
            except QueueBusy as exc:
                if not told:
                    log.warning("%s", exc)
                    told = True
                await self.clock.wait(backoff.next(), until=self._stopping)
                continue
            except EventQueueError as exc:
                log.error("%s", exc)
                await self.clock.wait(backoff.next(), until=self._stopping)
                continue
            self.consuming = True
            log.info("async invocations: working the queue %s", self.store.where)
            return True
        return False

    async def _dispatch(self, group: asyncio.TaskGroup) -> None:
        backoff = Backoff(STORE_RETRY_FIRST, STORE_RETRY_MAX)
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wait = await self._dispatch_once(group)
            except EventQueueError as exc:
                wait = backoff.next()
                log.error("async invocations: %s; looking again in %.1f s", exc, wait)
            else:
                backoff.reset()
            await self.clock.wait(wait, until=self._wake)

    async def _dispatch_once(self, group: asyncio.TaskGroup) -> float:
        """Start what is due; return how long to wait before looking again."""
        now = self.clock.now()
        for name, function in list(self.functions.items()):
            attempting = self._attempting.setdefault(name, set())
            free = concurrency_of(function.config) - len(attempting)
            for event in await self.store.due_invocations(name, now, free, skip=attempting):
                if self._stopping.is_set():
                    return 0.0
                attempting.add(event.request_id)
                self._spawn(group, self._attempt(function, event))
        free = DELIVERY_CONCURRENCY - len(self._delivering)
        for event in await self.store.due_deliveries(now, free, skip=self._delivering):
            self._delivering.add(event.request_id)
            self._spawn(group, self._deliver(event))
        if time.monotonic() - self._backlog_at >= BACKLOG_REFRESH:
            self.backlog = await self.store.backlog()
            self._backlog_at = time.monotonic()
        next_due = await self.store.next_due(now)
        return POLL_INTERVAL if next_due is None else max(0.0, min(POLL_INTERVAL, next_due - now))

    def _spawn(self, group: asyncio.TaskGroup, work: Coroutine[Any, Any, None]) -> None:
        task = group.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- one attempt -----------------------------------------------------------------------------

    async def _attempt(self, function: AsyncFunction, event: StoredEvent) -> None:
        try:
            decided = await self._attempt_once(function, event)
        except EventQueueError as exc:
            decided = None
            log.error(
                "async event %s of %s: %s; it stays queued and is attempted again",
                event.request_id,
                event.function,
                exc,
                extra=event_ids(event),
            )
        finally:
            self._attempting.get(event.function, set()).discard(event.request_id)
            self._wake.set()
        if decided is not None:
            await self._deliver(decided)

    async def _attempt_once(self, function: AsyncFunction, event: StoredEvent) -> StoredEvent | None:
        """Attempt the event and write down what follows; returns the event when it is decided
        and has destinations to reach."""
        policy = RetryPolicy.of(function.config.event_invoke_config)
        now = self.clock.now()
        if policy.expired(event.accepted_at, now):
            return await self._give_up(
                function, event, GiveUp(EVENT_AGE_EXCEEDED), event.attempts, event.throttles, event.last, now
            )
        counts = self._counts(event.function)
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
                    event.payload, self._context(function, event), report=report
                )
                report.error = result.error
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
        counts.retries[decision.reason] = counts.retries.get(decision.reason, 0) + 1
        log.warning(
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
        counts = self._counts(event.function)
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
            self._delivering.add(event.request_id)
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
            self._delivering.discard(event.request_id)
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

    async def _deliver(self, event: StoredEvent) -> None:
        self._delivering.add(event.request_id)
        try:
            await self.deliveries.deliver(event)
        except EventQueueError as exc:
            log.error(
                "async event %s of %s: %s; its delivery is tried again",
                event.request_id,
                event.function,
                exc,
                extra=event_ids(event),
            )
        finally:
            self._delivering.discard(event.request_id)
            self._wake.set()

    def _context(self, function: AsyncFunction, event: StoredEvent) -> LambdaContext:
        # Every attempt of an event has the event's request id, as on Lambda.
        context = function.new_context()
        context.aws_request_id = event.request_id
        return context

    def _counts(self, function: str) -> AsyncCounts:
        counts = self.counts.get(function)
        if counts is None:
            counts = self.counts[function] = AsyncCounts()
        return counts

    def _arn_of(self, function: str) -> str:
        known = self.functions.get(function)
        if known is not None:
            return known.arn
        return f"arn:aws:lambda:{default_region()}:{ACCOUNT_ID}:function:{function}"


async def enqueue(
    store: EventStore,
    telemetry: AsyncTelemetry,
    function: str,
    payload: bytes,
    request_id: str,
    trace_parent: str | None,
    now: float,
) -> None:
    """Store an event for ``function``, due at once, in its trace (``accept``, and ``poller invoke
    --async`` in a process of its own). Raises PayloadTooLarge, EventQueueError."""
    if len(payload) > MAX_PAYLOAD:
        raise PayloadTooLarge(f"the payload is {len(payload)} bytes, more than {MAX_PAYLOAD} bytes")
    with telemetry.accepted(function, request_id, trace_parent) as stored_parent:
        event = StoredEvent(request_id, function, payload, stored_parent, now, 0, now, 0, 0, LastAttempt())
        await store.add(event)


def concurrency_of(config: Function) -> int:
    """How many events of a function are attempted at once."""
    reserved = config.reserved_concurrent_executions
    if reserved is None:
        return max(UNRESERVED_CONCURRENCY, config.provisioned_concurrent_executions)
    # Reserved 0 throttles every event at once, without invoking: no reason to take them one by one.
    return reserved or UNRESERVED_CONCURRENCY


def targets_of(config: Function, condition: str) -> list[Target]:
    """The destinations a decided event goes to: on_success, or on_failure and the dead-letter one."""
    destinations = config.event_invoke_config.destination_config
    if condition == SUCCESS:
        return [Target("on_success", destinations.on_success.destination)] if destinations.on_success else []
    targets = [Target("on_failure", destinations.on_failure.destination)] if destinations.on_failure else []
    if config.dead_letter_config is not None:
        targets.append(Target(DEAD_LETTER, config.dead_letter_config.destination))
    return targets
