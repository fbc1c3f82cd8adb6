"""The real process against RabbitMQ: `poller run` killed with -9 mid-batch, stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from rabbitmq_support import declare, delete, depth, publish, unacked
from support import (
    kill_9_mid_batch,
    poller_log,
    recorded_lines,
    sigterm_once,
    start_poller,
    started_batches,
    unique_name,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
async def queue(amqp_url: str) -> AsyncIterator[str]:
    name = unique_name("rmq-process")
    await declare(amqp_url, name)
    yield name
    await delete(amqp_url, name)


def write_config(path: Path, url: str, queue: str, batch_size: int) -> Path:
    config = {
        "connections": {"rabbit": {"type": "rabbitmq", "url": url}},
        "functions": {"fn": {"handler": "rmq_handlers:to_file", "timeout": 30}},
        "mappings": {
            "m": {
                "function_name": "fn",
                "source": {"type": "rabbitmq", "connection": "rabbit", "queues": [queue]},
                "batch_size": batch_size,
                "maximum_batching_window_in_seconds": 0.2,
                "scaling_config": {"maximum_concurrency": 2},
            }
        },
        "admin": {"port": 0},
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def handled(record_file: Path) -> list[str]:
    return recorded_lines(record_file)


async def test_kill_9_mid_batch_then_restart_loses_nothing(amqp_url: str, queue: str, tmp_path: Path) -> None:
    everything = {f"m-{i}" for i in range(600)}
    await publish(amqp_url, queue, (aio_pika.Message(body.encode()) for body in sorted(everything)))
    config = write_config(tmp_path / "poller.yaml", amqp_url, queue, batch_size=50)
    record_file = tmp_path / "handled.txt"
    first = start_poller(config, record_file, 0.2)
    # Kill while batches are inside the handler: more batches started than finished.
    code = await kill_9_mid_batch(
        first,
        record_file,
        lambda: len(handled(record_file)),
        batch_size=50,
        after=150,
        message="first messages handled",
    )
    assert code == -signal.SIGKILL
    assert len(set(handled(record_file))) < 600
    second = start_poller(config, record_file, 0.0)
    try:
        await wait_for(
            lambda: set(handled(record_file)) >= everything, timeout=60, message="all messages handled"
        )

        async def drained() -> bool:
            # Nothing ready and nothing delivered unacked: the redelivered copies are done too.
            return await depth(amqp_url, queue) == 0 and unacked(queue) == 0

        await wait_for(drained, timeout=30, interval=0.5, message="the queue drained")
    finally:
        second.send_signal(signal.SIGTERM)
        assert await wait_exit(second, 30) == 0, poller_log(config)
    assert set(handled(record_file)) == everything, "no message lost"
    # Acked before the SIGTERM, or returned to the queue by the broker when the connection closed.
    assert await depth(amqp_url, queue) == 0
    # Duplicates only from what the killed process held: the prefetch of 2 x 50 x 2.
    assert len(handled(record_file)) - 600 <= 200


async def test_sigterm_mid_batch_finishes_it_acks_and_exits_0(
    amqp_url: str, queue: str, tmp_path: Path
) -> None:
    await publish(amqp_url, queue, (aio_pika.Message(f"m-{i}".encode()) for i in range(10)))
    config = write_config(tmp_path / "poller.yaml", amqp_url, queue, batch_size=10)
    record_file = tmp_path / "handled.txt"
    process = start_poller(config, record_file, 3.0)
    code = await sigterm_once(
        process, lambda: started_batches(record_file) == 1, within=30, message="the slow batch started"
    )
    log = poller_log(config)
    assert code == 0, log
    assert sorted(handled(record_file)) == sorted(f"m-{i}" for i in range(10)), "the in-flight batch finished"
    assert await depth(amqp_url, queue) == 0, "and was acked before the connection closed"
    assert "draining" in log
