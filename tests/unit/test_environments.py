"""Functions in execution environments, without a broker: the runtimes (Python with awslambdaric,
a bash + curl bootstrap, Node.js), what a handler sees, isolation, the pool's reuse, limits and
provisioned environments, failures, logs, and what ``poller validate`` checks."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest
from support import alive, started_function, wait_for

from poller.config import load_config
from poller.engine.outcome import InvocationError
from poller.errors import ConfigError
from poller.observability.metrics import FunctionCollector
from poller.runtime.environments import environment as environment_module
from poller.runtime.environments.pool import FunctionStartError
from poller.runtime.environments.runtimes import check
from poller.runtime.function import FunctionRuntime

FIXTURES = Path(__file__).parent / "fixtures" / "environments"
PYTHON_CODE = FIXTURES / "python"
PYTHON = f"python3.{sys.version_info.minor}"  # poller's own interpreter


@dataclass
class Report:
    coldstart: bool | None = None
    invocation_id: str | None = None


def started(name: str = "fn", **settings: Any) -> AbstractAsyncContextManager[FunctionRuntime]:
    """A started function (python, the fixtures' code unless ``settings`` say otherwise)."""
    return started_function(name, {"runtime": PYTHON, "code": str(PYTHON_CODE), **settings})


async def test_a_python_handler_sees_lambdas_context_and_variables_in_its_own_process() -> None:
    settings = {
        "handler": "envfn.describe",
        "timeout": 7,
        "memory_size": 256,
        # A reserved variable cannot be overridden by the function's environment, as on Lambda.
        "environment": {"TABLE": "orders", "AWS_LAMBDA_FUNCTION_NAME": "hijacked"},
    }
    async with started(**settings) as function:
        first, second = Report(), Report()
        one = await function.invoke({"n": 1}, report=first)
        two = await function.invoke({"n": 2}, report=second)
    assert one["pid"] == two["pid"] == one["init_pid"] != os.getpid(), "one warm environment, not poller"
    assert (first.coldstart, second.coldstart) == (True, False)
    assert one["aws_request_id"] == first.invocation_id != two["aws_request_id"]
    assert one["function_name"] == "fn"
    assert one["memory_limit_in_mb"] == "256", "a string, as awslambdaric reads it from the environment"
    assert one["invoked_function_arn"] == "arn:aws:lambda:us-east-1:000000000000:function:fn"
    assert 6000 < one["remaining"] <= 7000
    assert one["cwd"] == str(PYTHON_CODE)
    env = one["env"]
    assert env["TABLE"] == "orders"
    assert "TABLE" not in os.environ, "a function's environment is not poller's"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fn"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/fn"
    assert "[$LATEST]" in env["AWS_LAMBDA_LOG_STREAM_NAME"]
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:")
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_EXECUTION_ENV"] == f"AWS_Lambda_{PYTHON}"
    assert env["LAMBDA_TASK_ROOT"] == str(PYTHON_CODE)
    assert env["_HANDLER"] == "envfn.describe"
    assert env["TZ"] == ":UTC"
    # The runtime mapped poller's memory file for its events (event_memory.py) and speaks to the
    # API over the socket pair poller gave it (api.py), not over TCP; neither their variables nor
    # their descriptors reach the handler or a process it starts.
    assert one["event_memory_mapped"]
    assert one["sockets"] == ["AF_UNIX"]
    assert one["poller_variables"] == []
    assert not [name for name in one["inherited_descriptors"] if "memfd" in name or "socket" in name]
    # awslambdaric's marshalling: Decimal and int keys, as on Lambda.
    assert one["total"] == 12.5
    assert one["7"] == "an int key"


async def test_an_async_handler_runs_on_one_event_loop_for_the_environments_life() -> None:
    async with started(handler="envfn:coroutine") as function:
        first = await function.invoke({})
        second = await function.invoke({})
        failed = await function.invoke({"raise": True})
    assert first["pid"] == second["pid"]
    assert first["loop"] == second["loop"], "the module's loop-bound queue survived"
    assert (first["queued"], second["queued"]) == (1, 2)
    assert isinstance(failed, InvocationError)
    assert (failed.error_type, failed.message) == ("ValueError", "raised in a coroutine")
    assert any("coroutine" in line for line in failed.stack_trace)
    assert not any("asyncio" in line for line in failed.stack_trace), "the handler's frames only"


async def test_one_invocation_at_a_time_per_environment_up_to_the_reserved_limit() -> None:
    async with started(handler="envfn.slow", reserved_concurrent_executions=2) as function:
        results = await asyncio.gather(*(function.invoke({"seconds": 0.3}) for _ in range(6)))
        assert function.pool is not None
        assert function.pool.busy == 0
        assert function.pool.stats.cold_starts == 2
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for result in results:
        by_pid.setdefault(result["pid"], []).append((result["started"], result["ended"]))
    assert len(by_pid) == 2, "a new environment only while all are busy, never past the limit"
    for spans in by_pid.values():
        spans.sort()
        assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))
    assert len({result["initialised"] for result in results}) == 2, "module code once per environment"


async def test_reserved_concurrency_zero_throttles_every_invocation() -> None:
    async with started(handler="envfn.describe", reserved_concurrent_executions=0) as function:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(function.invoke({}), 0.3)
        assert function.pool is not None
        assert function.pool.environments() == []


@pytest.mark.parametrize(
    ("handler", "error_type", "message"),
    [
        ("no_such_module.handler", "Runtime.ImportModuleError", "Unable to import module 'no_such_module'"),
        ("envfn.missing", "Runtime.HandlerNotFound", "Handler 'missing' missing on module 'envfn'"),
        ("broken_at_import.handler", "RuntimeError", "the module's code failed at import"),
    ],
)
async def test_a_failed_init_fails_the_invocation_with_the_runtimes_error_and_is_discarded(
    handler: str, error_type: str, message: str
) -> None:
    async with started(handler=handler) as function:
        report = Report()
        result = await function.invoke({}, report=report)
        again = await function.invoke({})
        assert function.pool is not None
        assert function.pool.environments() == []
        assert function.pool.stats.init_failures == 2
    assert isinstance(result, InvocationError)
    assert result.error_type == error_type
    assert message in result.message
    assert report.coldstart is True
    assert isinstance(again, InvocationError)
    assert again.error_type == error_type, "every invocation gets a new environment"


async def test_a_response_over_six_mb_fails_and_the_next_invocation_is_cold() -> None:
    async with started(handler="envfn.too_large") as function:
        result = await function.invoke({})
        assert isinstance(result, InvocationError)
        assert result.error_type == "Function.ResponseSizeTooLarge"
        assert "exceeded maximum allowed payload size (6291556 bytes)" in result.message
        report = Report()
        again = await function.invoke({}, report=report)
        assert isinstance(again, InvocationError)
        assert again.error_type == "Function.ResponseSizeTooLarge"
        assert report.coldstart is True


async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    async with started(handler="envfn.fork_and_hang", timeout=1) as function:
        result = await function.invoke({"pids": str(pids)})
        assert function.pool is not None
        assert function.pool.environments() == []
    assert isinstance(result, InvocationError)
    assert (result.error_type, result.message) == ("Sandbox.Timedout", "Task timed out after 1.00 seconds")
    environment, child = map(int, pids.read_text().split())
    # The child the handler forked is in the environment's group: gone with it (reaped by init).
    await wait_for(lambda: not alive(environment) and not alive(child), timeout=5, message="processes gone")


async def test_without_pidfd_open_a_thread_sees_each_exit_crash_and_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A kernel before 5.3, or a seccomp profile or sandbox that refuses pidfd_open: a thread per
    environment waits for its exit instead, and nothing else changes."""

    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refused)
    async with started(handler="envfn.exit_now") as function:
        crashed = await function.invoke({"status": 3})
    assert isinstance(crashed, InvocationError)
    assert crashed.error_type == "Runtime.ExitError"
    assert crashed.message == "Runtime exited with error: exit status 3"

    pids = tmp_path / "pids"
    async with started(handler="envfn.fork_and_hang", timeout=1) as function:
        timed_out = await function.invoke({"pids": str(pids)})
    assert isinstance(timed_out, InvocationError)
    assert timed_out.error_type == "Sandbox.Timedout"
    environment, child = map(int, pids.read_text().split())
    await wait_for(lambda: not alive(environment) and not alive(child), timeout=5, message="processes gone")

    async with started(handler="envfn.describe") as function:
        pool = function.pool
        assert pool is not None
        first = (await function.invoke({}))["pid"]
        assert (await function.invoke({}))["pid"] == first, "warm"
        os.kill(first, signal.SIGKILL)  # while idle: the pool lets it go
        await wait_for(lambda: not pool.environments(), timeout=5, message="the killed environment let go")
        second = (await function.invoke({}))["pid"]
        assert second != first
    assert not alive(second)
    await wait_for(
        lambda: not any(thread.name.startswith("environment-") for thread in threading.enumerate()),
        timeout=5,
        message="the threads that watched the environments ended",
    )


async def test_an_idle_environment_is_stopped_after_its_idle_timeout() -> None:
    async with started(handler="envfn.describe", idle_timeout_in_seconds=1) as function:
        pid = (await function.invoke({}))["pid"]
        pool = function.pool
        assert pool is not None
        assert pool.idle == 1
        await wait_for(lambda: not pool.environments(), timeout=10, message="idle environment stopped")
        await wait_for(lambda: not alive(pid), timeout=5, message="its process gone")
        assert (await function.invoke({}))["pid"] != pid, "a cold start after that"


async def test_provisioned_environments_are_used_first_and_replaced_when_they_die() -> None:
    async with started(handler="envfn.describe", provisioned_concurrent_executions=1) as function:
        pool = function.pool
        assert pool is not None
        [provisioned] = pool.environments()
        assert provisioned.provisioned
        assert provisioned.pid is not None
        report = Report()
        seen = await function.invoke({}, report=report)
        assert seen["pid"] == provisioned.pid
        assert seen["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"] == "provisioned-concurrency"
        assert report.coldstart is False, "its init happened at start"
        os.kill(provisioned.pid, signal.SIGKILL)
        await wait_for(
            lambda: [e for e in pool.environments() if e.provisioned and e.alive and e is not provisioned],
            timeout=10,
            message="a replacement provisioned environment",
        )
        replaced = await function.invoke({})
        assert replaced["pid"] != provisioned.pid
        assert replaced["env"]["AWS_LAMBDA_INITIALIZATION_TYPE"] == "provisioned-concurrency"
        assert pool.stats.cold_starts == 0


async def test_closing_a_function_stops_its_environments() -> None:
    async with started(handler="envfn.slow") as function:
        pids = {
            result["pid"]
            for result in await asyncio.gather(*(function.invoke({"seconds": 0.2}) for _ in range(3)))
        }
    assert len(pids) == 3
    await wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5, message="environments stopped")


async def test_output_becomes_log_lines_with_the_request_id_between_start_end_and_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="poller.function")
    async with started(handler="envfn.describe", memory_size=192) as function:
        report = Report()
        result = await function.invoke_payload(b"{}", report=report)
    request_id = report.invocation_id
    lines = [
        (record.getMessage(), getattr(record, "request_id", None))
        for record in caplog.records
        if record.name == "poller.function"
    ]
    mine = [message for message, rid in lines if rid == request_id]
    assert mine[0] == f"START RequestId: {request_id} Version: $LATEST"
    assert f"describing {request_id}" in mine
    assert mine[-2] == f"END RequestId: {request_id}"
    assert mine[-1].startswith(f"REPORT RequestId: {request_id}\tDuration: ")
    assert "\tMemory Size: 192 MB\tMax Memory Used: " in mine[-1]
    assert "\tInit Duration: " in mine[-1], "a cold start reports its init"
    assert all(getattr(r, "function", None) == "fn" for r in caplog.records if r.name == "poller.function")
    # The invocation's own text, for the Invoke API's log tail.
    assert result.log.tail().splitlines() == mine
    assert result.max_memory_used > 0


async def test_a_bash_and_curl_bootstrap_runs_as_a_custom_runtime() -> None:
    settings = {"runtime": "provided", "code": str(FIXTURES / "curl"), "handler": "function.handler"}
    async with started(**settings) as function:
        report = Report()
        result = await function.invoke({"hello": "world"}, report=report)
        second = await function.invoke({"n": 2})
    assert result == {
        "request_id": report.invocation_id,
        "handler": "function.handler",
        "function": "fn",
        "event": {"hello": "world"},
    }
    assert second["event"] == {"n": 2}


async def test_node_handlers_commonjs_es_modules_and_callbacks_with_lambdas_context() -> None:
    node = {"runtime": "nodejs20.x", "code": str(FIXTURES / "node"), "memory_size": 256, "timeout": 5}
    async with started(handler="index.handler", **node) as function:
        report = Report()
        first = await function.invoke({"a": 1}, report=report)
        second = await function.invoke({"a": 2})
        failed = await function.invoke({"fail": True})
    assert first["functionName"] == "fn"
    assert first["awsRequestId"] == report.invocation_id
    assert first["memoryLimitInMB"] == "256"
    assert 4000 < first["remaining"] <= 5000
    assert first["invokedFunctionArn"].endswith(":function:fn")
    assert first["taskRoot"] == str(FIXTURES / "node")
    assert first["event"] == {"a": 1}
    assert first["pid"] == second["pid"] != os.getpid()
    assert second["initialised"] == 1, "module code once per environment"
    assert isinstance(failed, InvocationError)
    assert (failed.error_type, failed.message) == ("TypeError", "failed on purpose")
    assert failed.stack_trace[0] == "TypeError: failed on purpose"
    async with started(handler="esm.handler", **node) as function:
        assert await function.invoke({"numbers": [1, 2, 3]}) == {"module": "esm", "sum": 6}
    async with started(handler="index.callback", **node) as function:
        assert (await function.invoke({}))["via"] == "callback"
    async with started(handler="index.nothing", **node) as function:
        missing = await function.invoke({})
        assert isinstance(missing, InvocationError)
        assert missing.error_type == "Runtime.HandlerNotFound"


def test_validate_checks_what_it_can_without_running_code(tmp_path: Path) -> None:
    python = str(PYTHON_CODE)
    assert check(PYTHON, "envfn.describe", python) == []
    assert check(PYTHON, "envfn:describe", python) == []
    assert check(PYTHON, "handlers.echo.handler", python) == [], "installed or on the path"
    # broken_at_import raises when imported: it is found, never run.
    assert check(PYTHON, "broken_at_import.handler", python) == []
    assert check(PYTHON, "nothing_here.handler", python) == [
        ("handler", f"no module 'nothing_here' under {PYTHON_CODE}, on PYTHONPATH or installed")
    ]
    assert check(PYTHON, "envfn.describe", str(tmp_path / "absent")) == [
        ("code", f"{tmp_path / 'absent'} is not a directory")
    ]
    assert check("python3.99", "envfn.describe", python)[0][0] == "runtime"
    node = str(FIXTURES / "node")
    assert check("nodejs20.x", "index.handler", node) == []
    assert check("nodejs20.x", "esm.handler", node) == []
    assert check("nodejs20.x", "missing.handler", node)[0][0] == "handler"
    assert check("provided.al2023", "x", str(FIXTURES / "curl")) == []
    assert check("provided.al2023", "x", str(tmp_path))[0] == (
        "code",
        f"no bootstrap in {tmp_path} (a custom runtime starts CODE/bootstrap)",
    )
    (tmp_path / "bootstrap").write_text("#!/bin/sh\n")
    assert check("provided", "x", str(tmp_path)) == [
        ("code", f"{tmp_path / 'bootstrap'} is not executable (chmod +x)")
    ]


def test_poller_invoke_prints_a_decimal_result_and_stops_its_environment(tmp_path: Path) -> None:
    record = tmp_path / "seen.jsonl"
    settings = {
        "functions": {
            "fn": {
                "runtime": PYTHON,
                "code": str(PYTHON_CODE),
                "handler": "envfn.total",
                "environment": {"RECORD_FILE": str(record)},
            }
        }
    }
    path = tmp_path / "poller.yaml"
    path.write_text(json.dumps(settings))
    event = {"amounts": ["12.25", "0.25"]}
    done = subprocess.run(
        [sys.executable, "-m", "poller", "invoke", "fn", "-c", str(path)],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"total": 12.50, "7": "seven"}', "as the Python runtime serialised it"
    [pid] = [int(line) for line in record.read_text().split()]
    assert not alive(pid), "poller invoke stopped the environment before it exited"


async def test_a_provisioned_environment_that_fails_its_init_stops_the_start() -> None:
    with pytest.raises(ExceptionGroup) as raised:  # through the TaskGroup of started()
        async with started(handler="broken_at_import.handler", provisioned_concurrent_executions=2):
            pytest.fail("the function started")
    [error] = raised.value.exceptions
    assert isinstance(error, FunctionStartError)
    assert str(error) == (
        "function fn: a provisioned environment failed its init: RuntimeError: the module's code failed at import"
    )


async def test_metrics_count_cold_starts_init_durations_and_environments() -> None:
    registry = CollectorRegistry()
    async with started(handler="envfn.slow", provisioned_concurrent_executions=1) as function:
        registry.register(FunctionCollector({"fn": function}))
        await asyncio.gather(*(function.invoke({"seconds": 0.1}) for _ in range(2)))
        text = generate_latest(registry).decode()
    assert 'poller_function_cold_starts_total{function="fn"} 1.0' in text, "one beyond the provisioned one"
    assert 'poller_function_init_duration_seconds_count{function="fn"} 2.0' in text
    assert 'poller_function_init_failures_total{function="fn"} 0.0' in text
    assert 'poller_function_environments{function="fn",state="busy"} 0.0' in text
    assert 'poller_function_environments{function="fn",state="idle"} 2.0' in text
    assert 'poller_function_provisioned_environments{function="fn"} 1.0' in text


def test_validate_reports_environment_functions_by_key_and_lets_them_share_variable_names(
    tmp_path: Path,
) -> None:
    functions = {
        "fn": {
            "runtime": PYTHON,
            "code": str(PYTHON_CODE),
            "handler": "envfn.describe",
            "environment": {"TABLE": "a"},
        },
        "other": {
            "runtime": PYTHON,
            "code": str(PYTHON_CODE),
            "handler": "envfn.slow",
            "environment": {"TABLE": "b"},
        },
        "node": {"runtime": "nodejs20.x", "code": str(FIXTURES / "node"), "handler": "index.handler"},
    }
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps({"functions": functions}))
    assert set(load_config(good, environ={}).functions) == {"fn", "other", "node"}
    functions["fn"]["handler"] = "nowhere.handler"
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"functions": functions}))
    with pytest.raises(ConfigError) as raised:
        load_config(bad, environ={})
    assert raised.value.problems == [
        f"{bad}:1: functions.fn.handler: no module 'nowhere' under {PYTHON_CODE}, on PYTHONPATH or installed"
    ]


async def test_an_init_past_its_limit_is_killed_and_fails_the_invocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(environment_module, "INIT_TIMEOUT", 0.5)  # Lambda's 10 s, shorter for the test
    async with started(handler="slow_at_import.handler") as function:
        result = await function.invoke({})
        assert function.pool is not None
        assert function.pool.environments() == []
    assert isinstance(result, InvocationError)
    assert (result.error_type, result.message) == ("Sandbox.Timedout", "Init timed out after 0.50 seconds")


async def test_the_trace_context_reaches_the_handler_as_an_x_ray_header() -> None:
    tracer = TracerProvider().get_tracer("test")
    async with started(handler="envfn.describe") as function:
        with tracer.start_as_current_span("invoke") as span:
            seen = await function.invoke({})
        untraced = await function.invoke({})
    context = span.get_span_context()
    trace_id = f"{context.trace_id:032x}"
    assert (
        seen["env"]["_X_AMZN_TRACE_ID"]
        == f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={context.span_id:016x};Sampled=1"
    )
    assert untraced["env"]["_X_AMZN_TRACE_ID"] is None, "per invocation: not left over from the last one"
