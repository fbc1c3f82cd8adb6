"""Following a failed batch in traces, logs and metrics (SPEC section 8), with a real OTLP receiver."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otlp_receiver import OtlpReceiver, ReceivedSpan
from prometheus_client.parser import text_string_to_metric_families
from support import (
    KAFKA_TEST_GROUP_SETTINGS,
    FakeClock,
    consume_all,
    create_topic,
    produce,
    running,
    spawn_poller,
    unique_name,
    wait_for,
)
from test_kafka_mapping import make_config

from poller.observability.tracing import Telemetry

pytestmark = pytest.mark.kafka


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    await otlp.start()
    yield otlp
    await otlp.close()


def traceparent(i: int) -> bytes:
    return f"00-{i + 1:032x}-{i + 1:016x}-01".encode()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_poison_batch_is_a_span_tree_down_to_the_record(
    kafka_bootstrap: str, receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="poller")
    topic, dlq = unique_name("traced"), unique_name("traced-dlq")
    await create_topic(kafka_bootstrap, topic, 1)
    await create_topic(kafka_bootstrap, dlq, 1)
    poison = 5
    await produce(
        kafka_bootstrap,
        topic,
        [
            (0, None, "poison" if i == poison else f"ok{i}", [("traceparent", traceparent(i))])
            for i in range(16)
        ],
    )
    url = f"http://127.0.0.1:{receiver.port}"
    provider = TracerProvider(resource=Resource.create({"service.name": "poller-test"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    config = make_config(
        kafka_bootstrap,
        topic,
        "recorder:collect",
        destination={"type": "kafka", "connection": "kafka", "topic": dlq},
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=1,
        maximum_batching_window_in_seconds=2,
    )
    telemetry = Telemetry(tracer_provider=provider)
    async with running(config, FakeClock(), telemetry=telemetry) as app:
        [message] = await consume_all(kafka_bootstrap, dlq, 1, timeout=60)
        metrics = await wait_for(lambda: _lag_is_zero(app.admin.port), timeout=30, message="lag back to zero")
    await asyncio.to_thread(provider.force_flush)
    provider.shutdown()

    # The batch span: a CONSUMER root span with messaging attributes and links to every producer.
    [root] = [span for span in receiver.named("process ") if not span.parent_span_id]
    assert root.name == f"process {topic}"
    assert root.kind == Span.SPAN_KIND_CONSUMER
    assert root.attributes["messaging.system"] == "kafka"
    assert root.attributes["messaging.destination.name"] == topic
    assert root.attributes["messaging.batch.message_count"] == 16
    assert root.attributes["messaging.consumer.group.name"] == config.mappings["m"].source.consumer_group_id
    assert root.attributes["poller.mapping"] == "m"
    assert root.attributes["poller.function"] == "fn"
    assert sorted(root.links) == sorted((f"{i + 1:032x}", f"{i + 1:016x}") for i in range(16))

    # Its first attempt failed with the error recorded, then it was bisected down to the record.
    [first_attempt] = [span for span in receiver.children(root) if span.name == "invoke fn"]
    assert first_attempt.status_code == 2  # ERROR
    assert first_attempt.attributes["error.type"] == "ValueError"
    [(event, fields)] = first_attempt.events
    assert event == "exception"
    assert fields["exception.type"] == "ValueError"
    assert "poison at offset 5" in fields["exception.message"]
    chain = _bisect_chain_to_poison(receiver, root, poison)
    assert [span.attributes["messaging.batch.message_count"] for span in chain] == [16, 8, 4, 2, 1]
    leaf = chain[-1]
    leaf_attempts = [span for span in receiver.children(leaf) if span.name == "invoke fn"]
    assert len(leaf_attempts) == 2, "the record alone, then one retry"
    [delivery] = [span for span in receiver.children(leaf) if span.name.startswith("send ")]
    assert delivery.kind == Span.SPAN_KIND_PRODUCER
    assert delivery.attributes["poller.condition"] == "RetryAttemptsExhausted"
    assert {span.trace_id for span in receiver.spans} == {root.trace_id}

    # The same trace id in the failure record, in the dead-letter's traceparent, and in the logs.
    failure = json.loads(message.value)
    assert failure["traceId"] == root.trace_id
    headers = dict(message.headers)
    assert headers["traceparent"].decode().split("-")[1:3] == [root.trace_id, delivery.span_id]
    batch_logs = [record for record in caplog.records if getattr(record, "batch_id", None) is not None]
    assert batch_logs
    assert {getattr(record, "trace_id", None) for record in batch_logs} == {root.trace_id}

    # Metrics count what happened.
    labels = (("mapping", "m"),)
    assert metrics[("poller_records_dead_lettered_total", labels)] == 1
    assert metrics[("poller_records_polled_total", labels)] == 16
    assert metrics[("poller_bisections_total", labels)] == 4
    assert metrics[("poller_retries_total", labels)] == 1
    assert (
        metrics[("poller_batch_size_records_count", labels)] == metrics[("poller_invocations_total", labels)]
    )
    assert metrics[("poller_kafka_offset_lag_records", (("mapping", "m"), ("partition", f"{topic}-0")))] == 0


def _bisect_chain_to_poison(receiver: OtlpReceiver, root: ReceivedSpan, poison: int) -> list[ReceivedSpan]:
    chain = [root]
    while True:
        halves = [span for span in receiver.children(chain[-1]) if span.name.startswith("process ")]
        holding = [
            span
            for span in halves
            if int(span.attributes["poller.batch.first_position"])
            <= poison
            <= int(span.attributes["poller.batch.last_position"])
        ]
        if not holding:
            return chain
        chain.append(holding[0])


async def _lag_is_zero(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    metrics = await scrape(port)
    lags = [value for (name, _), value in metrics.items() if name == "poller_kafka_offset_lag_records"]
    return metrics if lags and all(value == 0 for value in lags) else None


@pytest.mark.parametrize("disabled", [False, True])
async def test_otel_environment_turns_export_on_and_off(
    kafka_bootstrap: str, receiver: OtlpReceiver, tmp_path: Path, disabled: bool
) -> None:
    topic = unique_name("otel-env")
    await create_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, topic, [(0, None, f"v{i}", None) for i in range(5)])
    url = f"http://127.0.0.1:{receiver.port}"
    config = tmp_path / "poller.yaml"
    config.write_text(
        json.dumps(
            {
                "connections": {"kafka": {"type": "kafka", "bootstrap_servers": kafka_bootstrap}},
                "functions": {"fn": {"handler": "recorder:collect"}},
                "mappings": {
                    "m": {
                        "function_name": "fn",
                        "source": {
                            "type": "kafka",
                            "connection": "kafka",
                            "topics": [topic],
                            **KAFKA_TEST_GROUP_SETTINGS,
                        },
                    }
                },
                "admin": {"port": 0},
            }
        )
    )
    handled = tmp_path / "handled.jsonl"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": url,
        "OTEL_SERVICE_NAME": "poller-env-test",
        "RECORDER_FILE": str(handled),
    }
    if disabled:
        env["OTEL_SDK_DISABLED"] = "true"
    process = spawn_poller(config, env)
    try:
        await wait_for(
            lambda: handled.exists() and len(handled.read_text().splitlines()) == 5,
            timeout=60,
            message="handled",
        )
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    if disabled:
        assert receiver.requests == 0
        assert receiver.spans == []
    else:
        assert [span.name for span in receiver.named("process ")] == [f"process {topic}"]
