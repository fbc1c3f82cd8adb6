"""Where the open tumbling windows of a mapping are kept: beside its checkpoints (SPEC section 15).

After every invocation of a window the new state is saved together with the position of the last
record folded into it, before those records are committed; so a restart, or a partition moving to
another replica, resumes the window with its state and skips the records already in it. The store
is the mapping's ``checkpoints`` setting: a SQLite file (the default; one process at a time), or
the DynamoDB lease table that replicas share (:mod:`poller.runtime.window_store_dynamodb`, imported
only when a mapping uses it: it brings in the AWS SDK).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Protocol

import orjson

from poller.config import AwsConnection, Config, DynamoDBCheckpoints, SqliteCheckpoints
from poller.connections.sqlite import SqliteFile
from poller.engine.windows import OpenWindow, stored_window, window_fields


class WindowStore(Protocol):
    """The open windows of one mapping, by partition. Every call raises SourceError (retriable)
    when the store cannot be reached."""

    async def open(self) -> None: ...

    async def close(self) -> None:
        """Never raises."""

    async def load(self, partition: str) -> OpenWindow | None:
        """The partition's open window, if it has one."""

    async def save(self, partition: str, window: OpenWindow) -> None:
        """Replace the partition's open window (its state and the position folded through)."""

    async def drop(self, partition: str) -> None:
        """The window had its final invocation: forget it."""


def build_window_store(
    settings: SqliteCheckpoints | DynamoDBCheckpoints, group: str, config: Config
) -> WindowStore:
    """The store a mapping's ``checkpoints`` setting names, for its windows under ``group``."""
    if isinstance(settings, SqliteCheckpoints):
        return SqliteWindowStore(settings.path, group)
    from poller.runtime.window_store_dynamodb import DynamoDBWindowStore

    return DynamoDBWindowStore(config.connection(settings.connection, AwsConnection), settings.table, group)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tumbling_windows (
    window_group TEXT NOT NULL,
    partition_key TEXT NOT NULL,
    window_start REAL NOT NULL,
    window_end REAL NOT NULL,
    through TEXT,
    state BLOB NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (window_group, partition_key)
)
"""


class SqliteWindowStore:
    """Windows in a table of the mapping's SQLite checkpoint file."""

    def __init__(self, path: str, group: str) -> None:
        self.group = group
        self._file = SqliteFile(path)

    async def open(self) -> None:
        def setup(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute(_SCHEMA)

        await self._file.open(setup)

    async def close(self) -> None:
        await self._file.close()

    async def load(self, partition: str) -> OpenWindow | None:
        def query(connection: sqlite3.Connection) -> OpenWindow | None:
            row = connection.execute(
                "SELECT window_start, window_end, through, state FROM tumbling_windows "
                "WHERE window_group = ? AND partition_key = ?",
                (self.group, partition),
            ).fetchone()
            return None if row is None else stored_window(*row)

        return await self._file.call(query)

    async def save(self, partition: str, window: OpenWindow) -> None:
        fields, state = window_fields(window), orjson.dumps(window.state)

        def upsert(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute(
                    "INSERT OR REPLACE INTO tumbling_windows VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        self.group,
                        partition,
                        fields["start"],
                        fields["end"],
                        fields["through"],
                        state,
                        time.time(),
                    ),
                )

        await self._file.call(upsert)

    async def drop(self, partition: str) -> None:
        def delete(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute(
                    "DELETE FROM tumbling_windows WHERE window_group = ? AND partition_key = ?",
                    (self.group, partition),
                )

        await self._file.call(delete)
