"""What an event in the queue of asynchronous invocations is, what a store of them does, and what
the Invoke API hands an accepted ``Event`` invocation to (:class:`EventQueue`).

The store of ``async_queue`` (:mod:`.store` for SQLite) keeps each accepted event as a
:class:`StoredEvent` until its last destination confirmed it; the workers change its state through
the :class:`EventStore` methods, each one a write that outlives a crash of the process.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from poller.errors import PollerError
from poller.runtime.function import FunctionRuntime

INVOKE, DELIVER = 0, 1  # the stages of an event: waiting for an attempt, or decided and being sent


class EventQueueError(PollerError):
    """The queue of asynchronous events cannot be read or written (now): the caller may try again."""

    retriable = True


class QueueBusy(EventQueueError):
    """Another process works the queue's events; this one may still add events to it."""


@dataclass(frozen=True)
class Target:
    """One destination an event still has to reach: ``kind`` is on_success, on_failure or dead_letter."""

    kind: str
    destination: str


@dataclass(frozen=True)
class LastAttempt:
    """What the last attempt of an event came to: its response (the error document after a
    function error) and, after a function error or a throttle, the error."""

    response: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    request_id: str
    function: str
    payload: bytes
    trace_parent: str | None
    accepted_at: float  # epoch seconds
    stage: int
    due_at: float
    attempts: int  # invocations made (function errors count, throttles do not)
    throttles: int
    last: LastAttempt
    condition: str | None = None
    finished_at: float | None = None
    pending: tuple[Target, ...] = ()
    delivery_failures: int = 0


@dataclass(frozen=True)
class FunctionBacklog:
    """The events of one function in the store: how many, and when the oldest was accepted."""

    events: int
    oldest_accepted_at: float


class EventStore(Protocol):
    """Where accepted events wait (``async_queue``). Every method raises EventQueueError when the
    store cannot be reached; see :class:`SqliteEventStore` for what each one does."""

    where: str  # the store, for log lines

    def exists(self) -> bool: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def acquire_consumer(self) -> None: ...

    def release_consumer(self) -> None: ...

    async def add(self, event: StoredEvent) -> None: ...

    async def retry(
        self, request_id: str, *, due_at: float, attempts: int, throttles: int, last: LastAttempt
    ) -> None: ...

    async def finish(
        self,
        request_id: str,
        *,
        condition: str,
        now: float,
        attempts: int,
        throttles: int,
        last: LastAttempt,
        targets: Sequence[Target],
    ) -> None: ...

    async def delivered(self, request_id: str, remaining: Sequence[Target]) -> None: ...

    async def postpone_delivery(self, request_id: str, *, due_at: float, failures: int) -> None: ...

    async def due_invocations(
        self, function: str, now: float, limit: int, skip: Collection[str] = ()
    ) -> list[StoredEvent]: ...

    async def due_deliveries(
        self, now: float, limit: int, skip: Collection[str] = ()
    ) -> list[StoredEvent]: ...

    async def next_due(self, after: float) -> float | None: ...

    async def backlog(self) -> dict[str, FunctionBacklog]: ...


class EventQueue(Protocol):
    """Where accepted asynchronous invocations wait until they are processed (the App's
    :class:`~poller.invocation.asynchronous.invoker.AsyncInvocations`)."""

    async def accept(
        self, function: FunctionRuntime, payload: bytes, *, request_id: str, trace_parent: str | None
    ) -> None:
        """Store one event for ``function``: ``payload`` is its JSON (checked, at most 1 MB),
        ``request_id`` the invocation's id (the API's answer carries it, and the function gets it
        as ``aws_request_id``), ``trace_parent`` the W3C traceparent of the API's span, for the
        invocation to continue that trace. Return only once the event is durably stored (the API
        then answers 202); raise :class:`~poller.errors.PollerError` if it cannot be (the API
        answers that the service is unavailable)."""
