"""Traces and the event-age histogram of asynchronous invocations (SPEC sections 8 and 13).

An event is one trace, from its acceptance to its last delivery: accepting it opens a span
(``queue <function>``, PRODUCER; a child of the caller's W3C ``traceparent`` when there is one)
whose context is stored with the event, and every attempt (``invoke <function>``, CONSUMER) and
every delivery to a destination (``send <destination>``, PRODUCER) is a child of that context, in
whichever process and after however many restarts it happens. The invoker calls these hooks and
never touches OpenTelemetry itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Histogram

from poller.engine.outcome import InvocationError

# Upper bounds of the event age histogram, in seconds: from an idle queue to the 6-hour maximum.
AGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 180, 600, 1800, 3600, 10800, 21600)


@dataclass
class AttemptReport:
    """What one attempt's span wants to know; the function runtime fills in the first two."""

    coldstart: bool | None = None
    invocation_id: str | None = None
    error: InvocationError | None = None
    throttled: bool = False


def trace_id_of(trace_parent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` (for log lines)."""
    if not trace_parent:
        return None
    parts = trace_parent.split("-")
    return parts[1] if len(parts) >= 4 and len(parts[1]) == 32 else None


class AsyncTelemetry:
    """The spans of asynchronous events, and AWS's ``AsyncEventAge`` as a histogram observed at
    every attempt (``poller_async_event_age_seconds``)."""

    def __init__(self, tracer: trace.Tracer, registry: CollectorRegistry | None) -> None:
        self.tracer = tracer
        self.event_age = Histogram(
            "poller_async_event_age_seconds",
            "Age of an asynchronous event when an attempt starts (AWS's AsyncEventAge).",
            ["function"],
            registry=registry,
            buckets=AGE_BUCKETS,
        )

    @contextmanager
    def accepted(self, function: str, request_id: str, trace_parent: str | None) -> Iterator[str | None]:
        """The span of accepting one event; yields the ``traceparent`` to store with it: this
        span's when it is recorded, else the caller's (or None). An unrecorded span's context
        would tell the poller that works the event, which may record its spans, to drop them."""
        attributes = {
            "faas.invoked_name": function,
            "faas.invocation_id": request_id,
            "messaging.operation.type": "send",
        }
        with self.tracer.start_as_current_span(
            f"queue {function}", context=_parent(trace_parent), kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            yield (_traceparent(span) if span.is_recording() else None) or trace_parent

    @contextmanager
    def attempt(
        self, function: str, request_id: str, trace_parent: str | None, *, attempt: int, age: float
    ) -> Iterator[AttemptReport]:
        """The span of one attempt of an event (current while the function runs, so its X-Ray
        header carries it), and the event's age in the histogram."""
        self.event_age.labels(function).observe(max(0.0, age))
        report = AttemptReport()
        attributes: dict[str, Any] = {
            "faas.invoked_name": function,
            "faas.invocation_id": request_id,
            "poller.attempt": attempt,
            "poller.async.event_age_seconds": round(age, 3),
            "messaging.operation.type": "process",
        }
        with self.tracer.start_as_current_span(
            f"invoke {function}",
            context=_parent(trace_parent),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
        ) as span:
            yield report
            if report.throttled:
                span.set_attribute("poller.throttled", True)
                span.set_status(Status(StatusCode.ERROR, "throttled: no concurrency left"))
            elif report.error is not None:
                span.set_status(Status(StatusCode.ERROR, report.error.message))
                span.set_attribute("error.type", report.error.error_type)
                span.add_event(
                    "exception",
                    {"exception.type": report.error.error_type, "exception.message": report.error.message},
                )
            if report.coldstart is not None:
                span.set_attribute("faas.coldstart", report.coldstart)

    @contextmanager
    def delivery(
        self, function: str, trace_parent: str | None, destination: str, kind: str
    ) -> Iterator[None]:
        """The span of sending an event's record (or the event itself) to a destination;
        destinations put :func:`~poller.observability.tracing.trace_headers` into what they write."""
        attributes = {
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": destination,
            "faas.invoked_name": function,
            "poller.async.destination_kind": kind,
        }
        with self.tracer.start_as_current_span(
            f"send {destination}",
            context=_parent(trace_parent),
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        ):
            yield


def _parent(trace_parent: str | None) -> otel_context.Context | None:
    """The context a stored ``traceparent`` describes; None (the current one) without one."""
    if not trace_parent:
        return None
    return propagate.extract({"traceparent": trace_parent})


def _traceparent(span: trace.Span) -> str | None:
    context = span.get_span_context()
    if not context.is_valid:
        return None
    flags = "01" if context.trace_flags.sampled else "00"
    return f"00-{trace.format_trace_id(context.trace_id)}-{trace.format_span_id(context.span_id)}-{flags}"
