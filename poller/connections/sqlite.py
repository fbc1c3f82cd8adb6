"""A SQLite file that one poller process uses at a time, with its calls on a thread of their own.

The process holds an exclusive ``flock`` on ``<path>.lock`` for as long as any of its stores has
the file open (the lease store of a Kinesis mapping, the window store of a mapping with tumbling
windows). A second process that opens the same file gets a retriable SourceError and waits, as a
standby, until the first exits: the kernel drops the lock when a process dies, even by ``kill -9``.
A file that several processes write at once (the queue of asynchronous invocations) is opened
with ``exclusive=False``: SQLite's own locking then keeps their transactions apart.
SQLite is blocking, so every call runs on the file's own thread, one at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from poller.errors import SourceError

T = TypeVar("T")


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


class SqliteFile:
    """One connection to a SQLite file this process holds the lock of. Raises SourceError for
    anything SQLite raises."""

    def __init__(
        self,
        path: str | Path,
        *,
        exclusive: bool = True,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        what: str = "checkpoint file",
    ) -> None:
        """``synchronous`` is SQLite's setting: NORMAL survives a crash of the process, FULL (an fsync
        per commit) also a power cut. ``what`` names the file in errors."""
        self.path = Path(path)
        self.exclusive = exclusive
        self.synchronous = synchronous
        self.what = what
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None
        self._lock_path: str | None = None

    async def open(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Lock the file, connect, and run ``setup`` (create tables) on the connection."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceError(f"cannot create the directory of {self.what} {self.path}: {exc}") from exc
        if self.exclusive:
            self._lock_path = _FileLock.acquire(self.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poller-sqlite")
        try:
            await self._run(lambda: self._connect(setup))
        except BaseException:
            await self.close()
            raise

    def _connect(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        connection = sqlite3.connect(self.path, timeout=30.0)
        self._connection = connection
        # WAL keeps readers off the writer's back; NORMAL syncs at checkpoints of the WAL, which
        # survives a crash of this process (a power cut may lose the newest writes, which only
        # means records are delivered again).
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA synchronous={self.synchronous}")
        setup(connection)

    async def call(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` with the connection on the file's thread."""

        def run() -> T:
            if self._connection is None:
                raise SourceError(f"{self.what} {self.path} is not open")
            return operation(self._connection)

        return await self._run(run)

    async def close(self) -> None:
        """Close the connection and give the lock up. Never raises."""
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

    async def _run(self, function: Callable[[], T]) -> T:
        if self._executor is None:
            raise SourceError(f"{self.what} {self.path} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, function)
        except sqlite3.Error as exc:
            raise SourceError(f"{self.what} {self.path}: {exc}") from exc
