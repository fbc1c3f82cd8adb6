"""``python -m bench.environments``: what an execution environment costs (SPEC section 12).

For the default Python runtime (awslambdaric on poller's interpreter) and a custom runtime (a bash
``bootstrap`` that calls the Runtime API with curl, as AWS's tutorial does, ``bench/functions/bash``):

- **cold start**: from spawning the environment to its runtime asking for its first event (its
  init, as Lambda's Init Duration counts it), and the whole first invocation as the caller waits
  for it; one new function per sample;
- **warm round trip**: one invocation of a warm environment as poller's engine waits for it
  (``FunctionRuntime.invoke``: the event serialised, handed over the Runtime API, the answer read
  back), with an empty event and with a Kafka event of 100 records of 1 KiB; the same for
  ``runtime: inline`` for comparison. The handler does nothing, so this is all overhead;
- **RSS** of an idle environment (its whole process group), after its warm invocations.

Medians and p99 of the samples; run it a few times, the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from poller.app import loop_factory
from poller.config import DEFAULT_RUNTIME, Function
from poller.engine.outcome import InvocationError
from poller.runtime.environments.memory import MB, ProcessGroupMemory
from poller.runtime.function import FunctionRuntime
from poller.tasks import BackgroundTasks

BASH = Path(__file__).resolve().parent / "functions" / "bash"
RUNTIMES: dict[str, dict[str, Any]] = {
    f"{DEFAULT_RUNTIME} (default)": {"handler": "bench.handlers:noop"},
    "provided.al2023 (bash + curl)": {"runtime": "provided.al2023", "code": str(BASH), "handler": "noop"},
}


def kafka_event(records: int, size: int = 1024) -> dict[str, Any]:
    """A self-managed Kafka event of ``records`` records of ``size`` bytes, as the engine builds it."""
    value = base64.b64encode(b"x" * size).decode()
    return {
        "eventSource": "SelfManagedKafka",
        "bootstrapServers": "127.0.0.1:9092",
        "records": {
            "bench-0": [
                {
                    "topic": "bench",
                    "partition": 0,
                    "offset": offset,
                    "timestamp": 1_700_000_000_000 + offset,
                    "timestampType": "CREATE_TIME",
                    "key": base64.b64encode(b"key-%d" % offset).decode(),
                    "value": value,
                    "headers": [],
                }
                for offset in range(records)
            ]
        },
    }


def summary(samples: list[float]) -> dict[str, float]:
    """Median and p99 in milliseconds."""
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
        "samples": len(ordered),
    }


async def _with_function(
    settings: dict[str, Any], body: Callable[[FunctionRuntime], Awaitable[None]]
) -> None:
    function = FunctionRuntime("bench", Function.model_validate({"timeout": 30, **settings}))
    async with asyncio.TaskGroup() as group:
        tasks = BackgroundTasks(group, "bench")
        await function.start(tasks)
        try:
            await body(function)
        finally:
            await function.close()
            await tasks.close()


async def cold_start(settings: dict[str, Any], samples: int) -> dict[str, Any]:
    inits: list[float] = []
    firsts: list[float] = []

    async def once(function: FunctionRuntime) -> None:
        started = time.perf_counter()
        result = await function.invoke_payload(b"{}")
        firsts.append(time.perf_counter() - started)
        if result.error is not None or result.init_duration is None:
            raise RuntimeError(f"cold invocation failed: {result.error}")
        inits.append(result.init_duration)

    for _ in range(samples):
        await _with_function(settings, once)
    return {"init": summary(inits), "first_invocation": summary(firsts)}


async def warm(settings: dict[str, Any], events: dict[str, Any], samples: int) -> dict[str, Any]:
    results: dict[str, Any] = {}

    async def run(function: FunctionRuntime) -> None:
        for name, event in events.items():
            times = []
            for index in range(samples + 20):  # the first 20 warm up
                started = time.perf_counter()
                answer = await function.invoke(event, fresh=True)
                if index >= 20:
                    times.append(time.perf_counter() - started)
                if isinstance(answer, InvocationError):
                    raise RuntimeError(f"warm invocation failed: {answer}")
            results[name] = summary(times)
        if function.pool is not None:
            [environment] = function.pool.environments()
            assert environment.pid is not None
            results["idle_rss_mb"] = ProcessGroupMemory(environment.pid).resident() / MB

    await _with_function(settings, run)
    return results


async def main_async(samples: int, cold_samples: int) -> dict[str, Any]:
    events = {"empty event": {}, "kafka event, 100 x 1 KiB": kafka_event(100)}
    results: dict[str, Any] = {}
    for name, settings in RUNTIMES.items():
        results[name] = {
            "cold": await cold_start(settings, cold_samples),
            "warm": await warm(settings, events, samples),
        }
    results["inline"] = {
        "warm": await warm({"runtime": "inline", "handler": "bench.handlers:noop"}, events, samples)
    }
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        "| Runtime | Cold start: init, median / p99 ms | Cold start: first invocation, median / p99 ms "
        "| Warm round trip, empty event, median / p99 ms | Warm round trip, Kafka 100 x 1 KiB, median / p99 ms "
        "| Idle environment RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results.items():
        cold = entry.get("cold")
        warm_ = entry["warm"]

        def pair(row: dict[str, float] | None) -> str:
            return f"{row['median_ms']:.2f} / {row['p99_ms']:.2f}" if row else "-"

        rss = warm_.get("idle_rss_mb")
        lines.append(
            f"| {name} | {pair(cold and cold['init'])} | {pair(cold and cold['first_invocation'])} "
            f"| {pair(warm_['empty event'])} | {pair(warm_['kafka event, 100 x 1 KiB'])} "
            f"| {f'{rss:.1f}' if rss is not None else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.environments", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--samples", type=int, default=1000, help="warm invocations per event (default 1000)")
    parser.add_argument("--cold-samples", type=int, default=20, help="cold starts per runtime (default 20)")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        results = runner.run(main_async(args.samples, args.cold_samples))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
