"""Kinesis source (aiobotocore): shards read in order, checkpoints and leases in a lease store.

The event is Lambda's Kinesis payload (https://docs.aws.amazon.com/lambda/latest/dg/with-kinesis.html):
``Records[].kinesis`` with base64 ``data``. A Record's ``partition`` is its shard, whose checkpoint
advances in order; its ``lane`` is the shard, or with ``parallelization_factor`` N the shard and one
of N buckets of partition keys, so that up to N batches of a shard run at once, in order per key.

Which shards this process reads is decided by a
:class:`~poller.sources.kinesis.leases.coordinator.LeaseCoordinator`
over the mapping's lease store (``checkpoints``; SQLite by default, DynamoDB to share shards among
several ``poller run`` processes). A child shard is read only once its parents were read to their
end and checkpointed (SHARD_END), as Lambda and the KCL do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Collection, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, ClassVar

from poller.config import AwsConnection, Config, DynamoDBCheckpoints, Mapping, SqliteCheckpoints
from poller.config import KinesisSource as KinesisSourceConfig
from poller.connections.account import ACCOUNT_ID
from poller.connections.aws import (
    AWS_ERRORS,
    close_quietly,
    create_client,
    error_code,
    region_of,
    source_error,
)
from poller.engine.backoff import Backoff
from poller.engine.records import Record
from poller.errors import SourceError
from poller.sources.kinesis.event import KinesisEventFormat, lanes_of_shard, to_record
from poller.sources.kinesis.leases import Lease, LeaseStore, build_lease_store, lease_group
from poller.sources.kinesis.leases.balance import Shard
from poller.sources.kinesis.leases.coordinator import LeaseCoordinator
from poller.sources.kinesis.reader import ShardReader
from poller.sources.protocol import LagMetric, LaneListener
from poller.tasks import BackgroundTasks

log = logging.getLogger(__name__)

# GetRecords returns at most 10,000 records (and 10 MB); one response per shard is buffered.
_MAX_GET_RECORDS = 10_000
# The lease duration of the SQLite store, which no other process shares: it only paces renewals.
_SQLITE_LEASE_DURATION = 10.0
_POLL_WAIT = 0.5
# Waits between attempts to record that a shard was read to its end.
FINISH_RETRY_FIRST, FINISH_RETRY_MAX = 1.0, 30.0


def stream_name_of(stream: str) -> str:
    """The name in ``arn:aws:kinesis:<region>:<account>:stream/<name>``, or ``stream`` itself."""
    if stream.startswith("arn:"):
        resource = stream.split(":", 5)[-1]
        if not resource.startswith("stream/"):
            raise SourceError(f"{stream!r} is not a Kinesis stream ARN", retriable=False)
        return resource.removeprefix("stream/")
    return stream


@dataclass(eq=False)
class _Reading:
    """A shard this process reads now."""

    reader: ShardReader
    task: asyncio.Task[None] | None = None
    # The highest position the engine completed (its checkpoint may have failed to be written:
    # a later one, or SHARD_END, supersedes it).
    completed: int | None = None
    finishing: bool = False


class KinesisSource:
    """Reads a mapping's stream: the shards whose leases this process holds."""

    ordered: ClassVar[bool] = True
    lag_metric: ClassVar[LagMetric] = LagMetric(
        "poller_kinesis_iterator_age_milliseconds",
        "How far behind the shard end (MillisBehindLatest).",
        key="iteratorAgeMilliseconds",
    )

    @classmethod
    def from_config(cls, name: str, mapping: Mapping, config: Config) -> KinesisSource:
        """Built with the whole config: the lease store may use a connection of its own."""
        return cls(name, mapping, config)

    def __init__(self, name: str, mapping: Mapping, config: Config) -> None:
        assert isinstance(mapping.source, KinesisSourceConfig)
        connection = config.connection(mapping.source.connection, AwsConnection)
        self.name = name
        self.mapping = mapping
        self.source_config: KinesisSourceConfig = mapping.source
        self.connection = connection
        self.config = config
        self.checkpoints: SqliteCheckpoints | DynamoDBCheckpoints = mapping.checkpoints or SqliteCheckpoints(
            type="sqlite"
        )
        self.stream = stream_name_of(mapping.source.stream)
        self.reads = mapping.source.stream
        self.consumer_group = None
        self.region = region_of(connection)
        self.role_arn = f"arn:aws:iam::{ACCOUNT_ID}:role/{mapping.function_name}"
        self.stream_arn = f"arn:aws:kinesis:{self.region}:{ACCOUNT_ID}:stream/{self.stream}"
        # Unique per process: a restarted process must not pass for the one that held the leases.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.format = KinesisEventFormat(self.stream_arn)
        self._limit = min(_MAX_GET_RECORDS, max(1000, 2 * mapping.effective_batch_size))
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._coordinator: LeaseCoordinator | None = None
        self._listener: LaneListener | None = None
        self._reading: dict[str, _Reading] = {}
        self._shard_of_lane: dict[str, str] = {}  # the lanes of the shards read now
        self._revocations: dict[str, asyncio.Task[None]] = {}
        self._tasks: BackgroundTasks | None = None
        self._readable = asyncio.Event()

    # --- Source ----------------------------------------------------------------------------------

    async def start(self, listener: LaneListener, tasks: BackgroundTasks) -> None:
        self._listener = listener
        self._tasks = tasks
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(
                create_client(self.connection, "kinesis", wire_values=True)
            )
            await self._describe_stream()
            store = self._build_store()
            await store.open()
            stack.push_async_callback(store.close)
            self._stack = stack
            self._coordinator = self._build_coordinator(store)
            await self._coordinator.start()
        except BaseException as exc:
            self._stack = stack
            await self._shut_down()
            if isinstance(exc, AWS_ERRORS):  # creating the client (no region, ...)
                raise source_error("cannot use Kinesis", exc) from exc
            raise
        tasks.spawn(self._coordinator.renew_forever(), "renew leases")
        tasks.spawn(self._coordinator.take_forever(), "take leases")
        log.info(
            "mapping %s: consuming Kinesis stream %s as %s; reading %s",
            self.name,
            self.stream_arn,
            self.owner,
            ",".join(self._coordinator.held()) or "no shard yet",
        )

    async def poll(self) -> list[Record]:
        if not any(reading.reader.has_records for reading in self._reading.values()):
            self._readable.clear()
            try:
                async with asyncio.timeout(_POLL_WAIT):
                    await self._readable.wait()
            except TimeoutError:
                pass
        records = [record for reading in self._reading.values() for record in reading.reader.take()]
        if not records and (failure := self._failure()):
            raise SourceError(failure)
        return records

    async def commit(self, records: Sequence[Record]) -> None:
        """Checkpoint each record's shard through that record (the engine passes the last record
        the checkpoint may pass, per shard). A shard read to its end is then marked SHARD_END."""
        coordinator = self._require_coordinator()
        error: SourceError | None = None
        for record in records:
            shard_id = record.partition
            try:
                accepted = await coordinator.checkpoint(shard_id, record.payload["kinesis"]["sequenceNumber"])
            except SourceError as exc:
                error = error or exc
                accepted = True  # still ours: a later checkpoint (or the shard's end) covers it
            reading = self._reading.get(shard_id)
            if accepted and reading is not None:
                reading.completed = max(reading.completed or 0, record.position)
                self._maybe_finish(shard_id, reading)
        if error is not None:
            raise SourceError(f"Kinesis checkpoint failed: {error}")

    def pause(self, lanes: Collection[str]) -> None:
        for lane in lanes:
            reading = self._reading.get(self._shard_of_lane.get(lane, ""))
            if reading is not None:
                reading.reader.pause(lane)

    def resume(self, lanes: Collection[str]) -> None:
        for lane in lanes:
            reading = self._reading.get(self._shard_of_lane.get(lane, ""))
            if reading is not None:
                reading.reader.resume(lane)

    def lag(self) -> dict[str, int]:
        """Lagging: the iterator age of each shard read now."""
        return self.iterator_age()

    def iterator_age(self) -> dict[str, int]:
        """MillisBehindLatest of each shard read now, from its last GetRecords (AWS's IteratorAge)."""
        return {
            shard_id: int(reading.reader.millis_behind)
            for shard_id, reading in sorted(self._reading.items())
            if reading.reader.millis_behind is not None
        }

    def shards(self) -> list[str]:
        """The shards this process holds leases of now."""
        return self._coordinator.held() if self._coordinator is not None else []

    async def close(self) -> None:
        await self._shut_down()

    # --- ShardListener (called by the coordinator) -----------------------------------------------

    def acquired(self, lease: Lease) -> None:
        reader = ShardReader(
            self._client,
            stream=self.stream,
            shard_id=lease.shard_id,
            checkpoint=lease.checkpoint,
            timestamp=self.mapping.starting_position_timestamp,
            limit=self._limit,
            idle_interval=self.source_config.poll_interval_seconds,
            convert=self._convert,
            notify=self._readable.set,
            name=self.name,
        )
        reading = _Reading(reader, completed=int(lease.checkpoint) if lease.checkpoint.isdigit() else None)
        self._reading[lease.shard_id] = reading
        for lane in lanes_of_shard(lease.shard_id, self.mapping.parallelization_factor):
            self._shard_of_lane[lane] = lease.shard_id
        assert self._listener is not None
        self._listener.partitions_assigned([lease.shard_id])
        reading.task = self._require_tasks().spawn(
            self._read(lease.shard_id, reading), f"read {lease.shard_id}"
        )

    def lost(self, shard_id: str, reason: str) -> None:
        self._stop_reading(shard_id, hand_over=False)

    def handoff_requested(self, shard_id: str) -> None:
        self._stop_reading(shard_id, hand_over=True)

    # --- shards ----------------------------------------------------------------------------------

    def _convert(self, shard_id: str, raw: Sequence[dict[str, Any]]) -> list[Record]:
        factor = self.mapping.parallelization_factor
        return [
            to_record(
                item,
                shard_id=shard_id,
                stream_arn=self.stream_arn,
                region=self.region,
                role_arn=self.role_arn,
                factor=factor,
            )
            for item in raw
        ]

    async def _read(self, shard_id: str, reading: _Reading) -> None:
        # A shard given up a moment ago may be taken back at once: its old lanes must be gone
        # before records of the new tenure reach the engine.
        revocation = self._revocations.get(shard_id)
        if revocation is not None:
            await asyncio.wait([revocation])
        await reading.reader.run()
        if self._reading.get(shard_id) is reading:
            self._maybe_finish(shard_id, reading)

    def _maybe_finish(self, shard_id: str, reading: _Reading) -> None:
        """Once a shard was read to its end and everything read is checkpointed, mark it SHARD_END."""
        reader = reading.reader
        if not reader.ended or reading.finishing:
            return
        if reader.last_read is not None and (reading.completed or 0) < int(reader.last_read):
            return
        reading.finishing = True
        self._require_tasks().spawn(self._finish(shard_id, reading), f"finish {shard_id}")

    async def _finish(self, shard_id: str, reading: _Reading) -> None:
        coordinator = self._require_coordinator()
        backoff = Backoff(FINISH_RETRY_FIRST, FINISH_RETRY_MAX)
        while True:
            try:
                finished = await coordinator.finish(shard_id)
                break
            except SourceError as exc:
                delay = backoff.next()
                log.warning(
                    "mapping %s: cannot record the end of %s yet (%s); trying again in %.1f s",
                    self.name,
                    shard_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
        if self._reading.get(shard_id) is reading:
            del self._reading[shard_id]
            self._forget_lanes(shard_id)
        if finished:
            log.info("mapping %s: %s was read to its end (SHARD_END)", self.name, shard_id)
            # Its lanes are idle: let the engine close their windows, if any, and drop them.
            assert self._listener is not None
            await self._listener.partitions_ended([shard_id])

    def _stop_reading(self, shard_id: str, *, hand_over: bool) -> None:
        """Stop a shard at once (what it buffered is dropped: the next owner reads it again from
        the checkpoint), then let the engine finish and commit its in-flight batches."""
        reading = self._reading.pop(shard_id, None)
        if reading is not None and reading.task is not None:
            reading.task.cancel()
        self._forget_lanes(shard_id)
        self._revocations[shard_id] = self._require_tasks().spawn(
            self._revoke(shard_id, reading, hand_over=hand_over), f"revoke {shard_id}"
        )

    async def _revoke(self, shard_id: str, reading: _Reading | None, *, hand_over: bool) -> None:
        try:
            if reading is not None and reading.task is not None:
                await asyncio.wait([reading.task])
            assert self._listener is not None
            await self._listener.partitions_revoked([shard_id])
            if hand_over:
                await self._require_coordinator().hand_over(shard_id)
        finally:
            if self._revocations.get(shard_id) is asyncio.current_task():
                del self._revocations[shard_id]

    # --- plumbing --------------------------------------------------------------------------------

    async def _describe_stream(self) -> None:
        try:
            response = await self._client.describe_stream_summary(StreamName=self.stream)
        except AWS_ERRORS as exc:
            if error_code(exc) == "ResourceNotFoundException":
                raise SourceError(f"unknown Kinesis stream {self.stream!r}", retriable=False) from exc
            raise source_error(
                f"cannot describe Kinesis stream {self.stream!r}", exc, fatal_codes=frozenset()
            ) from exc
        summary = response["StreamDescriptionSummary"]
        self.stream_arn = self.format.stream_arn = summary["StreamARN"]
        if summary["StreamStatus"] not in ("ACTIVE", "UPDATING"):
            raise SourceError(f"Kinesis stream {self.stream!r} is {summary['StreamStatus']}")

    async def _list_shards(self) -> list[Shard]:
        shards: list[Shard] = []
        request: dict[str, Any] = {"StreamName": self.stream}
        while True:
            try:
                response = await self._client.list_shards(**request)
            except AWS_ERRORS as exc:
                raise source_error(f"cannot list the shards of {self.stream!r}", exc) from exc
            for shard in response.get("Shards", []):
                parents = (shard.get("ParentShardId"), shard.get("AdjacentParentShardId"))
                shards.append(
                    Shard(
                        shard["ShardId"],
                        tuple(parent for parent in parents if parent),
                        closed="EndingSequenceNumber" in shard.get("SequenceNumberRange", {}),
                    )
                )
            token = response.get("NextToken")
            if not token:
                return shards
            request = {"NextToken": token}  # ListShards takes the token without the stream name

    def _lease_timing(self) -> tuple[float, int]:
        """Lease duration and leases to steal a round; only a shared (DynamoDB) store has settings."""
        if isinstance(self.checkpoints, DynamoDBCheckpoints):
            return self.checkpoints.lease_duration_seconds, self.checkpoints.max_leases_to_steal_at_one_time
        return _SQLITE_LEASE_DURATION, 1

    def _build_store(self) -> LeaseStore:
        group = lease_group(self.name, self.stream)
        duration, _ = self._lease_timing()
        return build_lease_store(self.checkpoints, group, self.config, lease_duration=duration)

    def _build_coordinator(self, store: LeaseStore) -> LeaseCoordinator:
        duration, max_steal = self._lease_timing()
        return LeaseCoordinator(
            store,
            name=self.name,
            owner=self.owner,
            lease_duration=duration,
            max_steal=max_steal,
            starting_position=self.mapping.starting_position,
            list_shards=self._list_shards,
            listener=self,
        )

    def _failure(self) -> str | None:
        """Why the source as a whole is not working, if it is not: the lease store or the listing
        fails, or every shard read fails. One failing shard is logged, not reported, so that it
        does not slow the polling of the others."""
        if self._coordinator is not None and self._coordinator.failure:
            return self._coordinator.failure
        failures = [reading.reader.failure for reading in self._reading.values()]
        if failures and all(failures):
            return failures[0]
        return None

    def _forget_lanes(self, shard_id: str) -> None:
        for lane in lanes_of_shard(shard_id, self.mapping.parallelization_factor):
            self._shard_of_lane.pop(lane, None)

    def _require_tasks(self) -> BackgroundTasks:
        if self._tasks is None:
            raise SourceError("Kinesis source used before start()")
        return self._tasks

    async def _shut_down(self) -> None:
        """Stop reading and give the leases up. The shard readers are cancelled here, before the
        leases go; the owner of the source's tasks cancels what else is left."""
        if self._tasks is not None:
            await self._tasks.close()
        self._reading.clear()
        self._shard_of_lane.clear()
        self._revocations.clear()
        if self._coordinator is not None:
            await self._coordinator.free_all()
        stack, self._stack = self._stack, None
        await close_quietly(stack, "the Kinesis clients")
        self._client = None
        self._coordinator = None

    def _require_coordinator(self) -> LeaseCoordinator:
        if self._coordinator is None:
            raise SourceError("Kinesis source used before start()")
        return self._coordinator
