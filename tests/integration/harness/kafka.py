"""The Kafka harness: a topic of the tansu stand-in (or ``KAFKA_BOOTSTRAP``), failures to a Kafka topic.

The destination producer has a connection of its own. While the destination is down that
connection's bootstrap address is a :class:`Gate` that refuses connections; repairing it makes the
gate forward to the broker (whose metadata then sends the producer to the broker itself).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from support import (
    KAFKA_TEST_GROUP_SETTINGS,
    committed_offsets,
    consume_all,
    create_topic,
    produce,
    unique_name,
)

from .base import BrokerHarness, Sent

# Every record carries a key and these headers: a producer's trace context and bytes that are not text.
HEADERS = [
    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("bin", b"\xff\x00\x80"),
]


class Gate:
    """A loopback port that refuses connections until :meth:`open`, then forwards them to ``target``.

    The socket is bound but not listening, so connecting fails at once, as to a broker that is down.
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.split(",")[0].strip().rpartition(":")
        self._target = (host.strip("[]") or "127.0.0.1", int(port))
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[Any]] = set()  # the server's tasks, awaited by close()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._forward, sock=self._socket)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        ends = [writer]
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            ends.append(upstream_writer)
            self._writers.add(upstream_writer)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            for end in ends:
                self._writers.discard(end)
                end.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self._socket.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def signed(data: bytes) -> list[int]:
    """Header bytes as the Kafka event writes them (Java's signed bytes)."""
    return [b - 256 if b > 127 else b for b in data]


class KafkaHarness(BrokerHarness):
    kind = "kafka"
    ordered = True

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._gate: Gate | None = None
        self._keys: dict[tuple[str, int], str] = {}  # (lane, offset) -> key
        self._read = 0  # failure records dead_letters returned so far

    async def create(self, lanes: int = 1, *, destination_up: bool = True) -> None:
        self.lanes = lanes
        self.resource, self.dlq = unique_name("guarantee"), unique_name("guarantee-dlq")
        self.group = unique_name("group")
        await create_topic(self.bootstrap, self.resource, lanes)
        await create_topic(self.bootstrap, self.dlq, 1)
        if not destination_up:
            self._gate = Gate(self.bootstrap)

    async def repair_destination(self) -> None:
        assert self._gate is not None
        await self._gate.open()

    async def close(self) -> None:
        if self._gate is not None:
            await self._gate.close()

    def connections(self) -> dict[str, Any]:
        return {
            "kafka": {"type": "kafka", "bootstrap_servers": self.bootstrap},
            "dlq": {
                "type": "kafka",
                "bootstrap_servers": self._gate.address if self._gate else self.bootstrap,
            },
        }

    def source(self) -> dict[str, Any]:
        return {
            "type": "kafka",
            "connection": "kafka",
            "topics": [self.resource],
            "consumer_group_id": self.group,
            **KAFKA_TEST_GROUP_SETTINGS,
        }

    def destination(self) -> dict[str, Any]:
        return {"type": "kafka", "connection": "dlq", "topic": self.dlq}

    async def produce(self, bodies: list[str]) -> list[Sent]:
        records = [(i % self.lanes, f"key-{i}", body, HEADERS) for i, body in enumerate(bodies)]
        positions = await produce(self.bootstrap, self.resource, records)
        sent = []
        for (partition, offset), (_, key, body, _) in zip(positions, records, strict=True):
            lane = f"{self.resource}-{partition}"
            self._keys[lane, offset] = key
            sent.append(Sent(lane, offset, body))
        return sent

    async def unsettled(self) -> int:
        committed = await committed_offsets(self.bootstrap, self.group, self.resource, self.lanes)
        return sum(
            1 for lane, offset in self._keys if offset >= (committed[int(lane.rsplit("-", 1)[1])] or 0)
        )

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        length = await self._dlq_length()
        if not count and length == self._read:
            return []
        wanted = max(self._read + count, length)
        messages = (await consume_all(self.bootstrap, self.dlq, wanted, timeout=60))[self._read :]
        self._read += len(messages)
        failures = []
        for message in messages:
            failure = json.loads(message.value)
            [record] = failure["records"]  # a Kafka destination sends one message per record
            lane = f"{record['topic']}-{record['partition']}"
            # The original key and headers, and where the record came from and why it failed.
            assert message.key == self._keys[lane, record["offset"]].encode()
            assert [(k, v) for k, v in message.headers if not k.startswith("x-poller-")] == HEADERS
            extra = {k: v for k, v in message.headers if k.startswith("x-poller-")}
            assert extra["x-poller-topic"] == record["topic"].encode()
            assert extra["x-poller-partition"] == str(record["partition"]).encode()
            assert extra["x-poller-offset"] == str(record["offset"]).encode()
            assert extra["x-poller-condition"] == failure["requestContext"]["condition"].encode()
            assert extra["x-poller-error-type"] == failure["errorInfo"]["errorType"].encode()
            assert extra["x-poller-trace-id"] == failure["traceId"].encode()
            failures.append(failure)
        return failures

    async def _dlq_length(self) -> int:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partition = TopicPartition(self.dlq, 0)
            return int((await consumer.end_offsets([partition]))[partition])
        finally:
            await consumer.stop()

    def check_source_info(self, info: dict[str, Any], sent: Sent) -> None:
        assert info == {
            "type": "kafka",
            "topic": self.resource,
            "partition": int(sent.lane.rsplit("-", 1)[1]),
            "startOffset": sent.position,
            "endOffset": sent.position,
            "batchSize": 1,
        }

    def check_record(self, record: dict[str, Any], sent: Sent) -> None:
        assert f"{record['topic']}-{record['partition']}" == sent.lane
        assert record["offset"] == sent.position
        assert record["timestampType"] == "CREATE_TIME"
        assert base64.b64decode(record["key"]) == self._keys[sent.lane, record["offset"]].encode()
        assert base64.b64decode(record["value"]) == sent.body.encode()
        assert record["headers"] == [{name: signed(value)} for name, value in HEADERS]
