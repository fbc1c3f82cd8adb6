"""One small module per broker, behind :class:`SourceBench`.

A source bench knows how to reach its stand-in broker, make a fresh topic/queue/stream and fill it,
write the poller's config for it, and run the other contenders' consumers (``raw`` and, where it
supports the broker, ``faststream``). The consumers run in a process of their own through
``python -m bench.consume SOURCE CONTENDER SPEC``, which calls :meth:`SourceBench.consume`.

To add a broker: subclass :class:`SourceBench` in ``bench/sources/<name>.py`` and list it in
:data:`SOURCES`. :meth:`SourceBench.available` says whether the poller can run it yet.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from abc import ABC, abstractmethod
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar, TextIO

from bench.progress import Progress

# name -> "module:class"; the order is the order of the report.
SOURCES = {
    "kafka": "bench.sources.kafka:KafkaBench",
    "rabbitmq": "bench.sources.rabbitmq:RabbitMQBench",
    "sqs": "bench.sources.sqs:SqsBench",
    "kinesis": "bench.sources.kinesis:KinesisBench",
}

RECORD_SIZE = 1024  # bytes of payload per record


@dataclass(frozen=True)
class Workload:
    """What one run consumes. ``parallelism`` is partitions (Kafka), shards (Kinesis) or concurrent
    receivers (SQS, RabbitMQ prefetch windows do not apply)."""

    records: int
    batch_size: int
    parallelism: int
    window: float | None = None  # maximum_batching_window_in_seconds; None = the AWS default
    size: int = RECORD_SIZE
    # Kafka: 0 for random values; N for JSON values of N kinds, of which a filter keeps one.
    value_kinds: int = 0


@dataclass
class Target:
    """A fresh, filled resource for one run (a topic, a queue, a stream)."""

    name: str
    workload: Workload
    extra: dict[str, Any] = field(default_factory=dict)


class SourceBench(ABC):
    name: ClassVar[str]
    # Contenders besides the poller (the default runtime), in the order they alternate with it;
    # every source has the inline runtime beside it, since SPEC section 10 sets a target for each.
    contenders: ClassVar[tuple[str, ...]] = ("raw", "poller-inline")
    # The default throughput workload: sized so that one source's part of the run stays short.
    default_records: ClassVar[int]
    default_parallelism: ClassVar[int] = 4
    default_batch_size: ClassVar[int] = 100
    # Records per point of the scaling suite.
    scaling_records: ClassVar[int] = 50_000
    # Rates below this are the broker's, not the consumer's (a stand-in's ceiling): reported, and
    # the comparison is then made on CPU per record.
    broker_bound: ClassVar[bool] = False

    @staticmethod
    def poller_module() -> str | None:
        """The poller source module this bench needs, checked by :meth:`available`."""
        return None

    @classmethod
    def available(cls) -> str | None:
        """None when the poller can consume this source; else why not."""
        module = cls.poller_module()
        if module and importlib.util.find_spec(module) is None:
            return f"{module} does not exist yet"
        if module:
            import poller.sources

            # The registry is private to poller.sources; read it defensively.
            if cls.name not in getattr(poller.sources, "_SOURCES", {cls.name: None}):
                return f"{module} is not registered in poller.sources yet"
        return None

    def scaling_batch_sizes(self, wanted: list[int]) -> list[int]:
        """The batch sizes of the scaling suite this source can take."""
        return wanted

    @abstractmethod
    async def start(self, stack: AsyncExitStack) -> None:
        """Make sure the broker answers; register whatever must be stopped at the end on ``stack``."""

    def describe(self) -> str:
        """The broker and its version, for the report."""
        return self.name

    @abstractmethod
    async def prepare(self, workload: Workload) -> Target:
        """A fresh resource with ``workload.records`` records of ``workload.size`` bytes waiting."""

    @abstractmethod
    async def cleanup(self, target: Target) -> None:
        """Delete the resource (its memory in the broker matters for the next runs)."""

    @abstractmethod
    async def create_empty(self, workload: Workload) -> Target:
        """A fresh empty resource, for the latency suite's paced producer."""

    @abstractmethod
    async def produce_paced(self, target: Target, rate: float, count: int) -> None:
        """Send ``count`` records at ``rate`` per second, each carrying its send time
        (``time.time_ns()``) in the ``sent_at`` header, attribute or (Kinesis) data prefix."""

    @abstractmethod
    def poller_connection(self) -> dict[str, Any]:
        """The ``connections:`` entry of the poller's config."""

    @abstractmethod
    def poller_source(self, target: Target) -> dict[str, Any]:
        """The ``source:`` of the mapping, without ``type``'s connection name (added by the caller)."""

    def poller_mapping_extra(self, target: Target) -> dict[str, Any]:
        """Further mapping keys this source needs (scaling, checkpoints)."""
        return {}

    @abstractmethod
    def spec(self, target: Target, contender: str) -> dict[str, Any]:
        """What a contender process needs to consume ``target`` (JSON-ready)."""

    @classmethod
    @abstractmethod
    async def consume(
        cls,
        contender: str,
        spec: dict[str, Any],
        progress: Progress,
        latency: TextIO | None,
        stop: asyncio.Event,
    ) -> None:
        """In the contender's own process: consume until ``stop`` is set (by SIGTERM).

        Call ``progress.add(n)`` once per batch, after it is acknowledged; with ``latency`` (an
        open text file), write ``<send time ns> <receive time minus send time, s>`` per record."""


def load(name: str) -> type[SourceBench]:
    module_name, _, class_name = SOURCES[name].partition(":")
    cls: type[SourceBench] = getattr(importlib.import_module(module_name), class_name)
    return cls
