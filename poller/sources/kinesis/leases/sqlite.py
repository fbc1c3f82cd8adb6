"""The embedded lease store: a SQLite file on local disk (the default for Kinesis mappings).

One poller process uses a file at a time (:mod:`poller.connections.sqlite`): a second one waits,
as a standby, until the first exits. Because nobody else can be reading, :meth:`open` frees the
leases a previous process left behind, and this process takes them at once instead of waiting for
them to expire. To spread shards over several processes use the ``dynamodb`` store.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from poller.connections.sqlite import SqliteFile
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


class SqliteLeaseStore:
    """Leases of one lease group in a SQLite file (see the module docstring)."""

    def __init__(self, path: str, group: str, *, lease_duration: float) -> None:
        self.path = Path(path)
        self.group = group
        self.lease_duration = lease_duration
        self._file = SqliteFile(path)

    async def open(self) -> None:
        await self._file.open(self._setup)
        log.info("kinesis checkpoints of %s in %s", self.group, self.path)

    def _setup(self, connection: sqlite3.Connection) -> None:
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
        await self._file.close()

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
        return await self._file.call(operation)


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
