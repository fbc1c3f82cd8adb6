"""The real MappingRunner and BatchProcessor over an in-memory source, in milliseconds: drain,
revocation, pause and resume, FIFO hold-back, a destination outage, shutdown, start and poll
failures, task ownership and log context. The same paths run against real brokers in
tests/integration; these pin the engine's own behaviour without one.

The function is ``runtime: inline`` on purpose: each test steers the handler from here, in this
process (``behave``), to make the engine meet exactly the case it is about at exactly the moment it
wants; environments, where that control is gone, are the subject of test_environments.py and of the
integration tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from support import FakeClock, wait_for

from poller.config import Config
from poller.engine.records import Record
from poller.errors import DestinationError, SourceError
from poller.observability.logs import ContextFilter
from poller.observability.metrics import RunnerCollector
from poller.observability.tracing import Telemetry
from poller.runtime import runner as runner_module
from poller.runtime.function import FunctionRuntime
from poller.runtime.runner import MappingRunner
from poller.sources.memory import MemoryQueue, MemoryStream
from poller.sources.protocol import EventFormat

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.setattr(runner_module, "RECONNECT_FIRST", 0.01)


def behave(behaviour: Any) -> None:
    """Make the test handler run ``behaviour(event)`` (an async function) from now on."""
    import orchestration_handlers

    orchestration_handlers.BEHAVIOUR["current"] = behaviour


def values(event: dict[str, Any]) -> list[Any]:
    return [record["v"] for record in event["Records"]]


class MemoryDestination:
    """An on-failure destination in memory; while ``down`` it refuses every send."""

    def __init__(self, *, down: bool = False) -> None:
        self.down = down
        self.failures: list[dict[str, Any]] = []
        self.attempts = 0

    async def send(self, failure: dict[str, Any], records: Sequence[Record], origin: EventFormat) -> None:
        self.attempts += 1
        if self.down:
            raise DestinationError("destination down")
        self.failures.append(failure)

    async def close(self) -> None:
        pass


def make_runner(
    source: MemoryStream,
    destination: MemoryDestination | None = None,
    *,
    drain_timeout: float = 5.0,
    timeout: int = 3,
    telemetry: Telemetry | None = None,
    **mapping: Any,
) -> MappingRunner:
    settings = {"batch_size": 10, "maximum_batching_window_in_seconds": 0, **mapping}
    if destination is not None:
        settings["destination_config"] = {"on_failure": {"destination": "dlq"}}
    config = Config.model_validate(
        {
            "connections": {"k": {"type": "kafka", "bootstrap_servers": "127.0.0.1:1"}},
            "functions": {
                "fn": {"runtime": "inline", "handler": "orchestration_handlers:handler", "timeout": timeout}
            },
            "destinations": {"dlq": {"type": "file", "path": "unused.jsonl"}},
            "mappings": {
                "m": {
                    "function_name": "fn",
                    "source": {"type": "kafka", "connection": "k", "topics": ["t"]},
                    **settings,
                }
            },
        }
    )
    function = FunctionRuntime("fn", config.functions["fn"])
    return MappingRunner(
        "m",
        config.mappings["m"],
        source,
        function,
        destination,
        clock=FakeClock(),
        drain_timeout=drain_timeout,
        telemetry=telemetry,
    )


@asynccontextmanager
async def running(runner: MappingRunner) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(runner.run())
    try:
        await wait_for(lambda: runner.status.state == "Enabled" or task.done(), timeout=2, message="started")
        yield task
    finally:
        runner.stop()
        await asyncio.wait_for(asyncio.shield(task), 5) if not task.done() else None


async def test_records_are_invoked_once_in_order_per_partition_and_committed() -> None:
    seen: dict[str, list[int]] = {}

    async def record(event: dict[str, Any]) -> None:
        for entry in event["Records"]:
            seen.setdefault(entry["p"], []).append(entry["v"])

    behave(record)
    source = MemoryStream()
    for partition in ("t-0", "t-1", "t-2"):
        source.put(partition, *({"p": partition, "v": i} for i in range(50)))
    runner = make_runner(source)
    async with running(runner):
        await wait_for(lambda: runner.status.counts.succeeded == 150, timeout=3, message="all handled")
        await wait_for(lambda: all(source.committed_position(p) == 50 for p in seen), timeout=2)
    assert seen == {p: list(range(50)) for p in ("t-0", "t-1", "t-2")}
    assert runner.status.state == "Disabled"
    assert source.closed == 1


async def test_drain_lets_the_batch_in_flight_finish_and_commit_then_stops() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(event: dict[str, Any]) -> None:
        entered.set()
        await release.wait()

    behave(slow)
    source = MemoryStream()
    source.put("t-0", *({"v": i} for i in range(10)))
    runner = make_runner(source)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(entered.wait(), 2)
    runner.stop()
    await wait_for(lambda: runner.status.state == "Disabling", timeout=2, message="draining")
    source.put("t-0", {"v": 10})  # arrives during the drain: never taken
    release.set()
    await asyncio.wait_for(task, 2)
    assert source.committed_position("t-0") == 10
    assert runner.status.state == "Disabled"
    assert runner.status.counts.invocations == 1


async def test_a_batch_past_the_drain_timeout_is_abandoned_uncommitted() -> None:
    hang = asyncio.Event()

    async def hung(event: dict[str, Any]) -> None:
        await hang.wait()

    behave(hung)
    source = MemoryStream()
    source.put("t-0", {"v": 0})
    runner = make_runner(source, drain_timeout=0.1)
    task = asyncio.create_task(runner.run())
    await wait_for(lambda: runner.status.counts.in_flight == 1, timeout=2, message="in the handler")
    runner.stop()
    await asyncio.wait_for(task, 2)
    assert source.committed == []


async def test_revocation_waits_for_the_in_flight_batch_and_then_commits_nothing_of_the_partition() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def hold_t0(event: dict[str, Any]) -> None:
        if event["Records"][0]["p"] == "t-0":
            entered.set()
            await release.wait()

    behave(hold_t0)
    source = MemoryStream()
    source.put("t-0", *({"p": "t-0", "v": i} for i in range(5)))
    runner = make_runner(source)
    async with running(runner):
        await asyncio.wait_for(entered.wait(), 2)
        revoking = asyncio.create_task(source.revoke(["t-0"]))
        await asyncio.sleep(0.05)
        assert not revoking.done(), "a revocation waits for the partition's batch in flight"
        source.put("t-0", {"p": "t-0", "v": 5})  # polled late, while being revoked: dropped
        release.set()
        await asyncio.wait_for(revoking, 2)
        assert source.committed_position("t-0") == 5, "what finished before giving up is committed"
        source.put("t-1", {"p": "t-1", "v": 0})
        await wait_for(lambda: source.committed_position("t-1") == 1, timeout=2, message="t-1 goes on")
    assert source.committed_position("t-0") == 5


async def test_a_full_lane_is_paused_and_resumed_and_loses_nothing() -> None:
    seen: list[int] = []

    async def record(event: dict[str, Any]) -> None:
        seen.extend(values(event))
        await asyncio.sleep(0)

    behave(record)
    source = MemoryStream(fetch=1000)
    source.put("t-0", *({"v": i} for i in range(3000)))
    runner = make_runner(source, batch_size=50)  # high water: 500 buffered records
    async with running(runner):
        await wait_for(lambda: len(seen) == 3000, timeout=4, message="all handled")
    assert seen == list(range(3000))
    assert source.pauses >= 1
    assert source.paused == set(), "every paused lane was resumed"


async def test_fifo_records_behind_a_handed_back_one_go_back_after_it_uninvoked() -> None:
    succeeded: list[str] = []

    async def poison_a0(event: dict[str, Any]) -> None:
        names = [entry["name"] for entry in event["Records"]]
        if "a0" in names:
            raise ValueError("a0 is poison")
        succeeded.extend(names)

    behave(poison_a0)
    source = MemoryQueue()
    for name in ("a0", "b0", "a1", "b1"):
        source.put("q", {"name": name}, group=name[0])
    destination = MemoryDestination()
    runner = make_runner(source, destination, bisect_batch_on_function_error=True, maximum_retry_attempts=1)
    async with running(runner):
        await wait_for(lambda: "a1" in succeeded, timeout=3, message="a1 handled")
    # The first batch: a0 failed alone and went back; a1, behind it in the right half, went back
    # after it without being invoked, while b0 and b1 went on.
    first_hand_backs = [[r.payload["name"] for r in records] for records, _ in source.released[:2]]
    assert first_hand_backs == [["a0"], ["a1"]]
    assert succeeded[:2] == ["b0", "b1"]
    # a0 came back first, failed its last attempt and was dead-lettered; only then a1 succeeded.
    assert len(destination.failures) == 1
    assert succeeded.index("a1") == len(succeeded) - 1
    assert sorted(r.payload["name"] for r in source.committed) == ["a0", "a1", "b0", "b1"]


async def test_a_destination_outage_holds_the_checkpoint_until_it_confirms() -> None:
    async def poison(event: dict[str, Any]) -> None:
        if any(v == 3 for v in values(event)):
            raise ValueError("poison")

    behave(poison)
    source = MemoryStream()
    source.put("t-0", *({"v": i} for i in range(6)))
    destination = MemoryDestination(down=True)
    runner = make_runner(source, destination, bisect_batch_on_function_error=True, maximum_retry_attempts=0)
    async with running(runner):
        await wait_for(lambda: destination.attempts >= 3, timeout=3, message="the destination is tried")
        assert source.committed_position("t-0") == 3, "the records before the poison one commit, no more"
        destination.down = False
        await wait_for(lambda: source.committed_position("t-0") == 6, timeout=3, message="committed after it")
    [failure] = destination.failures
    assert failure["source"]["positions"] == [3]
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert runner.status.counts.dead_lettered == 1


async def test_stopping_while_the_destination_is_down_leaves_the_record_uncommitted() -> None:
    async def fail(event: dict[str, Any]) -> None:
        raise ValueError("always")

    behave(fail)
    source = MemoryStream()
    source.put("t-0", {"v": 0})
    destination = MemoryDestination(down=True)
    runner = make_runner(source, destination, maximum_retry_attempts=0)
    task = asyncio.create_task(runner.run())
    await wait_for(lambda: destination.attempts >= 1, timeout=2, message="the destination is tried")
    runner.stop()
    await asyncio.wait_for(task, 2)
    assert source.committed == []


async def test_a_failing_start_is_retried_and_a_fatal_one_stops_the_mapping() -> None:
    source = MemoryStream()
    source.start_failures = 2
    runner = make_runner(source)
    async with running(runner):
        assert source.started == 1
        assert runner.status.ready
    fatal = MemoryStream()
    fatal.fatal_start = "unknown topic t"
    runner = make_runner(fatal)
    with pytest.raises(SourceError, match="unknown topic t"):
        await asyncio.wait_for(runner.run(), 2)
    assert runner.status.state == "Failed"


async def test_a_failing_poll_turns_ready_false_until_polls_work_again() -> None:
    source = MemoryStream()
    runner = make_runner(source)
    async with running(runner):
        source.poll_failures = 3
        await wait_for(lambda: not runner.status.ready, timeout=2, message="not ready")
        assert runner.status.last_error == "memory broker gone"
        await wait_for(lambda: runner.status.ready, timeout=2, message="ready again")


async def test_an_unexpected_error_of_a_source_task_stops_the_mapping_at_once() -> None:
    source = MemoryStream()
    runner = make_runner(source)
    task = asyncio.create_task(runner.run())
    await wait_for(lambda: runner.status.state == "Enabled", timeout=2, message="started")
    source.fail_in_background(RuntimeError("a bug in the source"))
    with pytest.raises(RuntimeError, match="a bug in the source"):
        await asyncio.wait_for(task, 2)
    assert source.closed == 1


async def test_records_that_match_no_filter_are_committed_uninvoked() -> None:
    seen: list[int] = []

    async def record(event: dict[str, Any]) -> None:
        seen.extend(values(event))

    behave(record)
    source = MemoryStream()
    source.put("t-0", *({"v": i} for i in range(10)))  # one batch: filtered inside it
    source.put("t-1", *({"v": i} for i in range(3)))  # a whole batch filtered out
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    runner = make_runner(
        source,
        telemetry=Telemetry(tracer_provider=provider),
        filter_criteria={"filter": [{"pattern": '{"v": [{"numeric": [">=", 5]}]}'}]},
    )
    async with running(runner):
        await wait_for(lambda: source.committed_position("t-0") == 10, timeout=2, message="t-0 committed")
        await wait_for(lambda: source.committed_position("t-1") == 3, timeout=2, message="t-1 committed")
    assert seen == [5, 6, 7, 8, 9]
    assert runner.status.counts.filtered == 8
    assert runner.status.counts.invocations == 1
    registry = CollectorRegistry()
    registry.register(RunnerCollector({"m": runner}))
    assert 'poller_records_filtered_total{mapping="m"} 8.0' in generate_latest(registry).decode()
    filtered = {
        span.attributes["messaging.destination.partition.id"]: span.attributes["poller.batch.filtered"]
        for span in spans.get_finished_spans()
        if span.attributes and "poller.batch.filtered" in span.attributes
    }
    assert filtered == {"t-0": 5, "t-1": 3}


async def test_a_filter_that_drops_most_records_saves_as_many_invocations() -> None:
    seen: list[list[int]] = []

    async def record(event: dict[str, Any]) -> None:
        seen.append(values(event))

    behave(record)
    source = MemoryStream()
    source.put("t-0", *({"v": i} for i in range(100)))
    runner = make_runner(
        source,
        batch_size=5,
        maximum_batching_window_in_seconds=5,
        filter_criteria={"filter": [{"pattern": '{"v": [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]}'}]},
    )
    async with running(runner):
        await wait_for(lambda: source.committed_position("t-0") == 100, timeout=2, message="t-0 committed")
    # Batches are made of matching records: the 90 others ride along to be committed, uninvoked.
    assert seen == [[0, 10, 20, 30, 40], [50, 60, 70, 80, 90]]
    assert runner.status.counts.filtered == 90


async def test_log_lines_about_a_batch_carry_the_mapping_batch_and_trace_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def log_inside(event: dict[str, Any]) -> None:
        logging.getLogger("a.handler").warning("handling %d records", len(event["Records"]))

    behave(log_inside)
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(ContextFilter())
    source = MemoryStream()
    source.put("t-0", {"v": 0})
    runner = make_runner(source)
    async with running(runner):
        await wait_for(lambda: runner.status.counts.succeeded == 1, timeout=2, message="handled")
    [line] = [r for r in caplog.records if r.name == "a.handler"]
    assert line.mapping == "m"  # type: ignore[attr-defined]
    assert isinstance(line.batch_id, int)  # type: ignore[attr-defined]
    assert len(line.trace_id) == 32  # type: ignore[attr-defined]
    stopped = [r for r in caplog.records if r.getMessage() == "mapping m: stopped"]
    assert stopped[0].mapping == "m"  # type: ignore[attr-defined]
    assert getattr(stopped[0], "batch_id", None) is None
