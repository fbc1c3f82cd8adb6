"""Kafka source (aiokafka): a consumer group, one lane per partition, manual commits.

The event is the self-managed Kafka payload of AWS
(https://docs.aws.amazon.com/lambda/latest/dg/with-kafka.html): records keyed ``topic-partition``,
base64 key and value, headers as lists of Java signed bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Hashable, Sequence
from typing import Any, ClassVar

import pybase64
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from poller.config import KafkaConnection, Mapping
from poller.config import KafkaSource as KafkaSourceConfig
from poller.engine.records import Record, json_copy
from poller.errors import SourceError
from poller.sources.protocol import LaneListener

log = logging.getLogger(__name__)

POLL_TIMEOUT = 2.0
FETCH_WAIT_MS = 500  # how long a poll waits for records (the Source contract: about half a second)
PAUSED_FETCH_WAIT_MS = 20  # ... while some lanes are paused (see poll)
PREFETCH_BACKOFF = 0.005  # seconds; see _shorten_prefetch_backoff
CLOSE_TIMEOUT = 10.0  # leaving the group; a broker that is gone would make it wait forever
HEALTH_PROBE_INTERVAL = 10.0  # seconds without records before asking the broker for metadata
HEALTH_PROBE_TIMEOUT = 5.0
# Backoff of the committer after a failed commit request, in seconds.
COMMIT_RETRY_FIRST, COMMIT_RETRY_MAX = 1.0, 30.0

# What one record adds to the event's JSON besides its key, value and headers.
_RECORD_OVERHEAD = 160


def client_options(connection: KafkaConnection) -> dict[str, Any]:
    """aiokafka keyword arguments shared by consumers and producers of one connection."""
    options: dict[str, Any] = {
        "bootstrap_servers": connection.bootstrap_servers,
        "client_id": connection.client_id,
        "security_protocol": connection.security_protocol,
    }
    if connection.sasl_mechanism:
        options.update(
            sasl_mechanism=connection.sasl_mechanism,
            sasl_plain_username=connection.sasl_username,
            sasl_plain_password=connection.sasl_password,
        )
    if connection.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(cafile=connection.ssl_cafile)
    return options


def lane_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def _topic_partition(lane: str) -> TopicPartition:
    # Topic names may contain '-': the partition follows the last one.
    topic, _, partition = lane.rpartition("-")
    return TopicPartition(topic, int(partition))


def signed_bytes(value: bytes | None) -> list[int]:
    """Header bytes as AWS sends them: Java signed bytes (-128..127)."""
    return memoryview(value).cast("b").tolist() if value else []


def to_records(messages: Sequence[Any], lane: str) -> list[Record]:
    """aiokafka ConsumerRecords of one partition (its ``lane_name``) as Records whose payloads are
    the AWS event records.

    This runs once per record read, the poller's hottest loop (docs/benchmarks.md), so it is one
    plain loop with its callables in locals rather than a function call per record, and headers,
    which most records lack, are only looked at when present."""
    encode, make = pybase64.b64encode_as_string, Record
    records: list[Record] = []
    append = records.append
    for message in messages:
        value, key, offset, timestamp = message.value, message.key, message.offset, message.timestamp
        encoded = encode(value) if value is not None else ""
        size = _RECORD_OVERHEAD + len(encoded)
        headers: list[dict[str, list[int]]] = []
        if message.headers:
            for name, data in message.headers:
                headers.append({name: signed_bytes(data)})
                size += 4 * (len(data or b"") + len(name))
        payload: dict[str, Any] = {
            "topic": message.topic,
            "partition": message.partition,
            "offset": offset,
            "timestamp": timestamp,
            "timestampType": "LOG_APPEND_TIME" if message.timestamp_type == 1 else "CREATE_TIME",
            "value": encoded,
            "headers": headers,
        }
        if key is not None:
            payload["key"] = encoded_key = encode(key)
            size += len(encoded_key)
        # Positional, in field order: partition, lane, position, item_key, payload, size, timestamp.
        append(make(lane, lane, offset, (lane, offset), payload, size, timestamp / 1000))
    return records


class KafkaEventFormat:
    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers

    def event(self, records: Sequence[Record]) -> dict[str, Any]:
        by_partition: dict[str, list[dict[str, Any]]] = {}
        partition, entries = None, []
        for record in records:
            if record.partition != partition:  # a batch is usually of one partition
                partition = record.partition
                entries = by_partition.setdefault(partition, [])
            # New containers, so that the handler owns its event; only headers nest deeper. And
            # dict.copy, which clones the table: several times faster than {**payload, ...}.
            entry = record.payload.copy()
            headers = entry["headers"]
            entry["headers"] = json_copy(headers) if headers else []
            entries.append(entry)
        return {
            "eventSource": "SelfManagedKafka",
            "bootstrapServers": self.bootstrap_servers,
            "records": by_partition,
        }

    def describe(self, records: Sequence[Record]) -> dict[str, Any]:
        first, last = records[0].payload, records[-1].payload
        return {
            "type": "kafka",
            "topic": first["topic"],
            "partition": first["partition"],
            "startOffset": first["offset"],
            "endOffset": last["offset"],
            "batchSize": len(records),
        }

    def item_key(self, identifier: object) -> Hashable | None:
        # {"partition": "<topic>-<partition>", "offset": <int>}
        if not isinstance(identifier, dict):
            return None
        partition, offset = identifier.get("partition"), identifier.get("offset")
        if not isinstance(partition, str) or isinstance(offset, bool):
            return None
        if isinstance(offset, str) and offset.isdigit():
            offset = int(offset)
        return (partition, offset) if isinstance(offset, int) else None


class KafkaSource:
    """Consumes a mapping's topics in the mapping's consumer group."""

    ordered: ClassVar[bool] = True

    def __init__(self, name: str, mapping: Mapping, connection: Any) -> None:
        assert isinstance(connection, KafkaConnection)
        assert isinstance(mapping.source, KafkaSourceConfig)
        self.name = name
        self.mapping = mapping
        self.config: KafkaSourceConfig = mapping.source
        self.connection: KafkaConnection = connection
        self.group_id = self.config.consumer_group_id or name
        self.format = KafkaEventFormat(connection.bootstrap_servers)
        self._consumer: AIOKafkaConsumer | None = None
        self._committed: dict[TopicPartition, int] = {}
        self._last_contact = time.monotonic()
        self._resumed = asyncio.Event()
        self._to_commit: dict[TopicPartition, int] = {}  # offsets of finished lanes, not yet sent
        self._commit_lock = asyncio.Lock()  # one commit request at a time
        self._commit_wanted = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None

    async def start(self, listener: LaneListener) -> None:
        options = client_options(self.connection)
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
        )
        try:
            await consumer.start()
        except KafkaError as exc:
            await _stop_quietly(consumer)
            raise SourceError(
                f"cannot connect to Kafka at {self.connection.bootstrap_servers}: {exc}"
            ) from exc
        try:
            existing = await consumer.topics()
        except KafkaError as exc:
            await _stop_quietly(consumer)
            raise SourceError(f"cannot list Kafka topics: {exc}") from exc
        missing = sorted(set(self.config.topics) - existing)
        if missing:
            await _stop_quietly(consumer)
            raise SourceError(f"unknown Kafka topic(s): {', '.join(missing)}", retriable=False)
        _shorten_prefetch_backoff(consumer)
        consumer.subscribe(self.config.topics, listener=_Rebalance(self, consumer, listener))
        self._consumer = consumer
        self._committer = asyncio.create_task(self._commit_continuously(), name=f"{self.name}:commits")
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
            raise SourceError(
                f"Kafka fetch failed: {exc}", retriable=getattr(exc, "retriable", True)
            ) from exc
        if batches:
            self._last_contact = time.monotonic()
        elif time.monotonic() - self._last_contact > HEALTH_PROBE_INTERVAL:
            await self._probe_broker(consumer)
        records: list[Record] = []
        for tp, messages in batches.items():
            records += to_records(messages, lane_name(tp.topic, tp.partition))
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
        meanwhile, and return without waiting for the broker.

        A commit costs aiokafka a round trip and about 200 µs of CPU; waiting for one after every
        batch made small batches commit-bound (docs/benchmarks.md). At least once still holds:
        offsets are queued only once their records completed, one request is in flight at a
        time and the next carries everything finished meanwhile, and both a revocation and
        close() flush the queue before the partitions are given up. A crash repeats what
        completed since the last successful request: at most a round trip's worth of batches
        more than those in flight."""
        offsets: dict[TopicPartition, int] = {}
        for record in records:
            tp = _topic_partition(record.partition)
            offsets[tp] = max(offsets.get(tp, 0), record.position + 1)
        self._add_to_commit(offsets)
        self._commit_wanted.set()

    async def flush_commits(self) -> None:
        """Send every queued offset of an assigned partition; return once a request carrying them
        succeeded, or the group moved on (the partitions' new owner reads from the last commit).
        Raises SourceError if the broker failed the request; the offsets stay queued."""
        async with self._commit_lock:
            consumer = self._require_consumer()
            assigned = consumer.assignment()
            request = {tp: offset for tp, offset in self._to_commit.items() if tp in assigned}
            if len(request) < len(self._to_commit):
                log.warning(
                    "mapping %s: offsets of partitions no longer assigned not committed: %s",
                    self.name,
                    {tp: offset for tp, offset in self._to_commit.items() if tp not in assigned},
                )
            self._to_commit = {}
            if not request:
                return
            try:
                await consumer.commit(request)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on: these partitions belong to another member now, which re-reads
                # from the last commit. At least once, so this loses nothing.
                log.warning("mapping %s: commit of %s refused after a rebalance: %s", self.name, request, exc)
                return
            except BaseException as exc:
                self._add_to_commit(request)  # also when cancelled: close() flushes them
                if isinstance(exc, KafkaError):
                    raise SourceError(f"Kafka commit failed: {exc}") from exc
                raise
            self._committed.update(request)

    async def _commit_continuously(self) -> None:
        """The committer task: flush whenever offsets were queued; after a failure, try again with
        backoff (the offsets stay queued, and later ones join them). It never ends by itself: a
        committer that died would leave every later offset uncommitted until close()."""
        delay = COMMIT_RETRY_FIRST
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            try:
                await self.flush_commits()
            except Exception as exc:  # logged, and the offsets are sent again
                log.warning("mapping %s: %s; committing again in %.0f s", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(COMMIT_RETRY_MAX, delay * 2)
                self._commit_wanted.set()
            else:
                delay = COMMIT_RETRY_FIRST

    def _add_to_commit(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if offset > self._to_commit.get(tp, -1):
                self._to_commit[tp] = offset

    def pause(self, lanes: Collection[str]) -> None:
        consumer = self._require_consumer()
        assigned = consumer.assignment()
        consumer.pause(*[tp for tp in map(_topic_partition, lanes) if tp in assigned])

    def resume(self, lanes: Collection[str]) -> None:
        consumer = self._require_consumer()
        assigned = consumer.assignment()
        consumer.resume(*[tp for tp in map(_topic_partition, lanes) if tp in assigned])
        self._resumed.set()

    def lag(self) -> dict[str, int]:
        """Records between this member's last commit and each assigned partition's high watermark
        as of the last fetch (AWS's OffsetLag). Partitions not yet fetched and committed are left out."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags: dict[str, int] = {}
        for tp in consumer.assignment():
            highwater, committed = consumer.highwater(tp), self._committed.get(tp)
            if highwater is not None and committed is not None:
                lags[lane_name(tp.topic, tp.partition)] = max(0, highwater - committed)
        return lags

    async def close(self) -> None:
        if self._committer is not None:
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
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

    def _require_consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise SourceError("Kafka source used before start()")
        return self._consumer

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
            await self.listener.partitions_revoked([lane_name(tp.topic, tp.partition) for tp in revoked])
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
            ",".join(sorted(lane_name(tp.topic, tp.partition) for tp in assigned)) or "nothing",
        )
        await self.source.seek_start(self.consumer, assigned)


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
