"""Tumbling windows: the pure rules (alignment, runs, the response's state) and the real runner over
an in-memory stream with a real SQLite window store: state carried from invocation to invocation,
one final invocation per window, a restart in the middle of a window, early termination, a missing
state, and a shard that ends.

The function is ``runtime: inline`` on purpose: the tests steer the handler from this process to
give each invocation the answer the case needs; tests/integration/test_tumbling_windows.py runs
windows in execution environments against real brokers."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from support import FakeClock, wait_for

from poller.config import Config
from poller.engine.outcome import Failed, Succeeded, outcome_of
from poller.engine.records import Record
from poller.engine.windows import MAX_STATE_BYTES, Window, runs_by_window
from poller.runtime import runner as runner_module
from poller.runtime.function import FunctionRuntime
from poller.runtime.runner import MappingRunner
from poller.runtime.window_store import SqliteWindowStore
from poller.sources.memory import MemoryStream

FIXTURES = Path(__file__).parent / "fixtures"
LENGTH = 60


def record(position: int, timestamp: float) -> Record:
    return Record("p", "p", position, f"p:{position}", {"v": position}, 10, timestamp)


# --- the rules -----------------------------------------------------------------------------------


def test_windows_are_aligned_to_multiples_of_their_length_in_utc() -> None:
    window = Window.of(1_700_000_123.4, 60)
    assert (window.start, window.end) == (1_700_000_100, 1_700_000_160)
    assert window.describe() == {"start": "2023-11-14T22:15:00Z", "end": "2023-11-14T22:16:00Z"}


def test_records_are_cut_into_runs_of_one_window_and_late_ones_join_the_open_window() -> None:
    records = [record(0, 5), record(1, 59), record(2, 61), record(3, 30), record(4, 125)]
    runs = runs_by_window(records, 60, current=None)
    assert [(w.start, [r.position for r in rs]) for w, rs in runs] == [(0, [0, 1]), (60, [2, 3]), (120, [4])]
    [(window, _)] = runs_by_window([record(5, 10)], 60, current=Window(60, 120))
    assert window.start == 60, "never back into a window that already closed"


def test_a_window_invocation_must_return_a_state_object() -> None:
    def outcome(result: Any) -> Any:
        return outcome_of(
            result, report_batch_item_failures=False, batch_keys=[], item_key=lambda _: None, window=True
        )

    assert outcome({"state": {"n": 1}}) == Succeeded({"n": 1})
    for result in (None, {}, {"state": 3}, [1]):
        failed = outcome(result)
        assert isinstance(failed, Failed)
        assert failed.error.error_type == "InvalidTumblingWindowResponse"


# --- the runner ----------------------------------------------------------------------------------

INVOCATIONS: list[dict[str, Any]] = []


async def count_by_window(event: dict[str, Any]) -> dict[str, Any]:
    """Counts the records of each window in its state; returns a huge state past 'big'."""
    INVOCATIONS.append(event)
    state = dict(event["state"])
    state["n"] = state.get("n", 0) + len(event["Records"])
    if any(entry.get("big") for entry in event["Records"]):
        state["padding"] = "x" * (MAX_STATE_BYTES + 1)
    return {"state": state}


async def no_state(event: dict[str, Any]) -> None:
    INVOCATIONS.append(event)


@pytest.fixture(autouse=True)
def _handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setattr(runner_module, "RECONNECT_FIRST", 0.01)
    INVOCATIONS.clear()
    behave(count_by_window)


def behave(behaviour: Any) -> None:
    import orchestration_handlers

    orchestration_handlers.BEHAVIOUR["current"] = behaviour


def make_runner(source: MemoryStream, store_path: Path, clock: FakeClock, **mapping: Any) -> MappingRunner:
    config = Config.model_validate(
        {
            "connections": {"k": {"type": "kafka", "bootstrap_servers": "127.0.0.1:1"}},
            "functions": {"fn": {"runtime": "inline", "handler": "orchestration_handlers:handler"}},
            "mappings": {
                "m": {
                    "function_name": "fn",
                    "source": {"type": "kafka", "connection": "k", "topics": ["t"]},
                    "batch_size": 10,
                    "maximum_batching_window_in_seconds": 0,
                    "tumbling_window_in_seconds": LENGTH,
                    **mapping,
                }
            },
        }
    )
    function = FunctionRuntime("fn", config.functions["fn"])
    store = SqliteWindowStore(str(store_path), "m/t")
    return MappingRunner("m", config.mappings["m"], source, function, None, clock=clock, window_store=store)


@asynccontextmanager
async def running(runner: MappingRunner) -> AsyncIterator[None]:
    task = asyncio.create_task(runner.run())
    try:
        await wait_for(lambda: runner.status.state == "Enabled" or task.done(), timeout=2, message="started")
        yield
    finally:
        runner.stop()
        await asyncio.wait_for(task, 5)


def finals(partition: str = "t-0") -> list[dict[str, Any]]:
    return [e for e in INVOCATIONS if e["isFinalInvokeForWindow"] and e["partition"] == partition]


async def test_state_goes_from_invocation_to_invocation_and_each_window_closes_once(tmp_path: Path) -> None:
    clock = FakeClock()
    now = clock.now()
    first, second = Window.of(now - 3 * LENGTH, LENGTH), Window.of(now - 2 * LENGTH, LENGTH)
    source = MemoryStream()
    source.put("t-0", *({"v": i} for i in range(25)), timestamp=first.start + 1)
    source.put("t-0", *({"v": i} for i in range(25, 32)), timestamp=second.start + 1)
    runner = make_runner(source, tmp_path / "windows.db", clock)
    async with running(runner):
        await wait_for(lambda: len(finals()) == 2, timeout=3, message="both windows closed")
    windows = [e["window"]["start"] for e in INVOCATIONS]
    assert windows == sorted(windows), "a window's invocations, then the next window's"
    for window, count in ((first, 25), (second, 7)):
        mine = [e for e in INVOCATIONS if e["window"] == window.describe()]
        assert mine[0]["state"] == {}, "a window opens empty"
        assert [e["isFinalInvokeForWindow"] for e in mine] == [False] * (len(mine) - 1) + [True]
        assert mine[-1]["Records"] == []
        assert mine[-1]["state"] == {"n": count}, "the final state counts exactly the window's records"
        assert all(e["partition"] == "t-0" and not e["isWindowTerminatedEarly"] for e in mine)
    assert source.committed_position("t-0") == 32
    assert runner.windows is not None
    assert runner.windows.open_windows() == {}


async def test_a_restart_resumes_the_window_and_never_counts_a_record_twice(tmp_path: Path) -> None:
    clock = FakeClock()
    store = tmp_path / "windows.db"
    stamp = clock.now()
    source = MemoryStream()
    source.put("t-0", *({"v": i} for i in range(10)), timestamp=stamp)
    runner = make_runner(source, store, clock)
    async with running(runner):
        await wait_for(lambda: source.committed_position("t-0") == 10, timeout=2, message="first part")
    assert finals() == [], "the window is still open"
    # After the restart the source gives the first ten records again (their commit was lost).
    again = MemoryStream()
    again.put("t-0", *({"v": i} for i in range(20)), timestamp=stamp)
    runner = make_runner(again, store, clock)
    async with running(runner):
        await wait_for(lambda: again.committed_position("t-0") == 20, timeout=2, message="second part")
        clock.slept += 2 * LENGTH  # the window's end passes
        await wait_for(lambda: finals(), timeout=3, message="closed")
    assert finals()[0]["state"] == {"n": 20}


async def test_a_window_assigned_with_nothing_left_to_read_still_closes(tmp_path: Path) -> None:
    clock = FakeClock()
    store = tmp_path / "windows.db"
    source = MemoryStream()
    source.put("t-0", *({"v": i} for i in range(3)), timestamp=clock.now())
    runner = make_runner(source, store, clock)
    async with running(runner):
        await wait_for(lambda: source.committed_position("t-0") == 3, timeout=2, message="folded")
    empty = MemoryStream()
    runner = make_runner(empty, store, clock)
    async with running(runner):
        empty.assign(["t-0"])
        clock.slept += 2 * LENGTH
        await wait_for(lambda: finals(), timeout=3, message="closed")
    assert finals()[0]["state"] == {"n": 3}


async def test_a_state_over_one_megabyte_ends_the_window_early_and_a_new_one_starts(tmp_path: Path) -> None:
    clock = FakeClock()
    source = MemoryStream()
    source.put("t-0", {"v": 0, "big": True}, timestamp=clock.now())
    runner = make_runner(source, tmp_path / "windows.db", clock)
    async with running(runner):
        await wait_for(lambda: finals(), timeout=3, message="ended early")
        source.put("t-0", {"v": 1}, timestamp=clock.now())
        await wait_for(lambda: len(INVOCATIONS) == 3, timeout=3, message="the next record")
    early = finals()[0]
    assert early["isWindowTerminatedEarly"]
    assert early["state"]["n"] == 1
    assert INVOCATIONS[2]["state"] == {}, "a new window of the same bounds, empty"
    assert INVOCATIONS[2]["window"] == early["window"]


async def test_a_response_without_state_fails_and_is_retried(tmp_path: Path) -> None:
    behave(no_state)
    clock = FakeClock()
    # A second into a window, so that the retries' backoff (1 s, then 2 s, on the fake clock) never
    # reaches its end: a window that ended would add its final invocations to the count.
    clock.slept = 1 - clock.now() % LENGTH
    source = MemoryStream()
    source.put("t-0", {"v": 0}, timestamp=clock.now())
    runner = make_runner(source, tmp_path / "windows.db", clock, maximum_retry_attempts=2)
    async with running(runner):
        await wait_for(lambda: runner.status.counts.dropped == 1, timeout=3, message="given up")
    assert len(INVOCATIONS) == 3
    assert runner.status.counts.retries == 2


async def test_a_partition_read_to_its_end_closes_its_window(tmp_path: Path) -> None:
    clock = FakeClock()
    source = MemoryStream()
    source.put("t-0", *({"v": i} for i in range(4)), timestamp=clock.now())
    runner = make_runner(source, tmp_path / "windows.db", clock)
    async with running(runner):
        await wait_for(lambda: source.committed_position("t-0") == 4, timeout=2, message="folded")
        await asyncio.wait_for(source.end(["t-0"]), 3)
        assert finals()[0]["state"] == {"n": 4}


def test_the_example_window_counter_counts_per_page_from_kinesis_and_kafka_events() -> None:
    import base64
    import json

    from handlers.window_counter import handler

    def data(page: str) -> str:
        return base64.b64encode(json.dumps({"page": page}).encode()).decode()

    window = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:01:00Z"}
    common = {"window": window, "isWindowTerminatedEarly": False}
    kinesis = {
        "Records": [{"kinesis": {"data": data("/a")}}] * 2,
        "state": {},
        "shardId": "s",
        "isFinalInvokeForWindow": False,
    }
    assert handler({**kinesis, **common}, None) == {"state": {"/a": 2}}
    kafka = {
        "records": {"t-0": [{"value": data("/b")}]},
        "state": {"/a": 2},
        "partition": "t-0",
        "isFinalInvokeForWindow": True,
    }
    assert handler({**kafka, **common}, None) == {"state": {"/a": 2, "/b": 1}}


async def change_state_then_fail_once(event: dict[str, Any]) -> dict[str, Any]:
    INVOCATIONS.append(copy.deepcopy(event))  # as it came in
    state = event["state"]  # changed in place, as handlers do
    state["n"] = state.get("n", 0) + len(event["Records"])
    if len(INVOCATIONS) == 1:
        raise ValueError("fails after changing its state")
    return {"state": state}


async def test_a_failed_invocation_that_changed_its_state_in_place_leaves_no_trace(tmp_path: Path) -> None:
    behave(change_state_then_fail_once)
    clock = FakeClock()
    source = MemoryStream()
    source.put("t-0", *({"v": i} for i in range(5)), timestamp=clock.now())
    runner = make_runner(source, tmp_path / "windows.db", clock)
    async with running(runner):
        await wait_for(lambda: source.committed_position("t-0") == 5, timeout=3, message="folded")
        clock.slept += 2 * LENGTH
        await wait_for(lambda: finals(), timeout=3, message="closed")
    assert INVOCATIONS[1]["state"] == {}, "the retry starts from the state before the failure"
    assert finals()[0]["state"] == {"n": 5}
