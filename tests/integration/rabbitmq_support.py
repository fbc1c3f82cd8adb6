"""RabbitMQ helpers for the integration tests: queues, publishing, reading, and ``rabbitmqctl``.

They talk to the broker the ``amqp_url`` fixture gives. ``rabbitmqctl`` reaches the local node
(``$RABBITMQ_NODENAME``, default rabbit@localhost); the tests that change broker settings or restart
the broker need it and restore what they changed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import ChannelFrame, DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from poller.sources.rabbitmq.delay_queues import RETRY_TIERS_MS, retry_queue_name

NODE = os.environ.get("RABBITMQ_NODENAME", "rabbit@localhost")
MAPPING = "m"  # the mapping name every test config uses; delay queues are named after it


@asynccontextmanager
async def channel_of(url: str, *, confirms: bool = True) -> AsyncIterator[AbstractChannel]:
    connection: AbstractConnection = await aio_pika.connect(url, timeout=10)
    try:
        yield await connection.channel(publisher_confirms=confirms)
    finally:
        await connection.close()


async def declare(url: str, *queues: str, quorum: bool = False) -> None:
    """Declare durable queues (quorum queues with ``quorum``)."""
    arguments = {"x-queue-type": "quorum"} if quorum else None
    async with channel_of(url) as channel:
        for queue in queues:
            await channel.declare_queue(queue, durable=True, arguments=arguments)


async def publish(url: str, queue: str, messages: Iterable[aio_pika.Message], *, chunk: int = 500) -> int:
    """Publish to ``queue`` through the default exchange, each confirmed; return the count."""
    count = 0
    async with channel_of(url) as channel:
        pending: list[Any] = []
        for message in messages:
            pending.append(channel.default_exchange.publish(message, routing_key=queue, mandatory=True))
            if len(pending) >= chunk:
                count += _confirmed(await asyncio.gather(*pending))
                pending = []
        count += _confirmed(await asyncio.gather(*pending))
    return count


def _confirmed(results: Sequence[Any]) -> int:
    assert all(isinstance(result, Basic.Ack) for result in results), results
    return len(results)


async def publish_raw(url: str, queue: str, messages: Iterable[tuple[bytes, Basic.Properties]]) -> None:
    """Publish with exactly these properties. aio-pika and aiormq always add a message id (aio-pika a
    delivery mode and priority too); this writes the frames itself, as a publisher that sets none."""
    async with channel_of(url, confirms=False) as aio_channel:
        channel = await aio_channel.get_underlay_channel()
        for body, properties in messages:
            frames = [
                Basic.Publish(exchange="", routing_key=queue, mandatory=True),
                ContentHeader(properties=properties, body_size=len(body)),
                ContentBody(body),
            ]
            await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames))
        # A synchronous request on the same channel is answered after the publishes were taken.
        await channel.queue_declare(queue, passive=True)


async def depth(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (not counting delivered, unacked ones)."""
    async with channel_of(url) as channel:
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def take(url: str, queue: str) -> list[DeliveredMessage]:
    """Remove and return every message ready in ``queue`` (basic.get with ack)."""
    taken: list[DeliveredMessage] = []
    async with channel_of(url) as aio_channel:
        channel = await aio_channel.get_underlay_channel()
        while True:
            message = await channel.basic_get(queue, no_ack=True)
            if not isinstance(message.delivery, Basic.GetOk):
                return taken
            taken.append(message)


async def delete(url: str, *queues: str) -> None:
    """Delete test queues and the delay queues poller declared for them."""
    names = [*queues, *(retry_queue_name(MAPPING, q, tier) for q in queues for tier in RETRY_TIERS_MS)]
    async with channel_of(url) as aio_channel:
        channel = await aio_channel.get_underlay_channel()
        for name in names:
            await channel.queue_delete(name)


async def retry_depth(url: str, queue: str) -> int:
    """Messages waiting in the delay queues of ``queue`` (mapping ``m``)."""
    total = 0
    async with channel_of(url) as aio_channel:
        channel = await aio_channel.get_underlay_channel()
        for tier in RETRY_TIERS_MS:
            declared = await channel.queue_declare(retry_queue_name(MAPPING, queue, tier), passive=True)
            total += declared.message_count or 0
    return total


def ascii_bytes(text: str) -> dict[str, list[int]]:
    """A text header value as the RabbitMQ event shows it (AWS's events write AMQP long strings so)."""
    return {"bytes": list(text.encode())}


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run ``rabbitmqctl -n $RABBITMQ_NODENAME ARGS``; fail the test if it does not succeed."""
    try:
        result = subprocess.run(
            ["rabbitmqctl", "-n", NODE, *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"rabbitmqctl {' '.join(args)}: {exc} (this test needs the local RabbitMQ node {NODE})")
    if result.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def unacked(queue: str) -> int:
    """The broker's count of deliveries of ``queue`` that consumers have not acked."""
    for line in rabbitmqctl(
        "list_queues", "name", "messages_unacknowledged", "-q", "--no-table-headers"
    ).splitlines():
        name, _, count = line.rpartition("\t")
        if name == queue:
            return int(count)
    pytest.fail(f"queue {queue} not listed by rabbitmqctl")
