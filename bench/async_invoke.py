"""Asynchronous invocation throughput, from accept to handled: ``python -m bench.async_invoke``.

Runs the real App in this process with one function in poller's Python runtime (awslambdaric in
execution environments, all of them provisioned, so warm) and the SQLite queue of
``async_queue`` in a temporary directory. Each run accepts ``--events`` events at once, as many
concurrent ``Event`` requests would (``AsyncInvocations.accept``, each returning once its event is
committed and fsynced), and ends when the queue is empty again: every event attempted, its success
written, its row gone. It reports events per second for accepting alone and for the whole way
(first accept to empty queue), the median of ``--runs`` runs after a warm-up run, and beside it
the same function invoked directly, without the queue (the ceiling). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from bench.run import REPO
from poller.app import App, loop_factory, tune_garbage_collector
from poller.config import Config
from poller.observability.tracing import configure_tracing

PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"


def config(queue: Path, concurrency: int, runtime: str) -> Config:
    function: dict[str, object] = {"runtime": runtime, "handler": "bench.handlers.noop", "timeout": 30}
    if runtime != "inline":
        function |= {"code": str(REPO), "provisioned_concurrent_executions": concurrency}
    return Config.model_validate(
        {
            "functions": {"noop": {**function, "reserved_concurrent_executions": concurrency}},
            "admin": {"port": 0},
            "async_queue": {"type": "sqlite", "path": str(queue)},
        }
    )


async def queue_empty(app: App) -> bool:
    backlog = await app.async_invocations.store.backlog()
    return not any(entry.events for entry in backlog.values())


async def one_run(app: App, events: int) -> tuple[float, float, float]:
    """(accepted per second, handled per second, poller's CPU µs per event) for ``events`` events
    accepted at once."""
    function = app.functions["noop"]
    payloads = [orjson.dumps({"n": n, "body": "x" * 200}) for n in range(events)]
    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            app.async_invocations.accept(function, payload, request_id=str(uuid.uuid4()), trace_parent=None)
            for payload in payloads
        )
    )
    accepted = time.perf_counter() - started
    while not await queue_empty(app):  # noqa: ASYNC110 (the store is the truth: poll it, as a client would)
        await asyncio.sleep(0.005)
    handled = time.perf_counter() - started
    return events / accepted, events / handled, (time.process_time() - cpu) / events * 1e6


async def direct_run(app: App, events: int, concurrency: int) -> tuple[float, float]:
    """The ceiling: events per second of ``concurrency`` loops calling the function directly
    (``FunctionRuntime.invoke_payload``, as a synchronous Invoke does), no queue in between; and
    poller's CPU µs per event."""
    function = app.functions["noop"]
    payload = orjson.dumps({"n": 0, "body": "x" * 200})

    async def loop(count: int) -> None:
        for _ in range(count):
            await function.invoke_payload(payload)

    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(loop(events // concurrency) for _ in range(concurrency)))
    count = events // concurrency * concurrency
    return count / (time.perf_counter() - started), (time.process_time() - cpu) / count * 1e6


async def bench(events: int, runs: int, concurrency: int, runtime: str) -> None:
    with tempfile.TemporaryDirectory(prefix="poller-bench-async-") as directory:
        app = App(config(Path(directory) / "async.db", concurrency, runtime), drain_timeout=10)
        task = asyncio.create_task(app.run())
        try:
            while not all(function.ready for function in app.functions.values()):
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            # Warm-up: creates the queue (the workers then take it), warms SQLite and the code paths.
            await one_run(app, min(events, 200))
            results, direct = [], []
            for _ in range(runs):  # interleaved, so that both see the same machine
                results.append(await one_run(app, events))
                direct.append(await direct_run(app, events, concurrency))
        finally:
            app.stop()
            await task
    accepted = statistics.median(result[0] for result in results)
    handled = statistics.median(result[1] for result in results)
    cpu = statistics.median(result[2] for result in results)
    print(
        f"runtime {runtime}, concurrency {concurrency}, {events} events x {runs} runs: "
        f"accepted {accepted:,.0f} events/s, accept to handled {handled:,.0f} events/s, "
        f"poller CPU {cpu:,.0f} us/event (medians)"
    )
    print("  runs (accepted, handled events/s): " + ", ".join(f"({r[0]:,.0f}, {r[1]:,.0f})" for r in results))
    print(
        f"  the same function invoked directly by {concurrency} loops: "
        f"{statistics.median(d[0] for d in direct):,.0f} events/s, poller CPU "
        f"{statistics.median(d[1] for d in direct):,.0f} us/event (medians; runs "
        f"{', '.join(f'{d[0]:,.0f}' for d in direct)})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.async_invoke", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=2000, help="events per run (default 2000)")
    parser.add_argument("--runs", type=int, default=5, help="runs after the warm-up (default 5)")
    parser.add_argument("--concurrency", type=int, default=10, help="reserved (and provisioned) concurrency")
    parser.add_argument(
        "--runtime", default=PYTHON, help=f"the function's runtime (default {PYTHON}; or inline)"
    )
    args = parser.parse_args(argv)
    configure_tracing()
    tune_garbage_collector()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(bench(args.events, args.runs, args.concurrency, args.runtime))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
