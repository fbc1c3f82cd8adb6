"""Kafka source (aiokafka): a consumer group, one lane per partition, manual commits.

The event is AWS's self-managed Kafka payload (:mod:`poller.sources.kafka.event`); completed
offsets are committed in the background (:mod:`poller.sources.kafka.commits`). A revoked
partition's in-flight batches finish and commit before the partition is given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from poller.config import KafkaConnection, Mapping
from poller.config import KafkaSource as KafkaSourceConfig
from poller.connections.kafka import client_options, source_error, start_client
from poller.engine.records import Record
from poller.errors import SourceError
from poller.sources.kafka.commits import OffsetCommitter
from poller.sources.kafka.event import KafkaEventFormat, lane_name, to_records
from poller.sources.kafka.fetched import install, raw_records
from poller.sources.protocol import LagMetric, LaneListener
from poller.tasks import BackgroundTasks

log = logging.getLogger(__name__)

POLL_TIMEOUT = 2.0
FETCH_WAIT_MS = 500  # how long a poll waits for records (the Source contract: about half a second)
PAUSED_FETCH_WAIT_MS = 20  # ... while some lanes are paused (see poll)
PREFETCH_BACKOFF = 0.005  # seconds; see _shorten_prefetch_backoff
CLOSE_TIMEOUT = 10.0  # leaving the group; a broker that is gone would make it wait forever
HEALTH_PROBE_INTERVAL = 10.0  # seconds without records before asking the broker for metadata
HEALTH_PROBE_TIMEOUT = 5.0


class KafkaSource:
    """Consumes a mapping's topics in the mapping's consumer group."""

    ordered: ClassVar[bool] = True
    lag_metric: ClassVar[LagMetric] = LagMetric(
        "poller_kafka_offset_lag_records", "Records between the committed offset and the partition end."
    )

    def __init__(self, name: str, mapping: Mapping, connection: Any) -> None:
        assert isinstance(connection, KafkaConnection)
        assert isinstance(mapping.source, KafkaSourceConfig)
        self.name = name
        self.mapping = mapping
        self.config: KafkaSourceConfig = mapping.source
        self.connection: KafkaConnection = connection
        self.group_id = self.config.consumer_group_id or name
        self.reads = ",".join(self.config.topics)
        self.consumer_group: str | None = self.group_id
        self.format = KafkaEventFormat(connection.bootstrap_servers)
        self._consumer: AIOKafkaConsumer | None = None
        self._committer: OffsetCommitter | None = None
        self._committing: asyncio.Task[None] | None = None
        self._last_contact = time.monotonic()
        self._resumed = asyncio.Event()
        # Lane names (``topic-partition``) and the partitions they name, both ways: made once per
        # partition, never parsed back from the name (topic names may contain '-').
        self._lanes: dict[TopicPartition, str] = {}
        self._partitions: dict[str, TopicPartition] = {}

    async def start(self, listener: LaneListener, tasks: BackgroundTasks) -> None:
        options = client_options(self.connection)
        install()  # once per process; see fetched.py
        consumer = AIOKafkaConsumer(
            **options,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="latest" if self.mapping.starting_position == "LATEST" else "earliest",
            session_timeout_ms=self.config.session_timeout_ms,
            heartbeat_interval_ms=self.config.heartbeat_interval_ms,
            rebalance_timeout_ms=self.config.rebalance_timeout_ms,
            max_poll_interval_ms=self.config.max_poll_interval_ms,
            isolation_level="read_committed",
            key_deserializer=raw_records,  # the parsed records, not ConsumerRecords (fetched.py)
        )
        try:
            await start_client(consumer, self.connection, options)
        except BaseException:
            await _stop_quietly(consumer)
            raise
        try:
            existing = await consumer.topics()
        except KafkaError as exc:
            await _stop_quietly(consumer)
            raise source_error("cannot list Kafka topics", exc) from exc
        missing = sorted(set(self.config.topics) - existing)
        if missing:
            await _stop_quietly(consumer)
            raise SourceError(f"unknown Kafka topic(s): {', '.join(missing)}", retriable=False)
        _shorten_prefetch_backoff(consumer)
        consumer.subscribe(self.config.topics, listener=_Rebalance(self, consumer, listener))
        self._consumer = consumer
        self._committer = OffsetCommitter(consumer, self.name)
        self._committing = tasks.spawn(self._committer.run(), "kafka commits")
        log.info(
            "mapping %s: consuming %s as group %s", self.name, ",".join(self.config.topics), self.group_id
        )

    async def poll(self) -> list[Record]:
        consumer = self._require_consumer()
        # Ask only for the partitions whose lanes take records: getmany() without partitions
        # would drop what aiokafka prefetched for the paused ones, to be fetched again after
        # resume() (that refetching halved the throughput of a backlog). And take everything
        # aiokafka fetched for them: a partly consumed fetch holds back the next fetch of every
        # partition of its broker for up to 100 ms (aiokafka's prefetch backoff). Memory stays
        # bounded: the engine pauses a lane once it holds its high water, so a lane holds at most
        # that plus one fetch response (max_partition_fetch_bytes, 1 MiB by default).
        assigned = consumer.assignment()
        paused = consumer.paused()
        fetchable = assigned - paused
        if assigned and not fetchable:
            self._resumed.clear()  # every lane is full: wait for one to make room
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resumed.wait(), 0.5)
            return []
        try:
            # getmany waits for a rebalance to finish, which never happens while the broker is
            # gone: bound it so that the health probe below still runs and stop() is heard.
            # While some lanes are paused, wait only briefly: a lane resumed meanwhile is fetched
            # by the next call, and a long wait on partitions that ran dry would starve it (seen
            # as runs at a third of the rate with the CPU idle, docs/benchmarks.md).
            wait_ms = PAUSED_FETCH_WAIT_MS if paused else FETCH_WAIT_MS
            batches = await asyncio.wait_for(consumer.getmany(*fetchable, timeout_ms=wait_ms), POLL_TIMEOUT)
        except TimeoutError:
            batches = {}
        except KafkaError as exc:
            raise source_error("Kafka fetch failed", exc) from exc
        if batches:
            self._last_contact = time.monotonic()
        elif time.monotonic() - self._last_contact > HEALTH_PROBE_INTERVAL:
            await self._probe_broker(consumer)
        records: list[Record] = []
        for tp, messages in batches.items():
            records += to_records(messages, self._lane_name(tp), tp.topic, tp.partition)
        return records

    async def _probe_broker(self, consumer: AIOKafkaConsumer) -> None:
        # aiokafka reconnects by itself and an idle fetch looks the same whether the broker is up
        # or gone; a metadata request tells them apart, so /readyz can say so.
        try:
            await asyncio.wait_for(consumer.topics(), HEALTH_PROBE_TIMEOUT)
        except (KafkaError, TimeoutError) as exc:
            raise SourceError(
                f"Kafka broker unreachable at {self.connection.bootstrap_servers}: {exc!r}"
            ) from exc
        self._last_contact = time.monotonic()

    async def commit(self, records: Sequence[Record]) -> None:
        """Queue these offsets for the committer task, which sends them with whatever else finished
        meanwhile, and return without waiting for the broker (:mod:`poller.sources.kafka.commits`)."""
        offsets: dict[TopicPartition, int] = {}
        partitions = self._partitions
        for record in records:
            tp = partitions[record.partition]
            offsets[tp] = max(offsets.get(tp, 0), record.position + 1)
        self._require_committer().add(offsets)

    async def flush_commits(self) -> None:
        """Commit what is queued now (a revocation, the close); raises SourceError."""
        await self._require_committer().flush()

    def pause(self, lanes: Collection[str]) -> None:
        consumer = self._require_consumer()
        assigned = consumer.assignment()
        consumer.pause(*[tp for tp in map(self._partitions.__getitem__, lanes) if tp in assigned])

    def resume(self, lanes: Collection[str]) -> None:
        consumer = self._require_consumer()
        assigned = consumer.assignment()
        consumer.resume(*[tp for tp in map(self._partitions.__getitem__, lanes) if tp in assigned])
        self._resumed.set()

    def lag(self) -> dict[str, int]:
        """Records between this member's last commit and each assigned partition's high watermark
        as of the last fetch (AWS's OffsetLag). Partitions not yet fetched and committed are left out."""
        consumer, committer = self._consumer, self._committer
        if consumer is None or committer is None:
            return {}
        lags: dict[str, int] = {}
        for tp in consumer.assignment():
            highwater, committed = consumer.highwater(tp), committer.committed.get(tp)
            if highwater is not None and committed is not None:
                lags[self._lane_name(tp)] = max(0, highwater - committed)
        return lags

    async def close(self) -> None:
        committing, self._committing = self._committing, None
        if committing is not None:
            committing.cancel()
            await asyncio.wait([committing])
        if self._consumer is not None:
            try:
                # What finished before the drain ended is committed before the group is left.
                await asyncio.wait_for(self.flush_commits(), CLOSE_TIMEOUT)
            except (SourceError, TimeoutError) as exc:
                log.warning(
                    "mapping %s: last offsets not committed (%s); they are read again", self.name, exc
                )
            await _stop_quietly(self._consumer)
            self._consumer = None

    def _lane_name(self, tp: TopicPartition) -> str:
        name = self._lanes.get(tp)
        if name is None:
            name = self._lanes[tp] = lane_name(tp.topic, tp.partition)
            self._partitions[name] = tp
        return name

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise SourceError("Kafka source used before start()")
        return self._consumer

    def _require_committer(self) -> OffsetCommitter:
        if self._committer is None:
            raise SourceError("Kafka source used before start()")
        return self._committer

    async def seek_start(self, consumer: AIOKafkaConsumer, assigned: Collection[TopicPartition]) -> None:
        """Place partitions that have no committed offset at the mapping's AT_TIMESTAMP position
        (TRIM_HORIZON and LATEST are the consumer's offset reset policy)."""
        timestamp = self.mapping.starting_position_timestamp
        if timestamp is None:
            return
        fresh = [tp for tp in assigned if await consumer.committed(tp) is None]
        if not fresh:
            return
        found = await consumer.offsets_for_times({tp: int(timestamp.timestamp() * 1000) for tp in fresh})
        for tp in fresh:
            offset = found.get(tp)
            if offset is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, offset.offset)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource, consumer: AIOKafkaConsumer, listener: LaneListener) -> None:
        self.source = source
        self.consumer = consumer
        self.listener = listener

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        # Finish and commit the revoked partitions' in-flight batches before giving them up
        # (the contract in aiokafka's ConsumerRebalanceListener docstring).
        if revoked:
            await self.listener.partitions_revoked([self.source._lane_name(tp) for tp in revoked])
            try:
                await self.source.flush_commits()
            except SourceError as exc:
                log.warning(
                    "mapping %s: %s; the partitions' next owner reads them again", self.source.name, exc
                )

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        log.info(
            "mapping %s: assigned %s",
            self.source.name,
            ",".join(sorted(self.source._lane_name(tp) for tp in assigned)) or "nothing",
        )
        await self.source.seek_start(self.consumer, assigned)
        self.listener.partitions_assigned([self.source._lane_name(tp) for tp in assigned])


def _shorten_prefetch_backoff(consumer: AIOKafkaConsumer) -> None:
    """aiokafka sends no fetch to a broker while any of its partitions holds fetched records younger
    than the fetcher's ``prefetch_backoff`` (100 ms, not a consumer option). A paused lane's
    partition holds such records whenever a fetch was on the way as it paused, so every pause held
    up the other partitions' fetches; with the backoff at 5 ms a backlog is read about a third
    faster (docs/benchmarks.md). The attribute is private: if a release renames it, nothing
    breaks, the consumer just keeps aiokafka's default."""
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is not None and isinstance(getattr(fetcher, "_prefetch_backoff", None), float):
        fetcher._prefetch_backoff = PREFETCH_BACKOFF


async def _stop_quietly(consumer: AIOKafkaConsumer) -> None:
    try:
        await asyncio.wait_for(consumer.stop(), CLOSE_TIMEOUT)
    except Exception as exc:
        log.debug("error while stopping a Kafka consumer: %s", exc)
