"""The workers of asynchronous invocation, on a real SQLite queue and real file destinations, with
a clock that only moves when the test moves it: the retry timeline as it happens, event age before
and between attempts, throttles, the concurrency limit, a destination that is down, and what an
interrupted attempt leaves in the store.

The function is a scripted stand-in for the function runtime (what each attempt returns is the
script's; the runtime's own behaviour is tested on its own and by the integration tests)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import wait_for

from poller.clock import Clock
from poller.config import Config, Function
from poller.destinations import Destination, build_destination
from poller.engine.outcome import InvocationError
from poller.invocation.asynchronous.invoker import AsyncInvocations, PayloadTooLarge, concurrency_of
from poller.invocation.asynchronous.queue import QueueBusy
from poller.invocation.asynchronous.store import ConsumerLock, SqliteEventStore
from poller.observability.async_spans import AsyncTelemetry
from poller.runtime.environments.api import Response
from poller.runtime.environments.environment import InvokeResult
from poller.runtime.environments.logs import InvocationLog
from poller.runtime.function import InvocationReport, LambdaContext

T0 = 1_800_000_000.0


class ManualClock(Clock):
    """Time stands still until :meth:`advance`; sleeps end when it passes their end."""

    def __init__(self, start: float = T0) -> None:
        self.time = start
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.time + seconds, future))
        await future

    def advance(self, seconds: float) -> None:
        self.time += seconds
        for end, future in list(self._sleepers):
            if end <= self.time:
                self._sleepers.remove((end, future))
                if not future.done():
                    future.set_result(None)


Script = Callable[[bytes, int], Any]  # (payload, attempt number) -> response value or InvocationError


class ScriptedFunction:
    """Stands in for a FunctionRuntime: each invocation's answer is what ``script`` returns; it
    notes when (clock time) and with which request id each attempt was made."""

    def __init__(self, name: str, config: Function, script: Script, clock: Clock) -> None:
        self.name = name
        self.arn = f"arn:aws:lambda:us-east-1:000000000000:function:{name}"
        self.config = config
        self.script = script
        self.clock = clock
        self.calls: list[tuple[str, float]] = []
        self.running = 0
        self.most_running = 0
        self.release = asyncio.Event()
        self.release.set()

    def new_context(self, request_id: str | None = None) -> LambdaContext:
        return LambdaContext(
            self.name, 128, request_id or str(uuid.uuid4()), self.arn, "g", "s", deadline=0.0
        )

    async def invoke_payload(
        self, payload: bytes, context: LambdaContext | None = None, *, report: InvocationReport | None = None
    ) -> InvokeResult:
        assert context is not None
        self.calls.append((context.aws_request_id, self.clock.now()))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        answer = self.script(payload, len([c for c in self.calls if c[0] == context.aws_request_id]))
        if not isinstance(answer, InvocationError):
            answer = Response(json.dumps(answer).encode(), "application/json")
        return InvokeResult(
            context.aws_request_id, answer, False, 0.0, None, 0, InvocationLog(context.aws_request_id)
        )


def fails(payload: bytes, attempt: int) -> Any:
    return InvocationError("ValueError", f"attempt {attempt} failed")


def succeeds(payload: bytes, attempt: int) -> Any:
    return {"handled": json.loads(payload), "attempt": attempt}


def config_of(tmp_path: Path, **function: Any) -> Config:
    """Function ``f`` with on_success ``ok``, on_failure ``failed`` and dead letters to ``dlq``,
    each a file under ``tmp_path``."""
    return Config.model_validate(
        {
            "functions": {
                "f": {
                    "runtime": "inline",
                    "handler": "unused.handler",
                    "event_invoke_config": {
                        "destination_config": {
                            "on_success": {"destination": "ok"},
                            "on_failure": {"destination": "failed"},
                        },
                        **function.pop("event_invoke_config", {}),
                    },
                    "dead_letter_config": {"destination": "dlq"},
                    **function,
                }
            },
            "destinations": {
                name: {"type": "file", "path": str(tmp_path / f"{name}.jsonl")}
                for name in ("ok", "failed", "dlq")
            },
        }
    )


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        config: Config,
        script: Script,
        clock: ManualClock,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.tmp_path = tmp_path
        self.clock = clock
        self.config = config
        self.function = ScriptedFunction("f", config.functions["f"], script, clock)
        self.destinations: dict[str, Destination] = {}
        self.invocations = AsyncInvocations(
            SqliteEventStore(tmp_path / "queue.db"),
            functions={"f": self.function},
            destination_of=self.destination,
            telemetry=AsyncTelemetry(tracer or trace.get_tracer("test"), registry=None),
            clock=clock,
            drain_timeout=5,
        )

    def destination(self, name: str) -> Destination | None:
        if name not in self.config.destinations:
            return None
        return self.destinations.setdefault(name, build_destination(name, self.config))

    async def accept(self, payload: bytes = b'{"n": 1}') -> str:
        request_id = str(uuid.uuid4())
        await self.invocations.accept(self.function, payload, request_id=request_id, trace_parent=None)
        return request_id

    def records(self, name: str) -> list[Any]:
        return lines(self.tmp_path / f"{name}.jsonl")


@asynccontextmanager
async def working(harness: Harness) -> AsyncIterator[Harness]:
    """The workers of ``harness`` run inside the block, and drain after it."""
    await harness.invocations.open()
    task = asyncio.create_task(harness.invocations.run())
    try:
        await wait_for(lambda: harness.invocations.consuming or task.done(), message="workers started")
        yield harness
    finally:
        harness.invocations.stop()
        await asyncio.wait_for(task, 10)
        task.result()
        await harness.invocations.close()


async def test_a_failing_event_is_attempted_at_zero_then_60_then_180_seconds_and_given_up(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    harness = Harness(tmp_path, config_of(tmp_path), fails, clock)
    async with working(harness):
        request_id = await harness.accept(b'{"order": 1}')
        await wait_for(lambda: len(harness.function.calls) == 1, message="first attempt")
        clock.advance(59.9)  # nothing falls due before the minute (the times below show it)
        clock.advance(0.1)
        await wait_for(lambda: len(harness.function.calls) == 2, message="first retry")
        clock.advance(119)
        clock.advance(1)
        await wait_for(lambda: harness.records("failed"), message="on-failure record")
    assert harness.function.calls == [(request_id, T0), (request_id, T0 + 60), (request_id, T0 + 180)]
    [record] = harness.records("failed")
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestPayload"] == {"order": 1}
    assert record["responsePayload"]["errorMessage"] == "attempt 3 failed"
    assert record["responseContext"]["functionError"] == "Unhandled"
    [dead] = harness.records("dlq")
    assert dead == {
        "attributes": {"RequestID": request_id, "ErrorCode": 200, "ErrorMessage": "attempt 3 failed"},
        "body": {"order": 1},
    }
    assert harness.records("ok") == []
    counts = harness.invocations.counts["f"]
    assert (counts.received, counts.attempts, counts.retries, counts.dropped) == (
        1,
        3,
        {"FunctionError": 2},
        {"RetriesExhausted": 1},
    )


async def test_doubling_delays_follow_retry_delay_in_seconds(tmp_path: Path) -> None:
    clock = ManualClock()
    config = config_of(tmp_path, event_invoke_config={"retry_delay_in_seconds": 7})
    harness = Harness(
        tmp_path,
        config,
        lambda payload, attempt: fails(payload, attempt) if attempt < 3 else succeeds(payload, attempt),
        clock,
    )
    async with working(harness):
        await harness.accept()
        await wait_for(lambda: len(harness.function.calls) == 1, message="attempt 1")
        clock.advance(7)
        await wait_for(lambda: len(harness.function.calls) == 2, message="attempt 2")
        clock.advance(14)
        await wait_for(lambda: harness.records("ok"), message="on-success record")
    assert [when - T0 for _, when in harness.function.calls] == [0, 7, 21]
    [record] = harness.records("ok")
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["approximateInvokeCount"] == 3
    assert record["responsePayload"] == {"handled": {"n": 1}, "attempt": 3}
    assert harness.records("failed") == harness.records("dlq") == []


async def test_an_event_too_old_before_its_first_attempt_is_given_up_uninvoked(tmp_path: Path) -> None:
    clock = ManualClock()
    config = config_of(tmp_path, event_invoke_config={"maximum_event_age_in_seconds": 60})
    harness = Harness(tmp_path, config, succeeds, clock)
    await harness.invocations.open()
    request_id = await harness.accept()  # accepted while no worker runs (poller down)
    clock.advance(60)
    async with working(harness):
        await wait_for(lambda: harness.records("failed"), message="on-failure record")
    assert harness.function.calls == []
    [record] = harness.records("failed")
    assert record["requestContext"] == {
        "requestId": request_id,
        "functionArn": "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST",
        "condition": "EventAgeExceeded",
        "approximateInvokeCount": 0,
    }
    assert record["responseContext"] is None
    assert record["responsePayload"] is None
    [dead] = harness.records("dlq")
    assert dead["attributes"]["RequestID"] == request_id
    assert dead["attributes"]["ErrorMessage"].startswith("EventAgeExceeded")


async def test_an_event_whose_age_runs_out_between_attempts_is_given_up_then(tmp_path: Path) -> None:
    clock = ManualClock()
    config = config_of(
        tmp_path, event_invoke_config={"maximum_event_age_in_seconds": 90, "retry_delay_in_seconds": 60}
    )
    harness = Harness(tmp_path, config, fails, clock)
    async with working(harness):
        await harness.accept()
        await wait_for(lambda: len(harness.function.calls) == 1, message="attempt 1")
        clock.advance(60)
        await wait_for(lambda: len(harness.function.calls) == 2, message="attempt 2")
        clock.advance(29)  # the second retry would be at +180; the age runs out at +90
        clock.advance(1)
        await wait_for(lambda: harness.records("failed"), message="on-failure record")
    assert len(harness.function.calls) == 2
    [record] = harness.records("failed")
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert record["timestamp"].startswith("2027-01-15T08:01:30")  # T0 + 90 s
    assert record["responsePayload"]["errorMessage"] == "attempt 2 failed"
    assert harness.invocations.counts["f"].dropped == {"EventAgeExceeded": 1}


async def test_throttled_events_are_retried_with_backoff_until_their_age_runs_out(tmp_path: Path) -> None:
    clock = ManualClock()
    config = config_of(
        tmp_path, reserved_concurrent_executions=0, event_invoke_config={"maximum_event_age_in_seconds": 600}
    )
    harness = Harness(tmp_path, config, succeeds, clock)
    async with working(harness):
        request_id = await harness.accept()
        throttled = 0
        while True:
            await wait_for(
                lambda throttled=throttled: throttle_count(harness) > throttled or harness.records("failed"),
                message="the attempt throttled",
            )
            if harness.records("failed"):
                break
            throttled = throttle_count(harness)
            await advance_to_next_due(harness)
    assert harness.function.calls == []  # reserved 0: never invoked
    throttles = harness.invocations.counts["f"].retries["Throttled"]
    assert 5 <= throttles <= 40
    [record] = harness.records("failed")
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestContext"]["approximateInvokeCount"] == 0
    assert clock.time >= T0 + 600
    [dead] = harness.records("dlq")
    assert dead["attributes"]["RequestID"] == request_id
    assert dead["attributes"]["ErrorCode"] == 429


async def test_no_more_events_run_at_once_than_the_reserved_concurrency(tmp_path: Path) -> None:
    clock = ManualClock()
    config = config_of(tmp_path, reserved_concurrent_executions=2)
    harness = Harness(tmp_path, config, succeeds, clock)
    harness.function.release.clear()  # every invocation waits until the test lets it go
    async with working(harness):
        ids = [await harness.accept(json.dumps({"n": n}).encode()) for n in range(6)]
        await wait_for(lambda: harness.function.running == 2, message="two running")
        assert harness.invocations.attempting("f") == 2
        harness.function.release.set()
        await wait_for(lambda: len(harness.records("ok")) == 6, message="six records")
    assert harness.function.most_running == 2
    assert sorted(record["requestContext"]["requestId"] for record in harness.records("ok")) == sorted(ids)
    assert concurrency_of(config.functions["f"]) == 2


def test_unreserved_functions_run_ten_events_at_once_or_their_provisioned_environments() -> None:
    assert concurrency_of(Function(handler="m.h")) == 10
    assert (
        concurrency_of(Function(runtime="python3.11", handler="m.h", provisioned_concurrent_executions=25))
        == 25
    )


async def test_a_destination_that_is_down_keeps_the_event_until_it_takes_it(tmp_path: Path) -> None:
    clock = ManualClock()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the destination's directory should be")
    config = config_of(tmp_path)
    config = config.model_copy(
        update={"destinations": {**config.destinations, "ok": build_file(blocker / "ok.jsonl")}}
    )
    harness = Harness(tmp_path, config, succeeds, clock)
    async with working(harness):
        request_id = await harness.accept()
        await wait_for(lambda: harness.invocations.deliveries.counts.failed == 1, message="a failed delivery")
        await advance_to_next_due(harness)  # tried again: still down
        await wait_for(lambda: harness.invocations.deliveries.counts.failed == 2, message="a second failure")
        assert await queue_depth(tmp_path) == 1  # the event waits in the queue
        blocker.unlink()  # the destination comes back
        await advance_to_next_due(harness)
        await wait_for(lambda: lines(blocker / "ok.jsonl"), message="delivered")
    assert len(harness.function.calls) == 1  # delivered again, not invoked again
    [record] = lines(blocker / "ok.jsonl")
    assert record["requestContext"]["requestId"] == request_id
    assert await queue_depth(tmp_path) == 0


def throttle_count(harness: Harness) -> int:
    counts = harness.invocations.counts.get("f")
    return counts.retries.get("Throttled", 0) if counts else 0


async def advance_to_next_due(harness: Harness) -> None:
    """Move the clock to when the next event in the queue falls due."""
    due = await wait_for(
        lambda: harness.invocations.store.next_due(harness.clock.time), message="an event waits in the queue"
    )
    harness.clock.advance(due - harness.clock.time)


def build_file(path: Path) -> Any:
    return Config.model_validate({"destinations": {"x": {"type": "file", "path": str(path)}}}).destinations[
        "x"
    ]


async def queue_depth(tmp_path: Path) -> int:
    store = SqliteEventStore(tmp_path / "queue.db")
    await store.open()
    try:
        return sum(backlog.events for backlog in (await store.backlog()).values())
    finally:
        await store.close()


async def test_an_attempt_cut_short_by_the_drain_stays_queued_and_runs_again(tmp_path: Path) -> None:
    clock = ManualClock()
    harness = Harness(tmp_path, config_of(tmp_path), succeeds, clock)
    harness.function.release.clear()
    harness.invocations.drain_timeout = 0.1
    async with working(harness):
        request_id = await harness.accept()
        await wait_for(lambda: harness.function.running == 1, message="attempt running")
    assert harness.records("ok") == []
    assert await queue_depth(tmp_path) == 1
    again = Harness(tmp_path, config_of(tmp_path), succeeds, clock)
    async with working(again):
        await wait_for(lambda: again.records("ok"), message="on-success record after the restart")
    assert again.function.calls == [(request_id, T0)]
    assert await queue_depth(tmp_path) == 0


async def test_events_another_process_queued_are_picked_up(tmp_path: Path) -> None:
    clock = ManualClock()
    harness = Harness(tmp_path, config_of(tmp_path), succeeds, clock)
    async with working(harness):
        other = AsyncInvocations(
            SqliteEventStore(tmp_path / "queue.db"),
            functions={"f": harness.function},
            destination_of=harness.destination,
            telemetry=AsyncTelemetry(trace.get_tracer("test"), registry=None),
            clock=clock,
        )
        await other.accept(
            harness.function, b'{"from": "elsewhere"}', request_id="r-other", trace_parent=None
        )
        await other.close()
        clock.advance(1)  # the workers look at the store again (no wake-up reaches them)
        await wait_for(lambda: harness.records("ok"), message="on-success record")
    assert harness.records("ok")[0]["requestPayload"] == {"from": "elsewhere"}


async def test_one_process_at_a_time_works_a_queue(tmp_path: Path) -> None:
    first, second = ConsumerLock(tmp_path / "q.db"), ConsumerLock(tmp_path / "q.db")
    first.acquire()
    with pytest.raises(QueueBusy, match="worked by another poller process"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


async def test_an_event_over_one_megabyte_is_refused(tmp_path: Path) -> None:
    harness = Harness(tmp_path, config_of(tmp_path), succeeds, ManualClock())
    with pytest.raises(PayloadTooLarge):
        await harness.accept(b'"' + b"x" * 1_048_576 + b'"')
    await harness.invocations.close()


async def test_a_request_id_accepted_twice_is_one_event(tmp_path: Path) -> None:
    harness = Harness(tmp_path, config_of(tmp_path), succeeds, ManualClock())
    for _ in range(2):
        await harness.invocations.accept(harness.function, b"{}", request_id="same", trace_parent=None)
    await harness.invocations.close()
    assert await queue_depth(tmp_path) == 1


async def test_many_accepts_at_once_are_all_stored(tmp_path: Path) -> None:
    harness = Harness(tmp_path, config_of(tmp_path), succeeds, ManualClock())
    await harness.invocations.open()
    await asyncio.gather(*(harness.accept(json.dumps({"n": n}).encode()) for n in range(200)))
    await harness.invocations.close()
    assert await queue_depth(tmp_path) == 200


async def test_one_trace_follows_an_event_from_acceptance_through_every_attempt_to_its_destinations(
    tmp_path: Path,
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    clock = ManualClock()
    config = config_of(
        tmp_path, event_invoke_config={"maximum_retry_attempts": 1, "retry_delay_in_seconds": 1}
    )
    harness = Harness(tmp_path, config, fails, clock, tracer=provider.get_tracer("test"))
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with working(harness):
        await harness.invocations.accept(harness.function, b"{}", request_id="r-1", trace_parent=caller)
        await wait_for(lambda: len(harness.function.calls) == 1, message="attempt 1")
        clock.advance(1)
        await wait_for(lambda: harness.records("dlq"), message="dead-lettered")
    finished = {span.name: span for span in spans.get_finished_spans() if span.name != "invoke f"}
    attempts = [span for span in spans.get_finished_spans() if span.name == "invoke f"]
    accepted = finished["queue f"]
    assert format(accepted.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert accepted.parent is not None
    assert accepted.parent.span_id == int("b7ad6b7169203331", 16)
    assert [span.attributes["poller.attempt"] for span in attempts] == [1, 2]
    for span in [*attempts, finished["send failed"], finished["send dlq"]]:
        assert span.context.trace_id == accepted.context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == accepted.context.span_id
    assert all(span.attributes["faas.invocation_id"] == "r-1" for span in attempts)
    assert attempts[0].status.description == "attempt 1 failed"
