"""Where accepted asynchronous events wait: a SQLite file, the truth about every event until it is done.

An event is a row from the moment it is accepted (committed, and fsynced: ``synchronous=FULL``,
before :meth:`SqliteEventStore.add` returns) until its last destination confirmed it. Every change
of its state is a write to its row, so a poller killed at any point loses nothing: after a
restart the event continues from the last state written. Which events the workers of this
process are attempting is kept in memory only, so an attempt that a crash interrupted is made
again (at least once, as on Lambda).

Several processes may write the file at once (SQLite's locking keeps their transactions apart):
every poller process on it, and ``poller invoke --async``. One process at a time works the
events: the one that holds :class:`ConsumerLock`; the others accept and store events, and wait.

The rows go through two stages: **invoke** (waiting for an attempt, ``due_at`` the time of the
next one) and **deliver** (decided: ``condition`` set, ``pending`` the destinations still to
confirm it). Writes that happen together (many accepts at once) share one commit.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from poller.config.invocation import AsyncQueue
from poller.connections.sqlite import SqliteFile
from poller.errors import SourceError
from poller.invocation.asynchronous.queue import (
    DELIVER,
    INVOKE,
    EventQueueError,
    EventStore,
    FunctionBacklog,
    LastAttempt,
    QueueBusy,
    StoredEvent,
    Target,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS async_events (
    request_id TEXT PRIMARY KEY,
    function_name TEXT NOT NULL,
    payload BLOB NOT NULL,
    trace_parent TEXT,
    accepted_at REAL NOT NULL,
    stage INTEGER NOT NULL DEFAULT 0,
    due_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    throttles INTEGER NOT NULL DEFAULT 0,
    response BLOB,
    error_type TEXT,
    error_message TEXT,
    condition TEXT,
    finished_at REAL,
    pending TEXT,
    delivery_failures INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS async_events_by_function ON async_events (function_name, stage, due_at);
CREATE INDEX IF NOT EXISTS async_events_by_due ON async_events (due_at);
"""
_COLUMNS = (
    "request_id, function_name, payload, trace_parent, accepted_at, stage, due_at, attempts, throttles, "
    "response, error_type, error_message, condition, finished_at, pending, delivery_failures"
)


def _event(row: Sequence[Any]) -> StoredEvent:
    pending = tuple(Target(kind, name) for kind, name in orjson.loads(row[14])) if row[14] else ()
    return StoredEvent(
        request_id=row[0],
        function=row[1],
        payload=row[2],
        trace_parent=row[3],
        accepted_at=row[4],
        stage=row[5],
        due_at=row[6],
        attempts=row[7],
        throttles=row[8],
        last=LastAttempt(row[9], row[10], row[11]),
        condition=row[12],
        finished_at=row[13],
        pending=pending,
        delivery_failures=row[15],
    )


def _pending(targets: Sequence[Target]) -> bytes:
    return orjson.dumps([[target.kind, target.destination] for target in targets])


def build_event_store(settings: AsyncQueue) -> EventStore:
    """The store ``async_queue`` names."""
    return SqliteEventStore(settings.path)


Operation = tuple[str, Sequence[Any], bool]  # SQL, its parameters, and whether it must reach the disk
T = TypeVar("T")


class SqliteEventStore:
    """The events of every function in one SQLite file. Every method raises EventQueueError when
    the file cannot be read or written."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self._file = SqliteFile(self.path, exclusive=False, synchronous="FULL", what="async event queue")
        self._consumer = ConsumerLock(self.path)
        # Writes waiting for the next commit; a writer's future is True once written, False when
        # it is to run the next commit itself.
        self._waiting: list[tuple[Operation, asyncio.Future[bool]]] = []
        self._writing = False

    def exists(self) -> bool:
        """Whether the file is there (before any event was accepted, it is not)."""
        return self.path.exists()

    def acquire_consumer(self) -> None:
        """Become the process that works the events; raises QueueBusy while another one is."""
        self._consumer.acquire()

    def release_consumer(self) -> None:
        self._consumer.release()

    async def open(self) -> None:
        """Create the file (and its directory) if it is not there."""

        def setup(connection: sqlite3.Connection) -> None:
            connection.executescript(_SCHEMA)
            connection.commit()

        try:
            await self._file.open(setup)
        except SourceError as exc:
            raise EventQueueError(str(exc)) from exc

    async def close(self) -> None:
        """Never raises."""
        self._consumer.release()
        await self._file.close()

    # --- writes ------------------------------------------------------------------------------------

    async def add(self, event: StoredEvent) -> None:
        """Store a newly accepted event; returns once it is committed and fsynced. An event whose
        request id is stored already is left as it is (a client that sent it again)."""
        values = (
            event.request_id,
            event.function,
            event.payload,
            event.trace_parent,
            event.accepted_at,
            INVOKE,
            event.due_at,
        )
        await self._write(
            "INSERT OR IGNORE INTO async_events (request_id, function_name, payload, trace_parent, "
            "accepted_at, stage, due_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            values,
            durable=True,
        )

    async def retry(
        self, request_id: str, *, due_at: float, attempts: int, throttles: int, last: LastAttempt
    ) -> None:
        """The event waits for another attempt at ``due_at``."""
        values = (due_at, attempts, throttles, last.response, last.error_type, last.error_message, request_id)
        await self._write(
            "UPDATE async_events SET due_at = ?, attempts = ?, throttles = ?, response = ?, error_type = ?, "
            "error_message = ? WHERE request_id = ?",
            values,
        )

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
    ) -> None:
        """The event's outcome is decided: it now waits for ``targets`` to confirm it (with no
        targets, it is done and forgotten)."""
        if not targets:
            await self.forget(request_id)
            return
        values = (
            DELIVER,
            now,
            attempts,
            throttles,
            last.response,
            last.error_type,
            last.error_message,
            condition,
            now,
            _pending(targets),
            request_id,
        )
        await self._write(
            "UPDATE async_events SET stage = ?, due_at = ?, attempts = ?, throttles = ?, response = ?, "
            "error_type = ?, error_message = ?, condition = ?, finished_at = ?, pending = ?, "
            "delivery_failures = 0 WHERE request_id = ?",
            values,
        )

    async def delivered(self, request_id: str, remaining: Sequence[Target]) -> None:
        """A destination confirmed the event; ``remaining`` still have to (none: it is done)."""
        if not remaining:
            await self.forget(request_id)
            return
        values = (_pending(remaining), request_id)
        await self._write("UPDATE async_events SET pending = ? WHERE request_id = ?", values)

    async def postpone_delivery(self, request_id: str, *, due_at: float, failures: int) -> None:
        """A destination did not confirm the event: try again at ``due_at``."""
        values = (due_at, failures, request_id)
        await self._write(
            "UPDATE async_events SET due_at = ?, delivery_failures = ? WHERE request_id = ?", values
        )

    async def forget(self, request_id: str) -> None:
        await self._write("DELETE FROM async_events WHERE request_id = ?", (request_id,))

    async def _write(self, sql: str, parameters: Sequence[Any], *, durable: bool = False) -> None:
        """Run one statement in a transaction, together with the writes that queued meanwhile: a
        writer that finds no commit running commits everything queued so far in one, then hands
        the next commit to the first writer still waiting. A ``durable`` write (an accepted event:
        the promise made to its client) is fsynced before it returns; the others (an event's next
        state) survive a crash of the process, and a power cut may lose them, which only makes an
        event's last step happen again."""
        while True:
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiting.append(((sql, parameters, durable), waiter))
            if not self._writing:
                break
            if not await waiter:  # handed the next commit
                continue
            return
        self._writing = True
        try:
            batch, self._waiting = self._waiting, []
            await self._commit(batch)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # the caller gets its cancellation instead
            raise
        finally:
            self._writing = False
            self._hand_over()
        await waiter

    def _hand_over(self) -> None:
        while self._waiting:
            _, waiter = self._waiting.pop(0)
            if not waiter.done():
                waiter.set_result(False)  # it queues its write again and commits
                return

    async def _commit(self, batch: list[tuple[Operation, asyncio.Future[bool]]]) -> None:
        durable = any(operation[2] for operation, _ in batch)

        def run(connection: sqlite3.Connection) -> None:
            try:
                # Outside the transaction: a commit in WAL mode fsyncs with FULL, not with NORMAL.
                connection.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                for (sql, parameters, _), _ in batch:
                    connection.execute(sql, parameters)
                connection.commit()
            except BaseException:
                connection.rollback()
                raise

        try:
            await self._call(run)
        except BaseException as exc:
            error = exc if isinstance(exc, EventQueueError) else EventQueueError(f"async event queue: {exc}")
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(error)
            if not isinstance(exc, Exception):
                raise  # cancellation
            return
        for _, waiter in batch:
            if not waiter.done():
                waiter.set_result(True)

    # --- reads -------------------------------------------------------------------------------------

    async def due_invocations(
        self, function: str, now: float, limit: int, skip: Collection[str] = ()
    ) -> list[StoredEvent]:
        """Up to ``limit`` events of ``function`` due for an attempt, the earliest first, leaving
        out those in ``skip`` (attempted now)."""
        return await self._due(
            f"SELECT {_COLUMNS} FROM async_events WHERE function_name = ? AND stage = {INVOKE} AND due_at <= ? "
            "ORDER BY due_at LIMIT ?",
            (function, now, limit + len(skip)),
            limit,
            skip,
        )

    async def due_deliveries(self, now: float, limit: int, skip: Collection[str] = ()) -> list[StoredEvent]:
        """Up to ``limit`` decided events due to be sent to their destinations, leaving out ``skip``."""
        return await self._due(
            f"SELECT {_COLUMNS} FROM async_events WHERE stage = {DELIVER} AND due_at <= ? ORDER BY due_at LIMIT ?",
            (now, limit + len(skip)),
            limit,
            skip,
        )

    async def next_due(self, after: float) -> float | None:
        """When the next event falls due after ``after`` (None: none waits)."""

        def query(connection: sqlite3.Connection) -> float | None:
            row = connection.execute(
                "SELECT MIN(due_at) FROM async_events WHERE due_at > ?", (after,)
            ).fetchone()
            return row[0] if row else None

        return await self._call(query)

    async def backlog(self) -> dict[str, FunctionBacklog]:
        """Per function, the events in the store (waiting, being attempted or being delivered)."""

        def query(connection: sqlite3.Connection) -> dict[str, FunctionBacklog]:
            rows = connection.execute(
                "SELECT function_name, COUNT(*), MIN(accepted_at) FROM async_events GROUP BY function_name"
            ).fetchall()
            return {name: FunctionBacklog(count, oldest) for name, count, oldest in rows}

        return await self._call(query)

    async def get(self, request_id: str) -> StoredEvent | None:
        def query(connection: sqlite3.Connection) -> StoredEvent | None:
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM async_events WHERE request_id = ?", (request_id,)
            ).fetchone()
            return _event(row) if row else None

        return await self._call(query)

    async def _due(
        self, sql: str, parameters: tuple[Any, ...], limit: int, skip: Collection[str]
    ) -> list[StoredEvent]:
        if limit <= 0:
            return []
        rows: list[Any] = await self._call(lambda connection: connection.execute(sql, parameters).fetchall())
        events = [_event(row) for row in rows if row[0] not in skip]
        return events[:limit]

    async def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` on the file's thread; SQLite's errors as EventQueueError."""
        try:
            return await self._file.call(operation)
        except SourceError as exc:
            raise EventQueueError(str(exc)) from exc


class ConsumerLock:
    """An exclusive ``flock`` on ``<queue>.consumer.lock``: the one process that works the queue's
    events holds it. The kernel drops it when that process dies, even by ``kill -9``, and the
    next process to ask gets it: the events the dead one was attempting are then attempted again."""

    def __init__(self, path: Path) -> None:
        self.path = Path(str(path) + ".consumer.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises QueueBusy while another process holds it (EventQueueError if it cannot be opened)."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EventQueueError(f"cannot open {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise QueueBusy(
                f"async event queue {self.path.name.removesuffix('.consumer.lock')} is worked by another poller "
                "process; this one stores the events it accepts and waits for that one to exit"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
