"""RabbitMQ (the shared 3.10 broker on 5672, a queue of its own per run): raw aio-pika, the poller,
FastStream.

Every contender gets the poller's prefetch (``2 x batch_size x maximum_concurrency``; the
poller's default concurrency is 10) and acknowledges after its handler: the raw loop collects a
batch and acks it with one ``multiple`` ack, the poller acks each batch the same way, and FastStream,
which has no batch subscriber for RabbitMQ, acks every message after its handler (AckPolicy.ACK).
Messages are transient, in a durable classic queue.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any, ClassVar, TextIO

import aio_pika
import aiormq

from bench import brokers
from bench.handlers import SENT_AT
from bench.progress import Progress
from bench.sources import SourceBench, Target, Workload

POLLER_CONCURRENCY = 10  # scaling_config.maximum_concurrency's default
FILL_IN_FLIGHT = 2000
BATCH_WAIT_SECONDS = 0.5  # the raw loop acks a partial batch after this long (the poller's window)


def prefetch(batch_size: int) -> int:
    return min(65535, 2 * batch_size * POLLER_CONCURRENCY)


class RabbitMQBench(SourceBench):
    name = "rabbitmq"
    contenders: ClassVar[tuple[str, ...]] = ("raw", "poller-inline", "faststream")
    default_records = 20_000  # the broker takes about 6,000 publishes/s here: filling dominates
    default_parallelism = 1  # queues

    def __init__(self) -> None:
        self.url = brokers.RABBITMQ_URL

    @staticmethod
    def poller_module() -> str | None:
        return "poller.sources.rabbitmq"

    async def start(self, stack: AsyncExitStack) -> None:
        connection = await aiormq.connect(self.url)
        self.version = connection.server_properties.get("version", b"?")
        await connection.close()

    def describe(self) -> str:
        version = self.version.decode() if isinstance(self.version, bytes) else str(self.version)
        return f"RabbitMQ {version} (shared, 127.0.0.1:5672)"

    async def create_empty(self, workload: Workload) -> Target:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        connection = await aiormq.connect(self.url)
        try:
            channel = await connection.channel()
            await channel.queue_declare(name, durable=True)
        finally:
            await connection.close()
        return Target(name, workload)

    async def prepare(self, workload: Workload) -> Target:
        target = await self.create_empty(workload)
        body = os.urandom(workload.size)
        connection = await aiormq.connect(self.url)
        try:
            channel = await connection.channel(publisher_confirms=False)
            # Pipelined publishes (no confirms, no per-message wait): the fill is not measured.
            for start in range(0, workload.records, FILL_IN_FLIGHT):
                count = min(FILL_IN_FLIGHT, workload.records - start)
                await asyncio.gather(
                    *(
                        channel.basic_publish(
                            body,
                            routing_key=target.name,
                            properties=aiormq.spec.Basic.Properties(message_id=f"m{start + i}"),
                        )
                        for i in range(count)
                    )
                )
            # Wait until the broker has them all: a consumer must find the backlog whole.
            for _ in range(600):
                declared = await channel.queue_declare(target.name, passive=True)
                if (declared.message_count or 0) >= workload.records:
                    break
                await asyncio.sleep(0.05)
        finally:
            await connection.close()
        return target

    async def cleanup(self, target: Target) -> None:
        connection = await aiormq.connect(self.url)
        try:
            channel = await connection.channel()
            await channel.queue_delete(target.name)
        finally:
            await connection.close()

    async def produce_paced(self, target: Target, rate: float, count: int) -> None:
        connection = await aiormq.connect(self.url)
        body = os.urandom(target.workload.size)
        try:
            channel = await connection.channel()
            loop = asyncio.get_running_loop()
            start = loop.time()
            for number in range(count):
                delay = start + number / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await channel.basic_publish(
                    body,
                    routing_key=target.name,
                    properties=aiormq.spec.Basic.Properties(
                        message_id=uuid.uuid4().hex, headers={SENT_AT: str(time.time_ns())}
                    ),
                )
        finally:
            await connection.close()

    def poller_connection(self) -> dict[str, Any]:
        return {"type": "rabbitmq", "url": self.url}

    def poller_source(self, target: Target) -> dict[str, Any]:
        return {"type": "rabbitmq", "queues": [target.name]}

    def spec(self, target: Target, contender: str) -> dict[str, Any]:
        return {
            "url": self.url,
            "queue": target.name,
            "batch_size": target.workload.batch_size,
            "prefetch": prefetch(target.workload.batch_size),
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
            raise ValueError(f"rabbitmq has no contender {contender!r}")


async def _raw(spec: dict[str, Any], progress: Progress, latency: TextIO | None, stop: asyncio.Event) -> None:
    """aio-pika consume with the poller's prefetch; every batch_size messages (or after the
    batching window) one ``ack(multiple=True)``."""
    connection = await aio_pika.connect(spec["url"])
    batch_size = spec["batch_size"]
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=spec["prefetch"])
        queue = await channel.get_queue(spec["queue"], ensure=False)
        pending: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(pending.put)  # put_nowait would do; put keeps the callback a coroutine
        while not stop.is_set():
            try:
                first = await asyncio.wait_for(pending.get(), BATCH_WAIT_SECONDS)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < batch_size and not pending.empty():
                batch.append(pending.get_nowait())
            if latency is not None:
                now = time.time_ns()
                for message in batch:
                    value = message.headers[SENT_AT]
                    sent = int(value.decode() if isinstance(value, bytes) else str(value))
                    latency.write(f"{sent} {(now - sent) / 1e9:.6f}\n")
            await batch[-1].ack(multiple=True)
            progress.add(len(batch))


async def _faststream(spec: dict[str, Any], progress: Progress, stop: asyncio.Event) -> None:
    from faststream import AckPolicy
    from faststream.rabbit import Channel, RabbitBroker, RabbitQueue

    broker = RabbitBroker(spec["url"], logger=None)

    @broker.subscriber(
        RabbitQueue(spec["queue"], durable=True, declare=False),
        channel=Channel(prefetch_count=spec["prefetch"]),
        ack_policy=AckPolicy.ACK,
    )
    async def handle(body: bytes) -> None:
        progress.add(1)

    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.stop()
