"""Asynchronous invocation end to end (SPEC section 13): python-process functions that record
what they see in files, real destinations (SQS on moto, a Kafka topic, files), and the real
``poller run`` process killed with ``kill -9`` while events wait."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from opentelemetry import trace
from sqs_support import REGION, aws, create_queue, receive_all
from support import (
    INTEGRATION,
    REPO,
    consume_all,
    create_topic,
    recorded_lines,
    serving,
    sigterm_once,
    spawn_poller,
    unique_name,
    wait_exit,
    wait_for,
)

from poller.app import App
from poller.clock import Clock
from poller.config import load_config
from poller.invocation.asynchronous.invoker import enqueue
from poller.invocation.asynchronous.store import SqliteEventStore
from poller.observability.async_spans import AsyncTelemetry

PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"


def function(handler: str, record_file: Path, **settings: Any) -> dict[str, Any]:
    """A function of ``async_handlers`` in poller's Python runtime (an environment process)."""
    environment = {"RECORD_FILE": str(record_file), **settings.pop("environment", {})}
    return {
        "runtime": PYTHON,
        "code": str(INTEGRATION),
        "handler": f"async_handlers.{handler}",
        "timeout": 30,
        "environment": environment,
        **settings,
    }


def write_config(path: Path, **sections: Any) -> Path:
    config = {"admin": {"port": 0}, "async_queue": {"type": "sqlite", "path": str(path.parent / "async.db")}}
    path.write_text(json.dumps({**config, **sections}, indent=2))  # JSON is YAML
    return path


@asynccontextmanager
async def app_on(path: Path) -> AsyncIterator[App]:
    async with serving(App(load_config(path), drain_timeout=10, config_path=path)) as app:
        yield app


def entries(record_file: Path, key: str) -> list[Any]:
    """What the handlers wrote under ``key`` (started or finished), in order."""
    return [entry[key] for entry in map(json.loads, recorded_lines(record_file)) if key in entry]


async def accept(app: App, name: str, event: Any) -> str:
    request_id = str(uuid.uuid4())
    await app.async_invocations.accept(
        app.functions[name], orjson.dumps(event), request_id=request_id, trace_parent=None
    )
    return request_id


@pytest.mark.sqs
async def test_a_succeeding_event_reaches_on_success_with_its_request_and_response(
    moto_endpoint: str, tmp_path: Path
) -> None:
    record_file = tmp_path / "handled.jsonl"
    async with aws(moto_endpoint, "sqs") as sqs:
        url, queue = await create_queue(sqs, "async-ok")
        config = write_config(
            tmp_path / "poller.yaml",
            connections={"aws": {"type": "aws", "region": REGION, "endpoint_url": moto_endpoint}},
            functions={
                "ok": function(
                    "succeed",
                    record_file,
                    event_invoke_config={"destination_config": {"on_success": {"destination": "ok-events"}}},
                )
            },
            destinations={"ok-events": {"type": "sqs", "connection": "aws", "queue": queue}},
        )
        async with app_on(config) as app:
            request_id = await accept(app, "ok", {"order": 7, "items": ["a", "b"]})
            [message] = await receive_all(sqs, url, 1)
    record = json.loads(message["Body"])
    assert record["version"] == "1.0"
    assert record["requestContext"] == {
        "requestId": request_id,
        "functionArn": f"arn:aws:lambda:{REGION}:000000000000:function:ok:$LATEST",
        "condition": "Success",
        "approximateInvokeCount": 1,
    }
    assert record["requestPayload"] == {"order": 7, "items": ["a", "b"]}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"] == {
        "received": {"order": 7, "items": ["a", "b"]},
        "requestId": request_id,
        "version": None,
    }
    assert record["timestamp"].endswith("Z")
    assert entries(record_file, "started") == [request_id]


@pytest.mark.sqs
@pytest.mark.kafka
async def test_a_failing_event_is_attempted_three_times_then_sent_on_failure_and_dead_lettered(
    moto_endpoint: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    record_file = tmp_path / "handled.jsonl"
    topic = unique_name("async-failed")
    await create_topic(kafka_bootstrap, topic)
    async with aws(moto_endpoint, "sqs") as sqs:
        dlq_url, dlq = await create_queue(sqs, "async-dlq")
        config = write_config(
            tmp_path / "poller.yaml",
            connections={
                "aws": {"type": "aws", "region": REGION, "endpoint_url": moto_endpoint},
                "kafka": {"type": "kafka", "bootstrap_servers": kafka_bootstrap},
            },
            functions={
                "bad": function(
                    "fail",
                    record_file,
                    event_invoke_config={
                        "retry_delay_in_seconds": 0.2,
                        "destination_config": {"on_failure": {"destination": "failed-events"}},
                    },
                    dead_letter_config={"destination": "failed-raw"},
                )
            },
            destinations={
                "failed-events": {"type": "kafka", "connection": "kafka", "topic": topic},
                "failed-raw": {"type": "sqs", "connection": "aws", "queue": dlq},
            },
        )
        async with app_on(config) as app:
            request_id = await accept(app, "bad", {"n": 42})
            [dead] = await receive_all(sqs, dlq_url, 1)
            [failed] = await consume_all(kafka_bootstrap, topic, 1)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{app.admin.port}/metrics") as response,
            ):
                metrics = await response.text()
    assert entries(record_file, "started") == [request_id] * 3
    record = json.loads(failed.value)
    assert failed.key == request_id.encode()
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestPayload"] == {"n": 42}
    assert record["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert record["responsePayload"]["errorType"] == "RuntimeError"
    assert record["responsePayload"]["errorMessage"] == "cannot handle 42"
    assert json.loads(dead["Body"]) == {"n": 42}
    attributes = dead["MessageAttributes"]
    assert attributes["RequestID"] == {"DataType": "String", "StringValue": request_id}
    assert attributes["ErrorCode"] == {"DataType": "Number", "StringValue": "200"}
    assert attributes["ErrorMessage"] == {"DataType": "String", "StringValue": "cannot handle 42"}
    assert 'poller_async_events_dropped_total{condition="RetriesExhausted",function="bad"} 1.0' in metrics
    assert 'poller_async_retries_total{function="bad",reason="FunctionError"} 2.0' in metrics
    assert 'poller_async_events_received_total{function="bad"} 1.0' in metrics


async def test_a_reload_hands_the_waiting_events_to_the_new_function(tmp_path: Path) -> None:
    record_file, out = tmp_path / "handled.jsonl", tmp_path / "ok.jsonl"
    sections: dict[str, Any] = {
        "destinations": {"ok-events": {"type": "file", "path": str(out)}},
    }
    on_success = {"destination_config": {"on_success": {"destination": "ok-events"}}}
    path = tmp_path / "poller.yaml"
    # Reserved concurrency 0: every attempt is throttled, so the events wait.
    throttled = function(
        "succeed", record_file, reserved_concurrent_executions=0, event_invoke_config=on_success
    )
    write_config(path, functions={"fn": throttled}, **sections)
    async with app_on(path) as app:
        ids = [await accept(app, "fn", {"n": n}) for n in range(3)]
        await wait_for(
            lambda: app.async_invocations.counts["fn"].retries.get("Throttled", 0) >= 3,
            message="the events throttled",
        )
        assert entries(record_file, "started") == []
        fresh = function("succeed", record_file, environment={"VERSION": "2"}, event_invoke_config=on_success)
        write_config(path, functions={"fn": fresh}, **sections)
        assert await app.reload()
        await wait_for(lambda: len(recorded_lines(out)) == 3, timeout=30, message="three records")
    records = [json.loads(line) for line in recorded_lines(out)]
    assert sorted(record["requestContext"]["requestId"] for record in records) == sorted(ids)
    assert {record["responsePayload"]["version"] for record in records} == {"2"}


async def test_poller_invoke_async_queues_an_event_that_the_running_poller_handles(tmp_path: Path) -> None:
    record_file, out = tmp_path / "handled.jsonl", tmp_path / "ok.jsonl"
    path = write_config(
        tmp_path / "poller.yaml",
        functions={
            "fn": function(
                "succeed",
                record_file,
                event_invoke_config={"destination_config": {"on_success": {"destination": "ok-events"}}},
            )
        },
        destinations={"ok-events": {"type": "file", "path": str(out)}},
    )
    event = tmp_path / "event.json"
    event.write_text('{"from": "the command line"}')
    async with app_on(path):
        command = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-m",
                "poller",
                "invoke",
                "--async",
                "fn",
                "-c",
                str(path),
                "--event",
                str(event),
            ],
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(command.communicate(), 60)
        assert command.returncode == 0, stderr.decode()
        request_id = stdout.decode().strip()
        assert uuid.UUID(request_id)
        await wait_for(lambda: recorded_lines(out), timeout=30, message="the on-success record")
    [record] = [json.loads(line) for line in recorded_lines(out)]
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestPayload"] == {"from": "the command line"}


async def test_events_survive_kill_9_and_are_all_handled_after_a_restart(tmp_path: Path) -> None:
    record_file, out = tmp_path / "handled.jsonl", tmp_path / "ok.jsonl"
    path = write_config(
        tmp_path / "poller.yaml",
        functions={
            "slow": function(
                "succeed",
                record_file,
                reserved_concurrent_executions=2,
                environment={"HANDLER_SLEEP": "0.3"},
                event_invoke_config={"destination_config": {"on_success": {"destination": "ok-events"}}},
            )
        },
        destinations={"ok-events": {"type": "file", "path": str(out)}},
    )
    # Queued from this process, as `poller invoke --async` queues them: the poller finds them.
    store = SqliteEventStore(tmp_path / "async.db")
    await store.open()
    telemetry = AsyncTelemetry(trace.get_tracer("test"), registry=None)
    ids = [str(uuid.uuid4()) for _ in range(20)]
    for number, request_id in enumerate(ids):
        await enqueue(store, telemetry, "slow", orjson.dumps({"n": number}), request_id, None, Clock().now())
    await store.close()
    first = spawn_poller(path, {})
    try:
        await wait_for(
            lambda: len(entries(record_file, "finished")) >= 3, timeout=60, message="three handled"
        )
        await wait_for(
            lambda: len(entries(record_file, "started")) > len(entries(record_file, "finished")),
            timeout=10,
            message="an attempt in the handler",
        )
        first.kill()
        assert await wait_exit(first, 10) == -9
    finally:
        if first.poll() is None:
            first.kill()
    finished_before = set(entries(record_file, "finished"))
    interrupted = set(entries(record_file, "started")) - finished_before
    assert interrupted
    assert len(finished_before) <= 10, "most events were still waiting"
    second = spawn_poller(path, {})
    code = await sigterm_once(
        second,
        lambda: set(entries(record_file, "finished")) == set(ids) and len(recorded_lines(out)) >= 20,
        within=60,
        message="all 20 handled after the restart",
    )
    assert code == 0
    delivered = {json.loads(line)["requestContext"]["requestId"] for line in recorded_lines(out)}
    assert delivered == set(ids)
    # The attempts that kill -9 interrupted ran again.
    assert interrupted <= set(entries(record_file, "finished")) - finished_before
