"""Asynchronous invocation throughput, from accept to handled: ``python -m bench.async_invoke``.

Runs the real App in this process with one function in poller's Python runtime (awslambdaric in
execution environments, all of them provisioned, so warm) and the SQLite queue of
``async_queue`` in a temporary directory. Each run accepts ``--events`` events at once, as many
concurrent ``Event`` requests would (``AsyncInvocations.accept``, each returning once its event is
committed and fsynced), and ends when the queue is empty again: every event attempted, its success
written, its row gone. It reports events per second for accepting alone and for the whole way
(first accept to empty queue), the median of ``--runs`` runs after a warm-up run. Not part of the
test suite.
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


async def one_run(app: App, events: int) -> tuple[float, float]:
    """(accepted per second, handled per second) for ``events`` events accepted at once."""
    function = app.functions["noop"]
    payloads = [orjson.dumps({"n": n, "body": "x" * 200}) for n in range(events)]
    started = time.perf_counter()
    await asyncio.gather(
        *(
            app.async_invocations.accept(function, payload, request_id=str(uuid.uuid4()), trace_parent=None)
            for payload in payloads
        )
    )
    accepted = time.perf_counter() - started
    while not await queue_empty(app):
        await asyncio.sleep(0.005)
    handled = time.perf_counter() - started
    return events / accepted, events / handled


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
            results = [await one_run(app, events) for _ in range(runs)]
        finally:
            app.stop()
            await task
    accepted = statistics.median(result[0] for result in results)
    handled = statistics.median(result[1] for result in results)
    print(
        f"runtime {runtime}, concurrency {concurrency}, {events} events x {runs} runs: "
        f"accepted {accepted:,.0f} events/s, accept to handled {handled:,.0f} events/s (medians)"
    )
    print("  runs (accepted, handled events/s): " + ", ".join(f"({a:,.0f}, {h:,.0f})" for a, h in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.async_invoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events per run (default 2000)")
    parser.add_argument("--runs", type=int, default=5, help="runs after the warm-up (default 5)")
    parser.add_argument("--concurrency", type=int, default=10, help="reserved (and provisioned) concurrency")
    parser.add_argument("--runtime", default=PYTHON, help=f"the function's runtime (default {PYTHON}; or inline)")
    args = parser.parse_args(argv)
    configure_tracing()
    tune_garbage_collector()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(bench(args.events, args.runs, args.concurrency, args.runtime))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
