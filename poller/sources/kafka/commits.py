"""Offset commits in the background: one OffsetCommit request in flight, carrying all that finished.

A commit costs aiokafka a round trip and about 200 µs of CPU; waiting for one after every batch
made small batches commit-bound (docs/benchmarks.md). So the source queues the offsets of completed
records (:meth:`OffsetCommitter.add`) and returns, and the committer task (:meth:`OffsetCommitter.run`)
sends them. At least once still holds: offsets are queued only once their records completed, one
request is in flight at a time and the next carries everything finished meanwhile, and both a
revocation and the source's close flush the queue (:meth:`OffsetCommitter.flush`) before the
partitions are given up. A crash repeats what completed since the last successful request: at most
a round trip's worth of batches more than those in flight.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from poller.connections.kafka import source_error
from poller.engine.backoff import Backoff

log = logging.getLogger(__name__)

# Waits of the committer after a failed commit request, in seconds.
COMMIT_RETRY_FIRST, COMMIT_RETRY_MAX = 1.0, 30.0


class OffsetCommitter:
    """Commits the offsets queued for one consumer (anything with aiokafka's ``assignment()`` and
    ``commit(offsets)``)."""

    def __init__(self, consumer: Any, name: str, *, retry: Backoff | None = None) -> None:
        self.consumer = consumer
        self.name = name
        self.committed: dict[TopicPartition, int] = {}  # the last offset committed, per partition
        self._retry = retry or Backoff(COMMIT_RETRY_FIRST, COMMIT_RETRY_MAX)
        self._queued: dict[TopicPartition, int] = {}  # offsets of finished records, not yet sent
        self._lock = asyncio.Lock()  # one commit request at a time
        self._wanted = asyncio.Event()

    def add(self, offsets: dict[TopicPartition, int]) -> None:
        """Queue offsets (the next offset to read, per partition) for the committer task."""
        self._queue(offsets)
        self._wanted.set()

    async def flush(self) -> None:
        """Send every queued offset of an assigned partition; return once a request carrying them
        succeeded, or the group moved on (the partitions' new owner reads from the last commit).
        Raises SourceError if the broker failed the request; the offsets stay queued."""
        async with self._lock:
            assigned = self.consumer.assignment()
            request = {tp: offset for tp, offset in self._queued.items() if tp in assigned}
            if len(request) < len(self._queued):
                log.warning(
                    "mapping %s: offsets of partitions no longer assigned not committed: %s",
                    self.name,
                    {tp: offset for tp, offset in self._queued.items() if tp not in assigned},
                )
            self._queued = {}
            if not request:
                return
            try:
                await self.consumer.commit(request)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on: these partitions belong to another member now, which re-reads
                # from the last commit. At least once, so this loses nothing.
                log.warning("mapping %s: commit of %s refused after a rebalance: %s", self.name, request, exc)
                return
            except BaseException as exc:
                self._queue(request)  # also when cancelled: the final flush sends them
                if isinstance(exc, KafkaError):
                    raise source_error("Kafka commit failed", exc) from exc
                raise
            self.committed.update(request)

    async def run(self) -> None:
        """The committer task: flush whenever offsets were queued; after a failure, try again with
        backoff (the offsets stay queued, and later ones join them). It never ends by itself: a
        committer that died would leave every later offset uncommitted until close."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.flush()
            except Exception as exc:  # logged, and the offsets are sent again
                delay = self._retry.next()
                log.warning("mapping %s: %s; committing again in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
                self._wanted.set()
            else:
                self._retry.reset()

    def _queue(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if offset > self._queued.get(tp, -1):
                self._queued[tp] = offset
