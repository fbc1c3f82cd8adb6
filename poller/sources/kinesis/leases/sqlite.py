"""The embedded lease store: a SQLite file on local disk (the default for Kinesis mappings).

One poller process uses a file at a time: it holds an exclusive ``flock`` on ``<path>.lock`` for
as long as any of its mappings has the file open. A second process that opens the same file gets
a retriable SourceError and waits, as a standby, until the first exits (the kernel drops the lock
when a process dies, even by ``kill -9``). Because nobody else can be reading, :meth:`open` frees
the leases a previous process left behind, and this process takes them at once instead of waiting
for them to expire. To spread shards over several processes use the ``dynamodb`` store.

SQLite is blocking, so every call runs on a thread of the store's own, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from poller.errors import SourceError
from poller.sources.kinesis.leases.lease import Lease

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kinesis_leases (
    lease_group TEXT NOT NULL,
    shard_id TEXT NOT NULL,
    parent_shard_ids TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    lease_owner TEXT,
    lease_counter INTEGER NOT NULL,
    pending_owner TEXT,
    lease_expires_at REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (lease_group, shard_id)
)
"""
_COLUMNS = "shard_id, parent_shard_ids, checkpoint, lease_owner, lease_counter, pending_owner"
_WHERE = "lease_group = ? AND shard_id = ?"


class _FileLock:
    """An exclusive flock on ``<db>.lock``, shared by every store of this process on that file."""

    _held: ClassVar[dict[str, tuple[int, int]]] = {}  # lock path -> (fd, users)
    _guard: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def acquire(cls, db_path: Path) -> str:
        lock_path = str(db_path.resolve()) + ".lock"
        with cls._guard:
            fd, users = cls._held.get(lock_path, (-1, 0))
            if users == 0:
                try:
                    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
                except OSError as exc:
                    raise SourceError(
                        f"cannot lock checkpoint file {db_path}: {exc}", retriable=False
                    ) from exc
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise SourceError(
                        f"checkpoint file {db_path} is in use by another poller process; waiting for it "
                        "to exit (use checkpoints of type dynamodb to share shards between processes)"
                    ) from None
            cls._held[lock_path] = (fd, users + 1)
        return lock_path

    @classmethod
    def release(cls, lock_path: str) -> None:
        with cls._guard:
            fd, users = cls._held.pop(lock_path, (-1, 0))
            if users > 1:
                cls._held[lock_path] = (fd, users - 1)
            elif fd >= 0:
                os.close(fd)  # closing the descriptor drops the flock


class SqliteLeaseStore:
    """Leases of one lease group in a SQLite file (see the module docstring)."""

    def __init__(self, path: str, group: str, *, lease_duration: float) -> None:
        self.path = Path(path)
        self.group = group
        self.lease_duration = lease_duration
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None
        self._lock_path: str | None = None

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceError(f"cannot create the directory of checkpoint file {self.path}: {exc}") from exc
        self._lock_path = _FileLock.acquire(self.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poller-sqlite")
        try:
            await self._run(self._open)
        except BaseException:
            await self.close()
            raise
        log.info("kinesis checkpoints of %s in %s", self.group, self.path)

    def _open(self) -> None:
        connection = sqlite3.connect(self.path, timeout=30.0)
        self._connection = connection
        # WAL keeps readers off the writer's back; NORMAL syncs at checkpoints of the WAL, which
        # survives a crash of this process (a power cut may lose the newest checkpoints, which
        # only means records are delivered again).
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        with connection:
            connection.execute(_SCHEMA)
            # We hold the file lock, so whoever owned these leases is gone.
            connection.execute(
                "UPDATE kinesis_leases SET lease_owner = NULL, pending_owner = NULL, "
                "lease_counter = lease_counter + 1, updated_at = ? "
                "WHERE lease_group = ? AND lease_owner IS NOT NULL",
                (time.time(), self.group),
            )

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        executor, self._executor = self._executor, None
        if connection is not None and executor is not None:
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(executor, connection.close)
        if executor is not None:
            executor.shutdown(wait=False)
        if self._lock_path is not None:
            _FileLock.release(self._lock_path)
            self._lock_path = None

    async def list_leases(self) -> list[Lease]:
        def query(connection: sqlite3.Connection) -> list[Lease]:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM kinesis_leases WHERE lease_group = ? ORDER BY shard_id",
                (self.group,),
            ).fetchall()
            return [_lease(row) for row in rows]

        return await self._call(query)

    async def create(self, lease: Lease) -> bool:
        def insert(connection: sqlite3.Connection) -> bool:
            with connection:
                cursor = connection.execute(
                    "INSERT OR IGNORE INTO kinesis_leases (lease_group, shard_id, parent_shard_ids, "
                    "checkpoint, lease_owner, lease_counter, pending_owner, lease_expires_at, updated_at) "
                    "VALUES (?, ?, ?, ?, NULL, 0, NULL, NULL, ?)",
                    (
                        self.group,
                        lease.shard_id,
                        json.dumps(list(lease.parent_shard_ids)),
                        lease.checkpoint,
                        time.time(),
                    ),
                )
                return cursor.rowcount == 1

        return await self._call(insert)

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        return await self._update(
            lease,
            "lease_owner = ?, pending_owner = NULL, lease_counter = lease_counter + 1, lease_expires_at = ?",
            [owner, time.time() + self.lease_duration],
            "lease_counter = ?",
            [lease.counter],
        )

    async def renew(self, lease: Lease) -> Lease | None:
        return await self._update(
            lease,
            "lease_counter = lease_counter + 1, lease_expires_at = ?",
            [time.time() + self.lease_duration],
            "lease_owner IS ? AND lease_counter = ?",
            [lease.owner, lease.counter],
        )

    async def checkpoint(self, lease: Lease, checkpoint: str, *, free: bool = False) -> Lease | None:
        if free:
            assignments = "lease_owner = NULL, pending_owner = NULL, lease_expires_at = NULL"
            values: list[Any] = []
        else:
            assignments, values = "lease_expires_at = ?", [time.time() + self.lease_duration]
        return await self._update(
            lease,
            f"checkpoint = ?, lease_counter = lease_counter + 1, {assignments}",
            [checkpoint, *values],
            "lease_owner IS ? AND lease_counter = ?",
            [lease.owner, lease.counter],
        )

    async def request_handoff(self, lease: Lease, owner: str) -> Lease | None:
        return await self._update(
            lease,
            "pending_owner = ?",
            [owner],
            "lease_owner IS ? AND lease_counter = ? AND pending_owner IS NULL",
            [lease.owner, lease.counter],
        )

    async def hand_over(self, lease: Lease) -> Lease | None:
        return await self._update(
            lease,
            "lease_owner = pending_owner, pending_owner = NULL, lease_counter = lease_counter + 1, "
            "lease_expires_at = ?",
            [time.time() + self.lease_duration],
            "lease_owner IS ? AND lease_counter = ? AND pending_owner IS NOT NULL",
            [lease.owner, lease.counter],
        )

    async def free(self, lease: Lease) -> Lease | None:
        return await self._update(
            lease,
            "lease_owner = NULL, pending_owner = NULL, lease_counter = lease_counter + 1, "
            "lease_expires_at = NULL",
            [],
            "lease_owner IS ? AND lease_counter = ?",
            [lease.owner, lease.counter],
        )

    async def _update(
        self, lease: Lease, assignments: str, values: list[Any], condition: str, condition_values: list[Any]
    ) -> Lease | None:
        def update(connection: sqlite3.Connection) -> Lease | None:
            with connection:
                cursor = connection.execute(
                    f"UPDATE kinesis_leases SET {assignments}, updated_at = ? WHERE {_WHERE} AND {condition}",
                    [*values, time.time(), self.group, lease.shard_id, *condition_values],
                )
                if cursor.rowcount != 1:
                    return None
                row = connection.execute(
                    f"SELECT {_COLUMNS} FROM kinesis_leases WHERE {_WHERE}", (self.group, lease.shard_id)
                ).fetchone()
            return _lease(row)

        return await self._call(update)

    async def _call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._connection is None:
                raise SourceError(f"checkpoint file {self.path} is not open")
            return operation(self._connection)

        return await self._run(run)

    async def _run(self, function: Callable[[], T]) -> T:
        if self._executor is None:
            raise SourceError(f"checkpoint file {self.path} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function)
        except sqlite3.Error as exc:
            raise SourceError(f"checkpoint file {self.path}: {exc}") from exc


def _lease(row: tuple[Any, ...]) -> Lease:
    shard_id, parents, checkpoint, owner, counter, pending = row
    return Lease(
        shard_id=shard_id,
        parent_shard_ids=tuple(json.loads(parents)),
        checkpoint=checkpoint,
        owner=owner,
        counter=int(counter),
        pending_owner=pending,
    )
