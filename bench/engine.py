"""The engine's own cost per record, without a broker: ``python -m bench.engine``.

Runs the real :class:`~poller.runtime.runner.MappingRunner` (lanes, batching, ordered commits, spans, the
function runtime with a no-op handler that only counts records) over an in-memory Kafka-shaped
source whose ``poll`` converts fetched client messages as the Kafka source does. It reports the
CPU time per record from a poll to a commit, which is what the poller adds to the client library
(the raw loop's cost) in the broker benchmarks. One process and no I/O, so unlike those it is
steady enough to compare two versions of the code (run from outside the repository with
``PYTHONPATH=DIR:REPO``, DIR holding another ``poller`` package) or to count instructions under
callgrind. Not part of the test suite.

The function is ``runtime: inline`` unless ``--environments`` is given: then it runs the default
runtime, in execution environments (SPEC section 12), whose CPU is reported apart, and the end is
seen in the runner's counts rather than by the handler.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, ClassVar

import orjson

from bench.handlers import count
from bench.micro import kafka_messages
from poller.app import loop_factory, tune_garbage_collector
from poller.config import Config
from poller.engine.records import Record
from poller.observability.tracing import configure_tracing
from poller.runtime.function import FunctionRuntime
from poller.runtime.runner import MappingRunner
from poller.sources import LaneListener
from poller.sources.kafka.event import KafkaEventFormat, to_records
from poller.tasks import BackgroundTasks

TOPIC = "bench"
_handled: dict[str, Any] = {}  # what `counted` has seen, and when to say that it has seen all


async def counted(event: dict[str, Any], context: object) -> None:
    """The no-op handler: counts the records, and sets ``done`` once all of them were handled or
    filtered out. (Filtering happens before the invocation of the batch's other records, and every
    batch of this benchmark holds records that match.)"""
    _handled["count"] += count(event)
    if _handled["count"] + _handled["runner"].status.counts.filtered >= _handled["target"]:
        _handled["done"].set()


class MemoryKafkaSource:
    """Serves ``total`` records over ``partitions`` partitions: per poll, ``fetch`` messages of
    every partition whose lane is not paused. When it has nothing to serve, a poll waits for a
    lane to resume (or :meth:`wake`), not for a clock: what the run costs then does not depend on
    how long it takes, which under callgrind is fifty times longer. ``on_commit`` is called after
    every commit."""

    ordered: ClassVar[bool] = True
    reads = TOPIC
    consumer_group = None

    def __init__(self, total: int, partitions: int, fetch: int, *, json_values: bool = False) -> None:
        self.format = KafkaEventFormat("127.0.0.1:9092")
        self._messages = kafka_messages(fetch, values=order_values(fetch) if json_values else None)
        share, extra = divmod(total, partitions)
        self._left = {f"{TOPIC}-{p}": share + (p < extra) for p in range(partitions)}
        self._partition_of = {f"{TOPIC}-{p}": p for p in range(partitions)}
        self._paused: set[str] = set()
        self._resumed = asyncio.Event()
        self.on_commit: Callable[[], None] | None = None

    async def start(self, listener: LaneListener, tasks: BackgroundTasks) -> None:
        pass

    async def poll(self) -> list[Record]:
        records: list[Record] = []
        for lane, left in self._left.items():
            if left and lane not in self._paused:
                taken = self._messages[: min(left, len(self._messages))]
                self._left[lane] = left - len(taken)
                records += to_records(taken, lane, TOPIC, self._partition_of[lane])
        if not records:  # every lane paused or served: let the lanes work
            self._resumed.clear()
            await self._resumed.wait()
        return records

    async def commit(self, records: Sequence[Record]) -> None:
        if self.on_commit is not None:
            self.on_commit()

    def pause(self, lanes: Collection[str]) -> None:
        self._paused.update(lanes)

    def resume(self, lanes: Collection[str]) -> None:
        self._paused.difference_update(lanes)
        self._resumed.set()

    def wake(self) -> None:
        """End a poll's wait (the run is over: the runner stops polling)."""
        self._resumed.set()

    async def close(self) -> None:
        pass


def order_values(count: int, size: int = 1024) -> list[bytes]:
    """JSON values of about ``size`` bytes, alternately of kind "order" and "refund"."""
    pad = "x" * max(0, size - 80)
    kinds = ("order", "refund")
    return [
        orjson.dumps({"kind": kinds[i % 2], "amount": i, "region": "eu-west-1", "pad": pad})
        for i in range(count)
    ]


def children_cpu() -> float:
    """CPU seconds of this process's live children (the environments), from /proc."""
    total = 0.0
    me = os.getpid()
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


async def run(
    total: int,
    partitions: int,
    fetch: int,
    batch_size: int,
    pattern: str | None = None,
    *,
    json_values: bool = False,
    environments: bool = False,
) -> tuple[float, float]:
    """CPU seconds of the process (and of its environments) for ``total`` records from first poll
    to the last invocation; with a filter ``pattern`` (or ``json_values``) the values are JSON
    orders and refunds (:func:`order_values`)."""
    filters = {"filter_criteria": {"filter": [{"pattern": pattern}]}} if pattern else {}
    function_settings = (
        {"handler": "bench.handlers:noop"}
        if environments
        else {"runtime": "inline", "handler": "bench.engine:counted"}
    )
    config = Config.model_validate(
        {
            "connections": {"k": {"type": "kafka", "bootstrap_servers": "127.0.0.1:9092"}},
            "functions": {"fn": function_settings},
            "mappings": {
                "m": {
                    "function_name": "fn",
                    "source": {"type": "kafka", "connection": "k", "topics": [TOPIC]},
                    "batch_size": batch_size,
                    **filters,
                }
            },
            "admin": {"port": 0},
        }
    )
    mapping = config.mappings["m"]
    function = FunctionRuntime("fn", config.functions["fn"])
    source = MemoryKafkaSource(total, partitions, fetch, json_values=json_values or pattern is not None)
    runner = MappingRunner("m", mapping, source, function, None)  # type: ignore[arg-type]
    # The function runtime imports the handler as bench.engine, which is not this module when
    # run as ``python -m bench.engine`` (then it is __main__): talk to that one.
    from bench import engine

    handled = engine._handled
    handled.update(count=0, target=total, done=asyncio.Event(), runner=runner)
    async with asyncio.TaskGroup() as group:
        await function.start(BackgroundTasks(group, "fn"))
        if environments:  # warm the environments up first: the first poll would wait for them
            await asyncio.gather(*(function.invoke({"records": {}}) for _ in range(partitions)))
        started, children = time.process_time(), children_cpu()
        task = group.create_task(runner.run())
        if environments:
            # The handler runs in other processes: the runner's counts tell the end, which they
            # reach before the last commit.
            counts, ended = runner.status.counts, asyncio.Event()

            def end_when_all_are_counted() -> None:
                if counts.succeeded + counts.filtered >= total:
                    ended.set()

            source.on_commit = end_when_all_are_counted
            await ended.wait()
        else:
            await handled["done"].wait()
        used, children = time.process_time() - started, children_cpu() - children
        runner.stop()
        source.wake()
        await task
        await function.close()
    return used, children


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--fetch", type=int, default=500, help="messages per partition and poll")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    parser.add_argument(
        "--json-values", action="store_true", help="JSON values, as --filter has, without a filter"
    )
    parser.add_argument(
        "--environments",
        action="store_true",
        help="run the handler in execution environments (the default runtime), not inline",
    )
    parser.add_argument(
        "--filter",
        metavar="PATTERN",
        help='a filter pattern, e.g. \'{"value": {"kind": ["order"]}}\': the values are then JSON, '
        "half of them orders (the records' count includes the filtered ones)",
    )
    args = parser.parse_args(argv)
    # As `poller run` sets them up: tracing (from the OTEL_* variables), its event loop and its
    # garbage collector settings.
    configure_tracing()
    tune_garbage_collector()
    runs = []
    for _ in range(args.repeat):
        with asyncio.Runner(loop_factory=loop_factory()) as loop:
            runs.append(
                loop.run(
                    run(
                        args.records,
                        args.partitions,
                        args.fetch,
                        args.batch_size,
                        args.filter,
                        json_values=args.json_values,
                        environments=args.environments,
                    )
                )
            )
    best = min(runs)
    per_record = best[0] / args.records * 1e6
    print(
        f"engine, kafka-shaped, {args.partitions} partitions, batch {args.batch_size}"
        + (f", filter {args.filter}" if args.filter else ", JSON values" if args.json_values else "")
        + (", environments" if args.environments else ", inline")
        + ": "
        f"{per_record:.2f} us CPU per record (best of {args.repeat}; runs "
        + ", ".join(f"{used / args.records * 1e6:.2f}" for used, _ in runs)
        + ")"
        + (f"; environments {best[1] / args.records * 1e6:.2f} us per record" if args.environments else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
