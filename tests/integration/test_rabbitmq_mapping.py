"""The RabbitMQ event source mapping against a real RabbitMQ, in process (SPEC sections 5-7).

The guarantees every source shares (bisect and dead letters with the message's properties, partial
batch responses, an unroutable destination) are tested once for all four in ``test_guarantees.py``.

Two tests change the local node through ``rabbitmqctl`` (a lowered consumer timeout; stop_app and
start_app) and restore it afterwards; they need the broker of ``amqp_url`` to be that local node.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest
import rmq_handlers
from pamqp.commands import Basic
from rabbitmq_support import (
    ascii_bytes,
    channel_of,
    declare,
    delete,
    depth,
    publish,
    publish_raw,
    rabbitmqctl,
    retry_depth,
    take,
    unacked,
)
from rmq_handlers import body, calls
from support import FakeClock, mapping_config, running, unique_name, wait_for

from poller.app import App
from poller.config import Config
from poller.errors import SourceError
from poller.sources.rabbitmq.source import RabbitMQSource

pytestmark = pytest.mark.rabbitmq

NewQueue = Callable[..., Awaitable[str]]


def make_config(
    url: str,
    queues: list[str],
    handler: str,
    *,
    dlq: str | None = None,
    function: dict[str, Any] | None = None,
    **mapping: Any,
) -> Config:
    destination = None
    if dlq is not None:
        destination = {"type": "rabbitmq", "connection": "rabbit", "exchange": "", "routing_key": dlq}
    return mapping_config(
        {"rabbit": {"type": "rabbitmq", "url": url}},
        {"type": "rabbitmq", "connection": "rabbit", "queues": queues},
        handler,
        dlq=destination,
        function=function,
        **mapping,
    )


def source_of(app: App) -> RabbitMQSource:
    source = app.runners["m"].source
    assert isinstance(source, RabbitMQSource)
    return source


def key(queue: str) -> str:
    return f"{queue}::/"


def bodies(queue: str) -> list[bytes]:
    return [body(message) for call in calls(key(queue)) for message in call]


@pytest.fixture
async def new_queue(amqp_url: str) -> AsyncIterator[NewQueue]:
    """Declare fresh durable queues; delete them and their delay queues afterwards."""
    made: list[str] = []

    async def make(prefix: str = "q", *, quorum: bool = False) -> str:
        name = unique_name(f"rmq-{prefix}")
        await declare(amqp_url, name, quorum=quorum)
        made.append(name)
        return name

    yield make
    await delete(amqp_url, *made)


async def test_ten_thousand_messages_handled_in_concurrent_batches_and_acked(
    amqp_url: str, new_queue: NewQueue
) -> None:
    queue = await new_queue("bulk")
    expected = [f"{i}".encode() for i in range(10_000)]
    await publish(
        amqp_url, queue, (aio_pika.Message(data, message_id=f"m-{i}") for i, data in enumerate(expected))
    )
    config = make_config(
        amqp_url,
        [queue],
        "rmq_handlers:collect",
        function={"environment": {"BATCH_DELAY": "0.02"}},
        scaling_config={"maximum_concurrency": 4},
        # Long enough that a loaded machine's slow deliveries do not cut batches short: under a
        # backlog they fill up by count long before it.
        maximum_batching_window_in_seconds=1.0,
    )
    async with running(config) as app:
        await wait_for(lambda: len(bodies(queue)) >= 10_000, timeout=90, message="10,000 messages handled")
        source = source_of(app)
        await wait_for(lambda: source.unacked == 0, timeout=10, message="every delivery acked")
        assert source.connections == 1
        assert app.runners["m"].status.counts.dead_lettered == 0
    # The connection is closed now, so anything left unacked would be back in the queue.
    assert await depth(amqp_url, queue) == 0
    assert sorted(bodies(queue)) == sorted(expected), "each message exactly once on the happy path"
    sizes = [len(call) for call in calls(key(queue))]
    assert max(sizes) <= 100  # batch_size default
    assert sum(size == 100 for size in sizes) >= 90, "batches fill up under a backlog"
    assert 2 <= rmq_handlers.most_running(key(queue)) <= 4, "several batches at once, at most 4"


async def test_filled_in_message_ids_survive_a_partial_batch_retry_on_classic_and_quorum_queues(
    amqp_url: str, new_queue: NewQueue
) -> None:
    """A publisher that sets no message id gets one filled in, the same on the retry, so that a
    partial batch response can name the message; over one mapping of a classic and a quorum queue."""
    classic, quorum = await new_queue("classic"), await new_queue("quorum", quorum=True)
    for queue in (classic, quorum):
        # No message id, delivery mode or priority: the publisher set none.
        await publish_raw(
            amqp_url,
            queue,
            [(f"{queue}/{i}".encode(), Basic.Properties(content_type="text/plain")) for i in range(10)],
        )
    failing = {f"{classic}/3".encode(), f"{quorum}/7".encode()}
    config = make_config(
        amqp_url,
        [classic, quorum],
        "rmq_handlers:partial_once",
        function={"environment": {"FAIL_ONCE": json.dumps(sorted(b.decode() for b in failing))}},
        function_response_types=["ReportBatchItemFailures"],
        maximum_batching_window_in_seconds=0.5,
    )
    async with running(config, FakeClock()) as app:
        await wait_for(
            lambda: sum(bodies(classic).count(b) + bodies(quorum).count(b) for b in failing) == 4,
            timeout=30,
            message="the reported messages retried",
        )
        await wait_for(lambda: source_of(app).unacked == 0, timeout=10, message="everything acked")
    for queue in (classic, quorum):
        assert await depth(amqp_url, queue) == 0
        assert await retry_depth(amqp_url, queue) == 0
    everything = {f"{q}/{i}".encode() for q in (classic, quorum) for i in range(10)}
    seen: dict[bytes, list[dict[str, Any]]] = {}
    for queue in (classic, quorum):
        for call in calls(key(queue)):
            for message in call:
                seen.setdefault(body(message), []).append(message)
    assert set(seen) == everything
    assert {b: len(ms) for b, ms in seen.items() if len(ms) != 1} == dict.fromkeys(failing, 2)
    for data in failing:
        first, again = seen[data]
        # The filled-in id survives the retry, so a partial response to the retry still matches.
        assert first["basicProperties"]["messageId"] == again["basicProperties"]["messageId"]
        assert (first["redelivered"], again["redelivered"]) == (False, True)
        assert first["basicProperties"] == again["basicProperties"]
    ids = [ms[0]["basicProperties"]["messageId"] for ms in seen.values()]
    assert len(set(ids)) == 20
    assert all(len(message_id) == 36 for message_id in ids)  # a uuid4
    properties = seen[f"{classic}/0".encode()][0]["basicProperties"]
    assert properties["contentType"] == "text/plain"
    assert properties["headers"] is None
    assert properties["deliveryMode"] is None
    assert properties["priority"] is None
    assert properties["timestamp"] is None


@contextmanager
def broker_settings(**settings: int) -> Iterator[None]:
    """Set ``rabbit`` application settings on the local node; restore them afterwards. Channels
    read most of them when they open, so only channels opened meanwhile see them."""
    saved = {name: rabbitmqctl("eval", f"application:get_env(rabbit, {name}).") for name in settings}
    rabbitmqctl(
        "eval", ", ".join(f"application:set_env(rabbit, {n}, {v})" for n, v in settings.items()) + "."
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            if value.startswith("{ok,"):
                rabbitmqctl("eval", f"application:set_env(rabbit, {name}, {value[4:-1]}).")
            else:
                rabbitmqctl("eval", f"application:unset_env(rabbit, {name}).")


@pytest.fixture
def short_consumer_timeout() -> Iterator[float]:
    """Lower the node's consumer timeout to 3 s, checked every second (RabbitMQ 3.10 has no per-queue
    ``x-consumer-timeout``)."""
    with broker_settings(consumer_timeout=3000, channel_tick_interval=1000):
        yield 3.0


async def test_retry_outlasts_the_consumer_timeout_without_holding_the_delivery_across_a_restart(
    amqp_url: str, new_queue: NewQueue, short_consumer_timeout: float
) -> None:
    queue, dlq, control = await new_queue("slow"), await new_queue("slow-dlq"), await new_queue("control")
    stubborn = unique_name("stubborn")
    await publish(amqp_url, queue, [aio_pika.Message(b"stubborn", message_id=stubborn)])
    await publish(amqp_url, control, [aio_pika.Message(b"held")])
    config = make_config(
        amqp_url,
        [queue],
        "rmq_handlers:stubborn",
        dlq=dlq,
        function={"environment": {"FAIL_IDS": stubborn}},
        maximum_retry_attempts=4,
        batch_size=10,
        maximum_batching_window_in_seconds=0.1,
    )

    def count_attempts() -> int:
        return len(rmq_handlers.failed_at(stubborn))

    async with channel_of(amqp_url) as holder:
        # The lowered timeout is in force: a consumer that holds a delivery loses its channel.
        held = await holder.declare_queue(control, passive=True)

        async def hold(message: Any) -> None:
            return None  # never acks

        await held.consume(hold)

        async with running(config) as app:
            await wait_for(lambda: count_attempts() >= 2, timeout=30, message="two attempts")

            # While the retry waits in a delay queue nothing of the source queue is unacked (the
            # copy is published before the original is acked: for a moment the broker shows both)...
            async def waits_released() -> bool:
                return bool(await retry_depth(amqp_url, queue)) and unacked(queue) == 0

            await wait_for(waits_released, timeout=10, message="waiting in a delay queue, nothing unacked")
            # ... and other messages keep flowing.
            await publish(amqp_url, queue, [aio_pika.Message(b"other-%d" % i) for i in range(20)])
            await wait_for(
                lambda: {b"other-%d" % i for i in range(20)} <= set(bodies(queue)),
                timeout=15,
                message="other messages handled meanwhile",
            )
            assert source_of(app).connections == 1
        before_restart = count_attempts()
        # A new poller: the attempt count travels in the message, not in the process.
        async with running(config) as app:
            await wait_for(
                lambda: depth(amqp_url, dlq), timeout=60, message="dead-lettered after the last retry"
            )
            count_attempts()
            assert source_of(app).connections == 1, "the channel was never closed by the consumer timeout"
        await wait_for(lambda: holder.is_closed, timeout=10, message="the holding consumer's channel closed")

    assert 2 <= before_restart < 5
    assert count_attempts() == 5, "one attempt and maximum_retry_attempts=4 retries, across the restart"
    gaps = [b - a for a, b in itertools.pairwise(rmq_handlers.failed_at(stubborn))]
    assert max(gaps) > short_consumer_timeout + 1, "a retry waited longer than the consumer timeout"
    [dead] = await take(amqp_url, dlq)
    failure = json.loads(dead.body)
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["requestContext"]["approximateInvokeCount"] == 5, "attempts before the restart count"
    assert failure["records"][0]["basicProperties"]["messageId"] == stubborn
    assert await depth(amqp_url, queue) == 0


async def test_record_age_counts_from_the_first_delivery_and_ends_retries(
    amqp_url: str, new_queue: NewQueue
) -> None:
    queue, dlq = await new_queue("aging"), await new_queue("aging-dlq")
    stubborn = unique_name("old")
    await publish(amqp_url, queue, [aio_pika.Message(b"old", message_id=stubborn)])
    clock = FakeClock()
    config = make_config(
        amqp_url,
        [queue],
        "rmq_handlers:stubborn",
        dlq=dlq,
        function={"environment": {"FAIL_IDS": stubborn}},
        maximum_record_age_in_seconds=60,  # and no limit on retries
        maximum_batching_window_in_seconds=0.1,
    )
    async with running(config, clock):
        await wait_for(lambda: len(rmq_handlers.failed_at(stubborn)) >= 2, timeout=30, message="two attempts")
        # 58 s pass for the engine. Counted from the first delivery the message is then older than
        # 60 s within a few retries; counted from each redelivery it would never be.
        clock.slept += 58
        await wait_for(lambda: depth(amqp_url, dlq), timeout=30, message="given up for its age")
    [dead] = await take(amqp_url, dlq)
    failure = json.loads(dead.body)
    assert failure["requestContext"]["condition"] == "RecordAgeExceeded"
    assert failure["records"][0]["basicProperties"]["messageId"] == stubborn
    assert await depth(amqp_url, queue) == 0
    assert await retry_depth(amqp_url, queue) == 0


async def test_broker_restart_mid_stream_reconnects_and_loses_nothing(
    amqp_url: str, new_queue: NewQueue
) -> None:
    queue = await new_queue("restart")
    expected = {b"%d" % i for i in range(1000)}
    await publish(
        amqp_url,
        queue,
        (aio_pika.Message(b, delivery_mode=aio_pika.DeliveryMode.PERSISTENT) for b in expected),
    )
    config = make_config(
        amqp_url,
        [queue],
        "rmq_handlers:collect",
        function={"environment": {"BATCH_DELAY": "0.05"}},
        batch_size=50,
        scaling_config={"maximum_concurrency": 2},
        maximum_batching_window_in_seconds=0.1,
    )
    async with running(config) as app:
        runner = app.runners["m"]
        await wait_for(lambda: len(bodies(queue)) >= 200, timeout=30, message="the first messages handled")
        try:
            rabbitmqctl("stop_app")
            await wait_for(lambda: not runner.status.ready, timeout=15, message="/readyz shows the loss")
            await wait_for(
                lambda: "cannot connect" in (runner.status.last_error or ""),
                timeout=15,
                message="a reconnection attempt failed while the broker was down",
            )
        finally:
            rabbitmqctl("start_app")
        await wait_for(lambda: set(bodies(queue)) >= expected, timeout=60, message="everything handled")
        await wait_for(lambda: runner.status.ready and source_of(app).unacked == 0, timeout=20)
        assert source_of(app).connections >= 2
    assert await depth(amqp_url, queue) == 0
    # Only what was delivered but not acked when the broker went away comes again.
    assert len(bodies(queue)) - 1000 <= source_of(app).prefetch


async def test_failure_record_too_large_for_the_broker_goes_without_its_records(
    amqp_url: str, new_queue: NewQueue
) -> None:
    queue, dlq = await new_queue("large"), await new_queue("large-dlq")
    await publish(amqp_url, queue, [aio_pika.Message(b"poison " + b"x" * 3000, message_id="big-1")])
    config = make_config(amqp_url, [queue], "rmq_handlers:poison", dlq=dlq, maximum_retry_attempts=0)
    with broker_settings(max_message_size=2000):
        async with running(config, FakeClock()) as app:
            await wait_for(lambda: app.runners["m"].status.counts.dead_lettered == 1, timeout=30)
            await wait_for(lambda: source_of(app).unacked == 0, timeout=10)
    [dead] = await take(amqp_url, dlq)
    failure = json.loads(dead.body)
    assert failure["records"] == []
    assert failure["recordsOmitted"] == "the records are larger than the broker accepts"
    assert failure["source"]["messageIds"] == ["big-1"]
    assert await depth(amqp_url, queue) == 0


async def test_a_delay_queue_that_refuses_copies_returns_the_message_without_a_hot_loop(
    amqp_url: str, new_queue: NewQueue
) -> None:
    queue, dlq = await new_queue("refused"), await new_queue("refused-dlq")
    stubborn = unique_name("refused")
    await publish(amqp_url, queue, [aio_pika.Message(b"refused", message_id=stubborn)])
    config = make_config(
        amqp_url,
        [queue],
        "rmq_handlers:stubborn",
        dlq=dlq,
        function={"environment": {"FAIL_IDS": stubborn}},
        maximum_retry_attempts=1,
    )
    policy = unique_name("refuse")
    pattern = "^" + re.escape(f"poller.retry.m.{queue}.")
    # The broker nacks every copy published to the delay queues while this policy holds.
    rabbitmqctl(
        "set_policy",
        "--apply-to",
        "queues",
        policy,
        pattern,
        '{"max-length": 0, "overflow": "reject-publish"}',
    )
    try:
        async with running(config) as app:
            await wait_for(lambda: len(rmq_handlers.failed_at(stubborn)) >= 3, timeout=30, message="returned")
            refused = rmq_handlers.failed_at(stubborn)
            # Each return waited for the retry's delay (at least 0.5 s): no hot loop.
            assert all(b - a >= 0.45 for a, b in itertools.pairwise(refused))
            rabbitmqctl("clear_policy", policy)
            policy = ""
            await wait_for(
                lambda: depth(amqp_url, dlq), timeout=30, message="dead-lettered once copies are taken"
            )
            assert source_of(app).connections == 1
    finally:
        if policy:
            rabbitmqctl("clear_policy", policy)
    [dead] = await take(amqp_url, dlq)
    assert json.loads(dead.body)["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert await depth(amqp_url, queue) == 0


async def test_powertools_rabbitmq_event_reads_our_event(amqp_url: str, new_queue: NewQueue) -> None:
    queue = await new_queue("powertools")
    await publish(
        amqp_url,
        queue,
        [
            aio_pika.Message(
                b'{"order": %d}' % i,
                content_type="application/json",
                headers={"tenant": "acme", "n": i},
                message_id=f"o-{i}",
                timestamp=datetime(2024, 6, 10, 18, 13, 20, tzinfo=UTC),
                app_id="shop",
            )
            for i in range(2)
        ],
    )
    config = make_config(amqp_url, [queue], "rmq_handlers:powertools", maximum_batching_window_in_seconds=0.2)
    async with running(config):
        await wait_for(lambda: len(rmq_handlers.powertools_seen(key(queue))) == 2, timeout=30)
    first, second = rmq_handlers.powertools_seen(key(queue))
    assert first["event_source"] == "aws:rmq"
    assert first["event_source_arn"].startswith("arn:aws:mq:")
    assert first["json_data"] == {"order": 0}
    assert second["decoded_data"] == '{"order": 1}'
    assert first["headers"] == {"tenant": ascii_bytes("acme"), "n": 0}
    assert first["content_type"] == "application/json"
    assert first["message_id"] == "o-0"
    assert first["timestamp"] == "Jun 10, 2024, 6:13:20 PM"
    assert first["app_id"] == "shop"
    assert first["body_size"] == len(b'{"order": 0}')
    assert first["redelivered"] is False
    assert first["cluster_id"] is None
    assert first["content_encoding"] is None


async def test_unknown_queue_stops_the_service_at_start(amqp_url: str) -> None:
    config = make_config(amqp_url, [unique_name("rmq-missing")], "rmq_handlers:collect")
    app = App(config, drain_timeout=5)
    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(app.run(), 30)
    assert raised.group_contains(SourceError, match="unknown RabbitMQ queue")
