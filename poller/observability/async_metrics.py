"""Prometheus metrics of asynchronous invocations, read at scrape time (SPEC sections 8 and 13).

AWS's names, as poller metrics: ``AsyncEventsReceived`` is ``poller_async_events_received``,
``AsyncEventsDropped`` ``poller_async_events_dropped`` (by condition: RetriesExhausted or
EventAgeExceeded; an event sent to an on-failure or dead-letter destination counts too, as on
AWS), and ``AsyncEventAge`` the histogram ``poller_async_event_age_seconds`` (observed at each
attempt, in :mod:`poller.observability.async_spans`). The queue itself: its depth and the age of
its oldest event per function, as the workers last counted them (every second while they run).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from poller.invocation.asynchronous.invoker import AsyncInvocations


class AsyncInvocationCollector(Collector):
    def __init__(self, invocations: AsyncInvocations) -> None:
        self.invocations = invocations

    def collect(self) -> Iterator[Metric]:
        invocations = self.invocations
        received = CounterMetricFamily(
            "poller_async_events_received",
            "Events accepted for asynchronous invocation by this process (AWS: AsyncEventsReceived).",
            labels=["function"],
        )
        attempts = CounterMetricFamily(
            "poller_async_attempts",
            "Invocations of asynchronous events, retries included.",
            labels=["function"],
        )
        succeeded = CounterMetricFamily(
            "poller_async_events_succeeded", "Asynchronous events the function handled.", labels=["function"]
        )
        retries = CounterMetricFamily(
            "poller_async_retries",
            "Asynchronous events set to be attempted again, by reason (FunctionError, Throttled).",
            labels=["function", "reason"],
        )
        dropped = CounterMetricFamily(
            "poller_async_events_dropped",
            "Asynchronous events given up, by condition (AWS: AsyncEventsDropped).",
            labels=["function", "condition"],
        )
        for function, counts in invocations.counts.items():
            received.add_metric([function], counts.received)
            attempts.add_metric([function], counts.attempts)
            succeeded.add_metric([function], counts.succeeded)
            for reason, count in counts.retries.items():
                retries.add_metric([function, reason], count)
            for condition, count in counts.dropped.items():
                dropped.add_metric([function, condition], count)
        yield from (received, attempts, succeeded, retries, dropped)
        yield from self._queue()
        yield from self._deliveries()

    def _queue(self) -> Iterator[Metric]:
        invocations = self.invocations
        depth = GaugeMetricFamily(
            "poller_async_queue_depth",
            "Asynchronous events in the queue (waiting, being attempted, or being sent to destinations).",
            labels=["function"],
        )
        oldest = GaugeMetricFamily(
            "poller_async_oldest_event_age_seconds",
            "Age of the oldest asynchronous event in the queue.",
            labels=["function"],
        )
        in_flight = GaugeMetricFamily(
            "poller_async_in_flight_attempts",
            "Attempts of asynchronous events running now.",
            labels=["function"],
        )
        now = invocations.clock.now()
        for function, backlog in invocations.backlog.items():
            depth.add_metric([function], backlog.events)
            oldest.add_metric([function], max(0.0, now - backlog.oldest_accepted_at))
        for function in invocations.functions:
            in_flight.add_metric([function], invocations.attempting(function))
        consuming = GaugeMetricFamily(
            "poller_async_queue_consumer",
            "1 when this process works the queue of asynchronous events (0: another one does, or none yet).",
        )
        consuming.add_metric([], 1 if invocations.consuming else 0)
        yield from (depth, oldest, in_flight, consuming)

    def _deliveries(self) -> Iterator[Metric]:
        counts = self.invocations.deliveries.counts
        sent = CounterMetricFamily(
            "poller_async_deliveries",
            "Messages of asynchronous events confirmed by a destination, by kind (on_success, on_failure, "
            "dead_letter).",
            labels=["kind"],
        )
        for kind, count in counts.sent.items():
            sent.add_metric([kind], count)
        failed = CounterMetricFamily(
            "poller_async_delivery_failures",
            "Sends to a destination that did not confirm them (tried again).",
        )
        failed.add_metric([], counts.failed)
        lost = CounterMetricFamily(
            "poller_async_deliveries_dropped", "Messages no destination could ever take (too large), dropped."
        )
        lost.add_metric([], counts.dropped)
        yield from (sent, failed, lost)
