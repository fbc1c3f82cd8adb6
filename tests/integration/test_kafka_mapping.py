"""The Kafka event source mapping against a real Kafka broker, in process (SPEC sections 5-7).

The guarantees every source shares (order, bisect and dead letters, partial batch responses, a
destination outage) are tested once for all four in ``test_guarantees.py``; these are Kafka's own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import recorder
from support import (
    KAFKA_TEST_GROUP_SETTINGS,
    FakeClock,
    committed_offsets,
    create_topic,
    mapping_config,
    produce,
    running,
    unique_name,
    wait_for,
)

from poller.app import App
from poller.config import Config
from poller.devtools.standins import start_kafka

pytestmark = pytest.mark.kafka


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_config(
    bootstrap: str,
    topic: str,
    handler: str,
    *,
    destination: dict[str, Any] | None = None,
    function: dict[str, Any] | None = None,
    **mapping: Any,
) -> Config:
    connections: dict[str, Any] = {"kafka": {"type": "kafka", "bootstrap_servers": bootstrap}}
    source = {
        "type": "kafka",
        "connection": "kafka",
        "topics": [topic],
        "consumer_group_id": unique_name("group"),
        **KAFKA_TEST_GROUP_SETTINGS,
    }
    return mapping_config(connections, source, handler, dlq=destination, function=function, **mapping)


def handled(topic: str) -> list[tuple[int, int]]:
    return [(r["partition"], r["offset"]) for call in recorder.calls(topic) for r in call]


def group_of(config: Config) -> str:
    group = config.mappings["m"].source.consumer_group_id
    assert group is not None
    return group


async def committed(bootstrap: str, config: Config, topic: str, partitions: int) -> dict[int, int | None]:
    return await committed_offsets(bootstrap, group_of(config), topic, list(range(partitions)))


async def _committed_is(bootstrap: str, config: Config, topic: str, expected: dict[int, int]) -> bool:
    return await committed(bootstrap, config, topic, len(expected)) == expected


async def test_record_age_ends_retries_with_record_age_exceeded(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = unique_name("aging")
    await create_topic(kafka_bootstrap, topic, 1)
    produced_at = time.time()
    await produce(kafka_bootstrap, topic, [(0, None, "x", None)])
    dead_letters = tmp_path / "failed.jsonl"
    config = make_config(
        kafka_bootstrap,
        topic,
        "recorder:always_fail",
        destination={"type": "file", "path": str(dead_letters)},
        maximum_record_age_in_seconds=60,
    )
    clock = FakeClock()
    async with running(config, clock):
        await wait_for(dead_letters.exists, timeout=60, message="record dead-lettered")
        await wait_for(lambda: _committed_is(kafka_bootstrap, config, topic, {0: 1}))
    [failure] = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert failure["requestContext"]["condition"] == "RecordAgeExceeded"
    attempts = len(recorder.calls(topic))
    assert failure["requestContext"]["approximateInvokeCount"] == attempts
    # Backoff 1, 2, 4, ... 32 s: the record passed 60 s of age after about six retries. Its age is
    # the skipped sleeps plus the real seconds the attempts took, which a loaded machine makes more.
    assert 5 <= attempts <= 8
    assert clock.slept <= 130
    assert clock.slept + (time.time() - produced_at) >= 60


async def test_sync_sleeping_handler_does_not_stall_other_partitions(kafka_bootstrap: str) -> None:
    topic = unique_name("slow")
    await create_topic(kafka_bootstrap, topic, 4)
    await produce(kafka_bootstrap, topic, [(i % 4, None, f"v{i}", None) for i in range(400)])
    config = make_config(
        kafka_bootstrap,
        topic,
        "recorder:slow_partition",
        function={"timeout": 10, "environment": {"SLOW_PARTITION": "0:4.0"}},
    )
    async with running(config):
        started = time.monotonic()
        await wait_for(
            lambda: sum(1 for p, _ in handled(topic) if p != 0) == 300,
            timeout=30,
            message="partitions 1-3 handled",
        )
        elapsed = time.monotonic() - started
        # Partition 0's handler blocks its environment for 4 s a batch; the others finished meanwhile.
        assert sum(1 for p, _ in handled(topic) if p == 0) <= 100
        assert elapsed < 4.0
        await wait_for(lambda: len(handled(topic)) == 400, timeout=60)


async def test_handler_past_its_timeout_is_a_failed_invocation(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = unique_name("timeout")
    await create_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, topic, [(0, None, "slow", None)])
    dead_letters = tmp_path / "failed.jsonl"
    config = make_config(
        kafka_bootstrap,
        topic,
        "recorder:slow_partition",
        function={"timeout": 1, "environment": {"SLOW_PARTITION": "0:3.0"}},
        destination={"type": "file", "path": str(dead_letters)},
        maximum_retry_attempts=0,
    )
    async with running(config, FakeClock()):
        await wait_for(dead_letters.exists, timeout=30)
    failure = json.loads(dead_letters.read_text().splitlines()[0])
    assert failure["errorInfo"]["errorType"] == "Sandbox.Timedout"
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"


async def test_values_that_are_not_utf8_or_json_are_passed_as_is(kafka_bootstrap: str) -> None:
    topic = unique_name("binary")
    await create_topic(kafka_bootstrap, topic, 1)
    values = [b"\xff\xfe\x00binary", b"not json {", b"", b'{"ok": true}']
    await produce(kafka_bootstrap, topic, [(0, None, value, None) for value in values])
    config = make_config(kafka_bootstrap, topic, "recorder:collect")
    async with running(config) as app:
        await wait_for(lambda: len(handled(topic)) == 4, timeout=30)
        assert app.runners["m"].status.counts.failed == 0
    records = [r for call in recorder.calls(topic) for r in call]
    assert [base64.b64decode(r["value"]) for r in records] == values
    assert all("key" not in r for r in records), "a null key is left out, as AWS does"


async def test_powertools_kafka_event_reads_our_event(kafka_bootstrap: str) -> None:
    topic = unique_name("powertools")
    await create_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, topic, [(0, "order-1", '{"amount": 10}', [("tenant", b"acme")])])
    config = make_config(kafka_bootstrap, topic, "recorder:powertools")
    async with running(config) as app:
        await wait_for(lambda: recorder.calls("powertools:" + topic), timeout=30)
        assert app.runners["m"].status.counts.failed == 0
    [[seen]] = recorder.calls("powertools:" + topic)
    assert seen == {
        "topic": topic,
        "partition": 0,
        "offset": 0,
        "key": b"order-1",
        "value": {"amount": 10},
        "headers": {"tenant": b"acme"},
        "timestamp_type": "CREATE_TIME",
    }


async def test_rebalance_hands_partitions_over_without_loss(kafka_bootstrap: str) -> None:
    topic = unique_name("rebalance")
    await create_topic(kafka_bootstrap, topic, 4)
    await produce(kafka_bootstrap, topic, [(i % 4, None, f"v{i}", None) for i in range(2000)])
    config = make_config(
        kafka_bootstrap,
        topic,
        "recorder:slow_every_batch",
        function={"environment": {"BATCH_DELAY": "0.2"}},
        batch_size=20,
        maximum_batching_window_in_seconds=0,
    )
    async with running(config) as first:
        await wait_for(lambda: len(handled(topic)) >= 200, timeout=60, message="first member started")
        async with running(config) as second:
            # Both members hold partitions: the group rebalanced while batches were in flight.
            await wait_for(
                lambda: second.runners["m"].status.counts.invoked > 0,
                timeout=60,
                message="second member got work",
            )
            await wait_for(
                lambda: len(set(handled(topic))) == 2000, timeout=120, message="everything handled"
            )
            await wait_for(lambda: _committed_is(kafka_bootstrap, config, topic, {p: 500 for p in range(4)}))
        assert first.runners["m"].status.counts.invoked > 0
    seen = handled(topic)
    assert set(seen) == {(i % 4, i // 4) for i in range(2000)}
    # Revoked partitions were committed after their in-flight batch, so re-reads are rare.
    assert len(seen) - 2000 <= 4 * 20


async def test_broker_down_at_start_is_retried_and_shown_in_readyz() -> None:
    import aiohttp

    port = free_port()
    config = make_config(f"127.0.0.1:{port}", "never", "recorder:collect")
    async with running(config) as app:
        base = f"http://127.0.0.1:{app.admin.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 503
                body = await response.json()
            assert "cannot connect to Kafka" in body["mappings"]["m"]
            async with session.get(f"{base}/mappings") as response:
                mappings = await response.json()
        assert mappings["m"]["state"] == "Connecting"
        assert mappings["m"]["ready"] is False


async def test_readyz_once_polling(kafka_bootstrap: str) -> None:
    import aiohttp

    topic = unique_name("ready")
    await create_topic(kafka_bootstrap, topic, 1)
    config = make_config(kafka_bootstrap, topic, "recorder:collect")
    async with running(config) as app, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{app.admin.port}/readyz"

        async def ready() -> bool:
            async with session.get(url) as response:
                return response.status == 200

        await wait_for(ready, timeout=30, message="/readyz turned 200")


async def test_unknown_topic_stops_the_service_at_start(kafka_bootstrap: str) -> None:
    from poller.errors import SourceError

    config = make_config(kafka_bootstrap, unique_name("missing"), "recorder:collect")
    app = App(config, drain_timeout=5)
    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(app.run(), 30)
    assert raised.group_contains(SourceError, match="unknown Kafka topic")


async def test_broker_gone_turns_readyz_false_and_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp

    from poller.sources.kafka import source as kafka_source

    monkeypatch.setattr(kafka_source, "HEALTH_PROBE_INTERVAL", 0.5)
    monkeypatch.setattr(kafka_source, "HEALTH_PROBE_TIMEOUT", 1.0)
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = start_kafka(port, tmp_path)
    assert broker is not None
    topic = unique_name("flaky-broker")
    try:
        await create_topic(bootstrap, topic, 1)
        config = make_config(bootstrap, topic, "recorder:collect")
        async with running(config) as app, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{app.admin.port}/readyz"

            async def status() -> int:
                async with session.get(url) as response:
                    return response.status

            await wait_for(lambda: _is(status(), 200), timeout=30, message="ready")
            broker.stop()
            await wait_for(
                lambda: _is(status(), 503), timeout=30, message="not ready once the broker is gone"
            )
            assert "unreachable" in (app.runners["m"].status.last_error or "")
            broker = start_kafka(port, tmp_path)
            assert broker is not None
            await wait_for(
                lambda: _is(status(), 200), timeout=60, message="ready again after the broker is back"
            )
    finally:
        if broker is not None:
            broker.stop()


async def _is(value: Any, expected: object) -> bool:
    return bool(await value == expected)
