"""Prometheus metrics of the runners, read at scrape time (SPEC section 8).

The hot path only increments integers in each runner's :class:`~poller.runtime.status.MappingCounts`;
this collector turns them into metric families when ``/metrics`` is scraped. Histograms (durations,
batch sizes) are observed by :mod:`poller.observability.tracing`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from poller.engine.windows import state_size
from poller.runtime.environments.pool import INIT_BUCKETS
from poller.runtime.function import FunctionRuntime
from poller.runtime.runner import MappingRunner
from poller.sources import Lagging

# name, help, MappingCounts field
_COUNTERS = [
    ("poller_records_polled", "Records read from the source.", "polled"),
    ("poller_records_filtered", "Records that matched no filter: committed, never invoked.", "filtered"),
    ("poller_records_invoked", "Records passed to an invocation; retries count again.", "invoked"),
    ("poller_records_succeeded", "Records in invocations that succeeded.", "succeeded"),
    ("poller_records_failed", "Records in invocations that failed or reported failures.", "failed"),
    ("poller_records_dead_lettered", "Records delivered to the on-failure destination.", "dead_lettered"),
    ("poller_records_dropped", "Records given up with no on-failure destination.", "dropped"),
    ("poller_invocations", "Handler invocations.", "invocations"),
    ("poller_retries", "Retries of failed batches (in process or handed back to the broker).", "retries"),
    ("poller_bisections", "Failed batches split in two.", "bisections"),
]


def lag_of(runner: MappingRunner) -> dict[str, int]:
    """The lag of a runner's source per partition, in the unit its ``lag_metric`` names."""
    return runner.source.lag() if isinstance(runner.source, Lagging) else {}


class RunnerCollector(Collector):
    """Reads the runners' counters at scrape time, so the hot path only increments integers."""

    def __init__(self, runners: Mapping[str, MappingRunner]) -> None:
        self.runners = runners

    def collect(self) -> Iterator[Metric]:
        for name, help_text, field in _COUNTERS:
            counter = CounterMetricFamily(name, help_text, labels=["mapping"])
            for mapping, runner in self.runners.items():
                counter.add_metric([mapping], getattr(runner.status.counts, field))
            yield counter
        in_flight = GaugeMetricFamily(
            "poller_in_flight_invocations", "Invocations running now.", labels=["mapping"]
        )
        ready = GaugeMetricFamily(
            "poller_mapping_ready", "1 when the mapping is connected and polling.", labels=["mapping"]
        )
        for mapping, runner in self.runners.items():
            in_flight.add_metric([mapping], runner.status.counts.in_flight)
            ready.add_metric([mapping], 1 if runner.status.ready else 0)
        yield in_flight
        yield ready
        # Each source type says in which metric its lag goes: the units differ (records, messages,
        # milliseconds), so they do not share one.
        lags: dict[str, GaugeMetricFamily] = {}
        for mapping, runner in self.runners.items():
            if not isinstance(runner.source, Lagging):
                continue
            metric = runner.source.lag_metric
            family = lags.get(metric.name)
            if family is None:
                family = lags[metric.name] = GaugeMetricFamily(
                    metric.name, metric.help, labels=["mapping", "partition"]
                )
            for partition, value in lag_of(runner).items():
                family.add_metric([mapping, partition], value)
        yield from lags.values()
        yield from self._windows()

    def _windows(self) -> Iterator[Metric]:
        windowed = {
            name: runner.windows for name, runner in self.runners.items() if runner.windows is not None
        }
        if not windowed:
            return
        count = GaugeMetricFamily(
            "poller_tumbling_windows_open", "Tumbling windows open now.", labels=["mapping"]
        )
        size = GaugeMetricFamily(
            "poller_tumbling_window_state_bytes",
            "Size of an open tumbling window's state, as JSON.",
            labels=["mapping", "partition"],
        )
        for mapping, keeper in windowed.items():
            windows = keeper.open_windows()
            count.add_metric([mapping], len(windows))
            for partition, window in windows.items():
                size.add_metric([mapping, partition], state_size(window.state))
        yield count
        yield size


class FunctionCollector(Collector):
    """Reads each function's environment pool at scrape time: cold starts, init durations, and
    how many environments are busy, idle and provisioned (functions that run inline have none)."""

    def __init__(self, functions: Mapping[str, FunctionRuntime]) -> None:
        self.functions = functions

    def collect(self) -> Iterator[Metric]:
        cold_starts = CounterMetricFamily(
            "poller_function_cold_starts",
            "Invocations that waited for a new environment's init.",
            labels=["function"],
        )
        init_failures = CounterMetricFamily(
            "poller_function_init_failures", "Environments whose init failed.", labels=["function"]
        )
        init = HistogramMetricFamily(
            "poller_function_init_duration_seconds",
            "Init (runtime start and module code) of each environment.",
            labels=["function"],
        )
        environments = GaugeMetricFamily(
            "poller_function_environments",
            "Environments by state (busy or idle).",
            labels=["function", "state"],
        )
        provisioned = GaugeMetricFamily(
            "poller_function_provisioned_environments",
            "Provisioned environments initialised and alive.",
            labels=["function"],
        )
        for name, function in self.functions.items():
            pool = function.pool
            if pool is None:
                continue
            stats = pool.stats
            cold_starts.add_metric([name], stats.cold_starts)
            init_failures.add_metric([name], stats.init_failures)
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, INIT_BUCKETS), "+Inf"], stats.init_counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            init.add_metric([name], buckets, stats.init_seconds)
            environments.add_metric([name, "busy"], pool.busy)
            environments.add_metric([name, "idle"], pool.idle)
            provisioned.add_metric([name], pool.provisioned_ready)
        yield from (cold_starts, init_failures, init, environments, provisioned)
