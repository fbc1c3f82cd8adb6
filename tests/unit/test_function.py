"""The function runtime: loading handlers, Lambda's context, timeouts, concurrency, isolation.

Of the in-process runner, ``runtime: inline``: its threads, its timeouts and its copies of the event
are what these tests are about (count_concurrency counts in this process's memory). Execution
environments have their own tests, test_environments.py and tests/integration."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from poller.config import Function
from poller.engine.outcome import InvocationError
from poller.errors import HandlerLoadError
from poller.runtime.function import FunctionRuntime, load_handler

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fixtures_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))


def runtime(handler: str, **settings: object) -> FunctionRuntime:
    return FunctionRuntime(
        "fn",
        Function.model_validate(
            {"runtime": "inline", "handler": f"handlers_for_tests:{handler}", **settings}
        ),
    )


async def test_context_has_lambdas_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIXTURE_TABLE", raising=False)
    function = runtime(
        "describe_context", timeout=7, memory_size=256, environment={"FIXTURE_TABLE": "orders"}
    )
    first = await function.invoke({})
    second = await function.invoke({})
    assert first["function_name"] == "fn"
    assert first["function_version"] == "$LATEST"
    assert first["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:fn"
    assert first["memory_limit_in_mb"] == 256
    assert first["log_group_name"] == "/aws/lambda/fn"
    assert "[$LATEST]" in first["log_stream_name"]
    assert 6000 < first["remaining"] <= 7000
    assert first["aws_request_id"] != second["aws_request_id"]
    assert first["env"] == "orders"


async def test_async_handler_past_its_timeout_fails_as_sandbox_timedout() -> None:
    result = await runtime("sleep_async", timeout=1).invoke({"seconds": 5})
    assert isinstance(result, InvocationError)
    assert result.error_type == "Sandbox.Timedout"


async def test_a_timeout_the_handler_raises_itself_is_its_own_error() -> None:
    result = await runtime("own_timeout", timeout=5).invoke({})
    assert isinstance(result, InvocationError)
    assert (result.error_type, result.message) == ("TimeoutError", "the handler's own HTTP call timed out")


async def test_sync_handler_runs_off_the_event_loop_and_times_out() -> None:
    function = runtime("sleep_sync", timeout=1)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    result = await function.invoke({"seconds": 3})
    ticker.cancel()
    assert isinstance(result, InvocationError)
    assert result.error_type == "Sandbox.Timedout"
    assert time.monotonic() - started < 2
    assert ticks > 50, "the loop kept running while the handler slept"


async def test_reserved_concurrency_limits_parallel_invocations() -> None:
    import handlers_for_tests

    handlers_for_tests.PEAK = 0
    function = runtime("count_concurrency", reserved_concurrent_executions=2)
    await asyncio.gather(*(function.invoke({}) for _ in range(6)))
    assert handlers_for_tests.PEAK == 2


async def test_handler_gets_its_own_copy_of_the_event() -> None:
    event = {"records": {"t-0": [{"offset": 1}]}}
    assert await runtime("mutate").invoke(event) is None
    assert event == {"records": {"t-0": [{"offset": 1}]}}
    # A fresh event (built for this invocation by an EventFormat) is handed over as it is.
    assert await runtime("mutate").invoke(event, fresh=True) is None
    assert event == {"records": {}}


async def test_unserialisable_result_and_thread_exit_are_failed_invocations() -> None:
    result = await runtime("unserialisable").invoke({})
    assert isinstance(result, InvocationError)
    assert result.error_type == "Runtime.MarshalError"
    exited = await runtime("exit_thread").invoke({})
    assert isinstance(exited, InvocationError)
    assert exited.error_type == "SystemExit"


async def test_async_callable_objects_are_awaited() -> None:
    assert await runtime("callable_object").invoke({}) == "called"


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        ("no_such_module_xyz:handler", "cannot import module 'no_such_module_xyz'"),
        ("handlers_for_tests:missing", "has no attribute 'missing'"),
        ("handlers_for_tests:not_callable", "is not callable"),
        ("handlers_for_tests.sleep_sync", None),  # Lambda's module.function form
    ],
)
def test_load_handler(handler: str, reason: str | None) -> None:
    if reason is None:
        assert callable(load_handler(handler))
    else:
        with pytest.raises(HandlerLoadError, match=reason):
            load_handler(handler)


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "poller", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_sample_event_is_a_self_managed_kafka_event() -> None:
    done = cli("sample-event", "kafka")
    assert done.returncode == 0
    event = json.loads(done.stdout)
    assert event["eventSource"] == "SelfManagedKafka"
    [(key, records)] = event["records"].items()
    assert key == "orders-0"
    assert {"topic", "partition", "offset", "timestamp", "timestampType", "key", "value", "headers"} <= set(
        records[0]
    )


def test_invoke_prints_the_result_and_fails_with_exit_1(tmp_path: Path) -> None:
    event = cli("sample-event", "kafka").stdout
    ok = cli("invoke", "orders", "-c", "config/mappings.yaml", stdin=event)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"processed": 2}
    poisoned = json.loads(event)
    poisoned["records"]["orders-0"][0]["value"] = "cG9pc29u"  # base64 of "poison"
    path = tmp_path / "event.json"
    path.write_text(json.dumps(poisoned))
    failed = cli("invoke", "orders", "-c", "config/dev.yaml", "--event", str(path))
    assert failed.returncode == 1
    error = json.loads(failed.stdout)
    assert error["errorType"] == "PoisonRecordError"
    assert error["stackTrace"]


def test_invoke_unknown_function_is_a_usage_error() -> None:
    done = cli("invoke", "nope", "-c", "config/dev.yaml", stdin="{}")
    assert done.returncode == 2
    assert "functions.nope" in done.stderr
