"""Invoking without waiting for concurrency (``invoke_payload(..., wait=False)``), what a
synchronous caller needs to be throttled as Lambda throttles it: no invocation, and Throttled,
while ``reserved_concurrent_executions`` invocations are in flight (always, with 0); an invocation
as usual otherwise. In environments and inline."""

from __future__ import annotations

import asyncio
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import started_function, wait_for

from poller.errors import Throttled
from poller.runtime.environments.api import Response
from poller.runtime.function import FunctionRuntime

FIXTURES = Path(__file__).parent / "fixtures"
PYTHON_CODE = FIXTURES / "environments" / "python"
PYTHON = f"python3.{sys.version_info.minor}"


def started(**settings: Any) -> AbstractAsyncContextManager[FunctionRuntime]:
    return started_function("fn", settings)


def slow_function(runtime: str, reserved: int) -> dict[str, Any]:
    if runtime == "inline":
        return {
            "runtime": "inline",
            "handler": "handlers_for_tests:sleep_sync",
            "reserved_concurrent_executions": reserved,
        }
    return {
        "runtime": PYTHON,
        "code": str(PYTHON_CODE),
        "handler": "envfn.slow",
        "reserved_concurrent_executions": reserved,
    }


@pytest.fixture(autouse=True)
def _fixtures_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))


def in_flight(function: FunctionRuntime) -> int:
    if function.pool is not None:
        return function.pool.busy
    assert function._slots is not None
    return 1 if function._slots.locked() else 0


@pytest.mark.parametrize("runtime", ["inline", PYTHON])
async def test_no_invocation_while_the_reserved_concurrency_is_in_flight(runtime: str) -> None:
    async with started(**slow_function(runtime, 1)) as function:
        first = asyncio.create_task(function.invoke_payload(orjson.dumps({"seconds": 0.5})))
        await wait_for(lambda: in_flight(function) == 1, message="the first invocation running")
        with pytest.raises(Throttled):
            await function.invoke_payload(orjson.dumps({"seconds": 0}), wait=False)
        await first
        answered = await function.invoke_payload(orjson.dumps({"seconds": 0}), wait=False)
    assert isinstance(answered.answer, Response), "concurrency back: an ordinary invocation"
    if function.pool is not None:
        assert function.pool.stats.cold_starts == 1, "the throttled call started no environment"


@pytest.mark.parametrize("runtime", ["inline", PYTHON])
async def test_reserved_concurrency_zero_throttles_at_once(runtime: str) -> None:
    async with started(**slow_function(runtime, 0)) as function:
        with pytest.raises(Throttled):
            await asyncio.wait_for(function.invoke_payload(b'{"seconds": 0}', wait=False), 5)
        if function.pool is not None:
            assert function.pool.environments() == [], "nothing started for it"
