"""Admin HTTP endpoints (aiohttp): /healthz, /readyz, /metrics and /mappings."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from poller.runtime.runner import MappingRunner
from poller.sources import Lagging

log = logging.getLogger(__name__)


class AdminServer:
    """Serves the state of the runners; started before them, stopped after them."""

    def __init__(
        self, host: str, port: int, runners: Mapping[str, MappingRunner], registry: CollectorRegistry
    ) -> None:
        self.host = host
        self.port = port
        self.runners = runners
        self.registry = registry
        registry.register(RunnerCollector(runners))
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/mappings", self._mappings)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]  # the real port when 0 asked for a free one
        log.info("admin endpoints on http://%s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        not_ready = {
            name: runner.status.last_error or runner.status.state
            for name, runner in self.runners.items()
            if not runner.status.ready
        }
        body = {"ready": not not_ready, "mappings": not_ready}
        return web.json_response(body, status=200 if not not_ready else 503)

    async def _mappings(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                name: {
                    "state": runner.status.state,
                    "ready": runner.status.ready,
                    "lastError": runner.status.last_error,
                    "sourceType": runner.mapping.source.type,
                    "function": runner.mapping.function_name,
                    "counts": runner.stats.as_dict(),
                    "lag": lag_of(runner),
                    "iteratorAgeMilliseconds": iterator_age_of(runner),
                }
                for name, runner in self.runners.items()
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def lag_of(runner: MappingRunner) -> dict[str, int]:
    return runner.source.lag() if isinstance(runner.source, Lagging) else {}


def iterator_age_of(runner: MappingRunner) -> dict[str, int]:
    iterator_age = getattr(runner.source, "iterator_age", None)
    return dict(iterator_age()) if callable(iterator_age) else {}


# name, help, MappingStats field
_COUNTERS = [
    ("poller_records_polled", "Records read from the source.", "polled"),
    ("poller_records_invoked", "Records passed to an invocation; retries count again.", "invoked"),
    ("poller_records_succeeded", "Records in invocations that succeeded.", "succeeded"),
    ("poller_records_failed", "Records in invocations that failed or reported failures.", "failed"),
    ("poller_records_dead_lettered", "Records delivered to the on-failure destination.", "dead_lettered"),
    ("poller_records_dropped", "Records given up with no on-failure destination.", "dropped"),
    ("poller_invocations", "Handler invocations.", "invocations"),
    ("poller_retries", "Retries of failed batches (in process or handed back to the broker).", "retries"),
    ("poller_bisections", "Failed batches split in two.", "bisections"),
]

# The unit of Lagging.lag() differs per source type, so each gets a metric of its own name.
_LAG_METRICS = {
    "kafka": (
        "poller_kafka_offset_lag_records",
        "Records between the committed offset and the partition end.",
    ),
    "sqs": ("poller_queue_backlog_messages", "Messages waiting in the queue (approximate)."),
    "rabbitmq": ("poller_queue_backlog_messages", "Messages waiting in the queue (approximate)."),
}


class RunnerCollector(Collector):
    """Reads the runners' counters at scrape time, so the hot path only increments integers."""

    def __init__(self, runners: Mapping[str, MappingRunner]) -> None:
        self.runners = runners

    def collect(self) -> Iterator[Metric]:
        for name, help_text, field in _COUNTERS:
            counter = CounterMetricFamily(name, help_text, labels=["mapping"])
            for mapping, runner in self.runners.items():
                counter.add_metric([mapping], getattr(runner.stats, field))
            yield counter
        in_flight = GaugeMetricFamily(
            "poller_in_flight_invocations", "Invocations running now.", labels=["mapping"]
        )
        ready = GaugeMetricFamily(
            "poller_mapping_ready", "1 when the mapping is connected and polling.", labels=["mapping"]
        )
        for mapping, runner in self.runners.items():
            in_flight.add_metric([mapping], runner.stats.in_flight)
            ready.add_metric([mapping], 1 if runner.status.ready else 0)
        yield in_flight
        yield ready
        lags: dict[str, GaugeMetricFamily] = {}
        ages = GaugeMetricFamily(
            "poller_kinesis_iterator_age_milliseconds",
            "How far behind the shard end (MillisBehindLatest).",
            labels=["mapping", "partition"],
        )
        for mapping, runner in self.runners.items():
            kind = runner.mapping.source.type
            if kind in _LAG_METRICS:
                metric, help_text = _LAG_METRICS[kind]
                family = lags.setdefault(
                    metric, GaugeMetricFamily(metric, help_text, labels=["mapping", "partition"])
                )
                for partition, value in lag_of(runner).items():
                    family.add_metric([mapping, partition], value)
            for shard, age in iterator_age_of(runner).items():
                ages.add_metric([mapping, shard], age)
        yield from lags.values()
        yield ages
