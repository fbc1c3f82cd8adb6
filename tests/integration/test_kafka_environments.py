"""Kafka mappings whose functions run in execution environments (SPEC section 12), against a real
broker: what a handler does to its process never stops poller, and each runtime handles a batch
with Lambda's context. The handlers (``environment_handlers``) run in other processes and record
what they saw in a file; the tests count records in (produced) and out (recorded, committed,
dead-lettered)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import uuid
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import (
    INTEGRATION,
    KAFKA_TEST_GROUP_SETTINGS,
    FakeClock,
    alive,
    committed_offsets,
    create_topic,
    produce,
    recorded_lines,
    running,
    spawn_poller,
    unique_name,
    wait_exit,
    wait_for,
)

from poller.config import Config
from poller.observability.tracing import Telemetry

pytestmark = pytest.mark.kafka

PYTHON = f"python3.{sys.version_info.minor}"  # poller's own interpreter


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Recorded:
    """What the handlers wrote to their record file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in recorded_lines(self.path)]

    def batches(self) -> list[dict[str, Any]]:
        return [entry for entry in self.entries() if "records" in entry]

    def inits(self) -> list[dict[str, Any]]:
        return [entry for entry in self.entries() if "init" in entry]

    def offsets(self) -> list[tuple[int, int]]:
        return [(partition, offset) for batch in self.batches() for partition, offset in batch["records"]]


def config_dict(
    bootstrap: str,
    topic: str,
    tmp_path: Path,
    *,
    function: dict[str, Any] | None = None,
    extra_functions: dict[str, Any] | None = None,
    **mapping: Any,
) -> dict[str, Any]:
    """A mapping from ``topic`` to function ``fn`` (poller's Python runtime, the handlers in
    tests/integration, recording to tmp_path/seen.jsonl) with a file on-failure destination."""
    settings = {
        "runtime": PYTHON,
        "code": str(INTEGRATION),
        "handler": "environment_handlers.handle",
        **(function or {}),
    }
    settings["environment"] = {"RECORD_FILE": str(tmp_path / "seen.jsonl"), **settings.get("environment", {})}
    return {
        "connections": {"kafka": {"type": "kafka", "bootstrap_servers": bootstrap}},
        "functions": {"fn": settings, **(extra_functions or {})},
        "destinations": {"dlq": {"type": "file", "path": str(tmp_path / "dead.jsonl")}},
        "mappings": {
            "m": {
                "function_name": "fn",
                "source": {
                    "type": "kafka",
                    "connection": "kafka",
                    "topics": [topic],
                    "consumer_group_id": unique_name("group"),
                    **KAFKA_TEST_GROUP_SETTINGS,
                },
                "destination_config": {"on_failure": {"destination": "dlq"}},
                **mapping,
            }
        },
        "admin": {"port": 0},
    }


def make_config(bootstrap: str, topic: str, tmp_path: Path, **options: Any) -> Config:
    return Config.model_validate(config_dict(bootstrap, topic, tmp_path, **options))


async def committed_is(bootstrap: str, config: Config, topic: str, expected: dict[int, int]) -> bool:
    group = config.mappings["m"].source.consumer_group_id
    assert group is not None
    return await committed_offsets(bootstrap, group, topic, list(expected)) == expected


def dead_letters(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in recorded_lines(tmp_path / "dead.jsonl")]


async def test_a_handler_that_exits_fails_only_its_record_and_poller_goes_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("env-exit")
    await create_topic(kafka_bootstrap, topic, 1)
    poison = 17
    await produce(
        kafka_bootstrap, topic, [(0, None, "exit" if i == poison else f"ok-{i}", None) for i in range(40)]
    )
    config = make_config(
        kafka_bootstrap,
        topic,
        tmp_path,
        batch_size=40,
        maximum_batching_window_in_seconds=1,
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=0,
    )
    recorded = Recorded(tmp_path / "seen.jsonl")
    async with running(config, FakeClock()) as app:
        await wait_for(
            lambda: committed_is(kafka_bootstrap, config, topic, {0: 40}), timeout=60, message="committed"
        )
        counts = app.runners["m"].status.counts
        assert app.runners["m"].status.ready, "poller still runs its mapping"
    [failure] = dead_letters(tmp_path)
    assert [record["offset"] for record in failure["records"]] == [poison]
    assert failure["errorInfo"]["errorType"] == "Runtime.ExitError"
    assert failure["errorInfo"]["errorMessage"] == "Runtime exited with error: exit status 3"
    assert sorted(offset for _, offset in recorded.offsets()) == sorted(set(range(40)) - {poison})
    assert counts.dead_lettered == 1
    assert os.getpid() not in {batch["pid"] for batch in recorded.batches()}


async def test_a_handler_past_its_timeout_is_killed_and_later_records_are_handled(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("env-timeout")
    await create_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, topic, [(0, None, value, None) for value in ("ok-0", "loop", "ok-2")])
    config = make_config(
        kafka_bootstrap, topic, tmp_path, function={"timeout": 2}, batch_size=1, maximum_retry_attempts=0
    )
    recorded = Recorded(tmp_path / "seen.jsonl")
    async with running(config, FakeClock()):
        await wait_for(
            lambda: committed_is(kafka_bootstrap, config, topic, {0: 3}), timeout=60, message="committed"
        )
    [failure] = dead_letters(tmp_path)
    assert [record["offset"] for record in failure["records"]] == [1]
    assert failure["errorInfo"]["errorType"] == "Sandbox.Timedout"
    assert failure["errorInfo"]["errorMessage"] == "Task timed out after 2.00 seconds"
    [looping] = [entry["looping"] for entry in recorded.entries() if "looping" in entry]
    await wait_for(lambda: not alive(looping), timeout=5, message="the looping process is gone")
    assert recorded.offsets() == [(0, 0), (0, 2)]


async def test_partitions_in_parallel_get_environments_of_their_own(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("env-parallel")
    await create_topic(kafka_bootstrap, topic, 4)
    await produce(kafka_bootstrap, topic, [(i % 4, None, f"v{i}", None) for i in range(40)])
    other = {
        "runtime": PYTHON,
        "code": str(INTEGRATION),
        "handler": "environment_handlers.handle",
        "environment": {"TABLE": "the-other-functions-table", "RECORD_FILE": str(tmp_path / "other.jsonl")},
    }
    config = make_config(
        kafka_bootstrap,
        topic,
        tmp_path,
        function={
            "memory_size": 256,
            "timeout": 30,
            "environment": {"TABLE": "fns-table", "HANDLER_SLEEP": "0.2"},
        },
        extra_functions={"other": other},
        batch_size=5,
        maximum_batching_window_in_seconds=0.2,
    )
    recorded = Recorded(tmp_path / "seen.jsonl")
    async with running(config):
        await wait_for(
            lambda: committed_is(kafka_bootstrap, config, topic, dict.fromkeys(range(4), 10)),
            timeout=60,
            message="every partition committed",
        )
    batches = recorded.batches()
    assert sorted(recorded.offsets()) == sorted((i % 4, i // 4) for i in range(40)), "each record once"
    pids = {batch["pid"] for batch in batches}
    assert len(pids) >= 2, "several environments"
    assert os.getpid() not in pids
    for pid in pids:
        spans = sorted((batch["started"], batch["ended"]) for batch in batches if batch["pid"] == pid)
        assert all(earlier[1] <= later[0] for earlier, later in pairwise(spans)), "one at a time"
    inits = Counter(entry["init"] for entry in recorded.inits())
    assert set(inits) == pids
    assert set(inits.values()) == {1}, "module code once per environment"
    for batch in batches:
        assert batch["env"]["AWS_LAMBDA_FUNCTION_NAME"] == "fn"
        assert batch["env"]["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
        assert batch["env"]["TABLE"] == "fns-table", "its own environment, never the other function's"
        assert batch["function_name"] == "fn"
        assert 0 < batch["remaining"] <= 30_000
    assert len({batch["request_id"] for batch in batches}) == len(batches)
    assert "TABLE" not in os.environ
    assert not (tmp_path / "other.jsonl").exists(), "the other function was never started"


async def test_a_handler_over_its_memory_size_is_killed_and_poller_goes_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("env-memory")
    await create_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, topic, [(0, None, value, None) for value in ("memory", "ok-1")])
    config = make_config(
        kafka_bootstrap,
        topic,
        tmp_path,
        function={"memory_size": 128},
        batch_size=1,
        maximum_retry_attempts=0,
    )
    recorded = Recorded(tmp_path / "seen.jsonl")
    async with running(config, FakeClock()) as app:
        await wait_for(
            lambda: committed_is(kafka_bootstrap, config, topic, {0: 2}), timeout=60, message="committed"
        )
        assert app.runners["m"].status.ready
    [failure] = dead_letters(tmp_path)
    assert [record["offset"] for record in failure["records"]] == [0]
    assert failure["errorInfo"]["errorType"] == "Runtime.OutOfMemory"
    assert "memory_size 128 MB" in failure["errorInfo"]["errorMessage"]
    assert recorded.offsets() == [(0, 1)]


async def test_a_failed_init_fails_the_invocation_and_is_dead_lettered(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("env-init")
    await create_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, topic, [(0, None, "v0", None)])
    config = make_config(
        kafka_bootstrap,
        topic,
        tmp_path,
        function={"environment": {"FAIL_INIT": "1"}},
        maximum_retry_attempts=0,
    )
    async with running(config, FakeClock()):
        await wait_for(
            lambda: committed_is(kafka_bootstrap, config, topic, {0: 1}), timeout=60, message="committed"
        )
    [failure] = dead_letters(tmp_path)
    assert failure["errorInfo"]["errorType"] == "RuntimeError"
    assert failure["errorInfo"]["errorMessage"] == "the module's code failed"
    assert failure["requestContext"]["approximateInvokeCount"] == 1
    assert Recorded(tmp_path / "seen.jsonl").batches() == []


async def test_an_async_handler_runs_in_an_environment_on_one_event_loop(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("env-async")
    await create_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, topic, [(0, None, f"v{i}", None) for i in range(4)])
    config = make_config(
        kafka_bootstrap,
        topic,
        tmp_path,
        function={"handler": "environment_handlers:handle_async"},
        batch_size=2,
        maximum_batching_window_in_seconds=0.2,
    )
    recorded = Recorded(tmp_path / "seen.jsonl")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running(config, telemetry=Telemetry(tracer_provider=provider)):
        await wait_for(
            lambda: committed_is(kafka_bootstrap, config, topic, {0: 4}), timeout=60, message="committed"
        )
    batches = recorded.batches()
    assert sorted(recorded.offsets()) == [(0, i) for i in range(4)]
    assert len({batch["pid"] for batch in batches}) == 1, (
        "one partition, one batch at a time: one environment"
    )
    assert len({batch["loop"] for batch in batches}) == 1
    # The invocation spans: a cold start, then warm ones; their ids are the handler's request ids,
    # and the handler saw its own span as the X-Ray trace header.
    spans = sorted(
        (s for s in exporter.get_finished_spans() if s.name == "invoke fn"), key=lambda s: s.start_time or 0
    )
    assert len(spans) == len(batches)
    by_id = {batch["request_id"]: batch for batch in batches}
    for index, span in enumerate(spans):
        assert span.attributes is not None
        assert span.attributes["faas.coldstart"] is (index == 0)
        batch = by_id[str(span.attributes["faas.invocation_id"])]
        trace_id = f"{span.context.trace_id:032x}"
        assert batch["env"]["_X_AMZN_TRACE_ID"] == (
            f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={span.context.span_id:016x};Sampled=1"
        )


async def test_awslambdaric_started_by_a_custom_runtime_bootstrap(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(INTEGRATION / "environment_handlers.py", code)
    bootstrap = code / "bootstrap"
    bootstrap.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m awslambdaric "$_HANDLER"\n')
    bootstrap.chmod(0o755)
    await check_one_batch(
        kafka_bootstrap,
        tmp_path,
        caplog,
        {
            "runtime": "provided.al2023",
            "code": str(code),
            "handler": "environment_handlers.handle",
            "timeout": 9,
        },
    )


async def test_a_node_handler_on_nodejs20(
    kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "index.mjs").write_text(
        """import { appendFileSync } from "node:fs";
export const handler = async (event, context) => {
  const records = Object.values(event.records).flat().map((record) => [record.partition, record.offset]);
  const entry = {
    pid: process.pid,
    records,
    request_id: context.awsRequestId,
    function_name: context.functionName,
    remaining: context.getRemainingTimeInMillis(),
  };
  appendFileSync(process.env.RECORD_FILE, JSON.stringify(entry) + "\\n");
};
"""
    )
    await check_one_batch(
        kafka_bootstrap,
        tmp_path,
        caplog,
        {"runtime": "nodejs20.x", "code": str(code), "handler": "index.handler", "timeout": 9},
    )


async def check_one_batch(
    bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, function: dict[str, Any]
) -> None:
    """One batch of three records through ``function``: handled in an environment with the
    function's name, the request id poller logged for it, and the time left of its timeout."""
    caplog.set_level("INFO", logger="poller.function")
    topic = unique_name("env-runtime")
    await create_topic(bootstrap, topic, 1)
    await produce(bootstrap, topic, [(0, None, f"v{i}", None) for i in range(3)])
    config = make_config(bootstrap, topic, tmp_path, function=function, maximum_batching_window_in_seconds=1)
    recorded = Recorded(tmp_path / "seen.jsonl")
    async with running(config):
        await wait_for(
            lambda: committed_is(bootstrap, config, topic, {0: 3}), timeout=60, message="committed"
        )
    [batch] = recorded.batches()
    assert batch["records"] == [[0, 0], [0, 1], [0, 2]]
    assert batch["pid"] != os.getpid()
    assert batch["function_name"] == "fn"
    assert 0 < batch["remaining"] <= 9000
    uuid.UUID(batch["request_id"])
    started = [
        r.getMessage() for r in caplog.records if getattr(r, "request_id", None) == batch["request_id"]
    ]
    assert started[0] == f"START RequestId: {batch['request_id']} Version: $LATEST"
    assert started[-1].startswith(f"REPORT RequestId: {batch['request_id']}")


async def test_provisioned_environments_are_ready_before_readyz_used_first_and_die_with_poller(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("env-provisioned")
    await create_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, topic, [(0, None, f"v{i}", None) for i in range(10)])
    port = free_port()
    settings = config_dict(
        kafka_bootstrap,
        topic,
        tmp_path,
        function={"provisioned_concurrent_executions": 2, "reserved_concurrent_executions": 4},
        batch_size=2,
        maximum_batching_window_in_seconds=0.2,
    )
    settings["admin"] = {"port": port}
    path = tmp_path / "poller.yaml"
    path.write_text(json.dumps(settings))  # JSON is YAML
    recorded = Recorded(tmp_path / "seen.jsonl")
    process = spawn_poller(path, {})
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, timeout=60, message="/readyz turned 200")
        inits = recorded.inits()
        assert [entry["type"] for entry in inits] == ["provisioned-concurrency"] * 2, "both before /readyz"
        provisioned = {entry["init"] for entry in inits}
        await wait_for(lambda: len(recorded.offsets()) >= 10, timeout=60, message="every record handled")
        assert sorted(recorded.offsets()) == [(0, i) for i in range(10)]
        assert {batch["pid"] for batch in recorded.batches()} <= provisioned, "provisioned ones first"
        assert len(recorded.inits()) == 2, "no on-demand environment was needed"
        process.send_signal(signal.SIGKILL)
        assert await wait_exit(process, 10) == -signal.SIGKILL
        await wait_for(
            lambda: not any(alive(pid) for pid in provisioned),
            timeout=10,
            message="no environment outlives poller",
        )
    finally:
        if process.poll() is None:
            process.kill()
