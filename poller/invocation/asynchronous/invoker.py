"""Asynchronous invocation (SPEC section 13): events accepted into a durable queue, attempted by
workers within each function's concurrency, retried as Lambda retries them, and sent on to the
function's destinations (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async.html).

:meth:`AsyncInvocations.accept` is the ``EventQueue`` behind the Invoke API's ``Event`` type: it
returns once the event is committed to the store. :meth:`AsyncInvocations.run` works the store.
The store is the truth: events that another process added (``poller invoke --async``) are found
by looking at it every :data:`POLL_INTERVAL` seconds, while what happens in this process (an
accept, a finished attempt, a retry written) wakes the workers at once. Each step of an event is
a write to its row (:mod:`.store`), so an attempt that a crash interrupted is made again
after the restart; a retry's wait is a row with a later ``due_at``, not a task, so a backlog costs
no memory beyond the attempts running.

**Concurrency**: at most ``reserved_concurrent_executions`` attempts of a function at once (the
limit of its environment pool, which the function's mappings share), or
:data:`UNRESERVED_CONCURRENCY` (at least its provisioned environments) without a reservation.
What counts as a throttle is said in :mod:`.attempts`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from poller.clock import Clock, first_of
from poller.config import Function
from poller.connections.account import ACCOUNT_ID, default_region
from poller.destinations import Destination
from poller.engine.backoff import Backoff
from poller.errors import PollerError
from poller.invocation.asynchronous.attempts import AsyncCounts, AsyncFunction, Attempts
from poller.invocation.asynchronous.delivery import Deliveries, event_ids
from poller.invocation.asynchronous.queue import (
    EventQueueError,
    EventStore,
    FunctionBacklog,
    LastAttempt,
    QueueBusy,
    StoredEvent,
)
from poller.observability.async_spans import AsyncTelemetry

log = logging.getLogger(__name__)

MAX_PAYLOAD = 1_048_576  # bytes: Lambda's limit for an asynchronous invocation's payload
UNRESERVED_CONCURRENCY = 10  # attempts at once of a function without reserved concurrency
DELIVERY_CONCURRENCY = 16  # events sent to destinations at once
POLL_INTERVAL = 0.5  # seconds between looks at the whole store (events other processes added)
BACKLOG_REFRESH = 1.0  # seconds between counts of the events in the store (for the metrics)
STORE_RETRY_FIRST, STORE_RETRY_MAX = 0.5, 10.0


class PayloadTooLarge(PollerError):
    """An asynchronous invocation's payload is over Lambda's 1 MB limit."""


class AsyncInvocations:
    """The queue of asynchronous events of every function, and its workers. :meth:`accept` at
    any time (the first one opens the store); :meth:`run` works the queue until :meth:`stop`,
    then drains; :meth:`close` at the end."""

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
        self.backlog: dict[str, FunctionBacklog] = {}
        self.consuming = False  # this process holds the queue, and works it
        self._delivering: set[str] = set()
        self.attempts = Attempts(store, telemetry, self.clock, self._delivering, self._scheduled)
        self.deliveries = Deliveries(
            store, destination_of, self._arn_of, self.clock, telemetry, self._scheduled
        )
        self._opened = False
        self._opening = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        # Per function: the events read from the store and not written back yet (read ahead,
        # being attempted, or having what followed written), those of them read ahead, and how
        # many are in the function (what its concurrency limits).
        self._taken: dict[str, set[str]] = {}
        self._ready: dict[str, collections.deque[StoredEvent]] = {}
        self._running: dict[str, int] = {}
        self._maybe_due: set[str] = set()  # functions that may have events due (look at the store)
        self._group: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_due: float | None = None  # the earliest due_at in the future known here
        self._look_at = float("-inf")  # when to look at the whole store again (time.monotonic)
        self._backlog_at = float("-inf")

    @property
    def counts(self) -> dict[str, AsyncCounts]:
        return self.attempts.counts

    def attempting(self, function: str) -> int:
        """Events of ``function`` in the function now."""
        return self._running.get(function, 0)

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
        self.attempts.counts_of(function.name).received += 1
        self._maybe_due.add(function.name)
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
                self._group = group
                await self._dispatch(group)
                if self._tasks:
                    _, late = await asyncio.wait(self._tasks, timeout=self.drain_timeout)
                    for task in late:
                        task.cancel()
                    if late:
                        log.warning("async invocations: %d cut short by the drain stay queued", len(late))
        finally:
            self._group = None
            self.consuming = False
            self._ready.clear()  # read ahead, not started: they wait in the store
            self.store.release_consumer()

    async def _become_consumer(self) -> bool:
        backoff = Backoff(STORE_RETRY_FIRST, POLL_INTERVAL * 20)
        told = False
        while not self._stopping.is_set():
            try:
                if not self._opened and not self.store.exists():
                    await first_of(self._wake, within=POLL_INTERVAL)  # an accept opens it
                    self._wake.clear()
                    continue
                await self.open()
                self.store.acquire_consumer()
            except QueueBusy as exc:
                if not told:
                    log.warning("%s", exc)
                    told = True
                await first_of(self._stopping, within=backoff.next())
                continue
            except EventQueueError as exc:
                log.error("%s", exc)
                await first_of(self._stopping, within=backoff.next())
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
                due_in = await self._dispatch_once(group)
            except EventQueueError as exc:
                delay = backoff.next()
                log.error("async invocations: %s; looking again in %.1f s", exc, delay)
                await first_of(self._stopping, within=delay)
                continue
            backoff.reset()
            await self._wait(due_in)

    async def _dispatch_once(self, group: asyncio.TaskGroup) -> float | None:
        """Start what is due; return in how many seconds (clock time) the next event known here
        falls due, if one does. The whole store is read every POLL_INTERVAL and when a time
        written here comes due; in between, only the functions that may have due events (an
        accept, a full page last time) are read."""
        now = self.clock.now()
        look = time.monotonic() >= self._look_at or (self._next_due is not None and now >= self._next_due)
        if look:
            self._maybe_due.update(self.functions)
        for name in list(self._maybe_due):
            function = self.functions.get(name)
            if function is None:  # a reload removed it: its events wait (shown in the metrics)
                self._maybe_due.discard(name)
                for event in self._ready.pop(name, ()):
                    self._taken[name].discard(event.request_id)
                continue
            await self._read_ahead(name, function, now)
            if self._stopping.is_set():
                return 0.0
            self._start_ready(name)
        if look:
            await self._look(group, now)
        return None if self._next_due is None else max(0.0, self._next_due - now)

    async def _wait(self, due_in: float | None) -> None:
        """Until a wake-up, the next look at the store (real time: it is I/O) or the next due
        time (the clock's: a test clock decides when a retry falls due)."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        waiters.append(asyncio.ensure_future(asyncio.sleep(max(0.0, self._look_at - time.monotonic()))))
        if due_in is not None:
            waiters.append(asyncio.ensure_future(self.clock.sleep(due_in)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _look(self, group: asyncio.TaskGroup, now: float) -> None:
        """Read what only the whole store knows: deliveries due (tried again after a failure, or
        left by a process that stopped), the next due time, the backlog for the metrics."""
        free = DELIVERY_CONCURRENCY - len(self._delivering)
        for event in await self.store.due_deliveries(now, free, skip=self._delivering):
            self._delivering.add(event.request_id)
            self._spawn(group, self._deliver(event))
        self._next_due = await self.store.next_due(now)
        if time.monotonic() - self._backlog_at >= BACKLOG_REFRESH:
            self.backlog = await self.store.backlog()
            self._backlog_at = time.monotonic()
        self._look_at = time.monotonic() + POLL_INTERVAL

    async def _read_ahead(self, name: str, function: AsyncFunction, now: float) -> None:
        """Read due events of ``name``: enough to fill its free concurrency, and as many again
        to start the moment an attempt ends, without a read in between."""
        limit = concurrency_of(function.config)
        ready = self._ready.setdefault(name, collections.deque())
        taken = self._taken.setdefault(name, set())
        wanted = 2 * limit - self._running.get(name, 0) - len(ready)
        if wanted <= 0 or len(ready) >= limit:
            # Enough to go on with: a finished attempt starts the next one, and the function
            # stays in _maybe_due. (Reading a page at a time, not an event per finished attempt.)
            return
        due = await self.store.due_invocations(name, now, wanted, skip=taken)
        if len(due) < wanted:
            self._maybe_due.discard(name)  # every due event of the function is read
        for event in due:
            taken.add(event.request_id)
            ready.append(event)

    def _start_ready(self, name: str) -> None:
        """Start events read ahead, as the function's concurrency allows."""
        function = self.functions.get(name)
        ready = self._ready.get(name)
        if function is None or not ready or self._group is None or self._stopping.is_set():
            return
        free = concurrency_of(function.config) - self._running.get(name, 0)
        for _ in range(min(free, len(ready))):
            event = ready.popleft()
            self._running[name] = self._running.get(name, 0) + 1
            self._spawn(self._group, self._attempt(function, event))

    def _scheduled(self, due: float) -> None:
        """A retry or a delivery was written to fall due at ``due``."""
        if self._next_due is None or due < self._next_due:
            self._next_due = due
            self._wake.set()

    def _spawn(self, group: asyncio.TaskGroup, work: Coroutine[Any, Any, None]) -> None:
        task = group.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempt(self, function: AsyncFunction, event: StoredEvent) -> None:
        name = event.function
        running = True

        def invoked() -> None:
            # The function is free for the next event (started here, without a read), while
            # what followed this one is written.
            nonlocal running
            if running:
                running = False
                self._running[name] -= 1
                self._start_ready(name)
                self._maybe_due.add(name)
                self._wake.set()

        try:
            decided = await self.attempts.attempt(function, event, invoked)
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
            invoked()
            self._taken.get(name, set()).discard(event.request_id)
        if decided is not None:
            await self._deliver(decided)

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
