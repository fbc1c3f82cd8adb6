"""Tracing (OpenTelemetry) and metrics (Prometheus) around the engine's steps (SPEC section 8).

The batch processor calls three hooks — a batch, an invocation attempt, an on-failure delivery —
and never touches OpenTelemetry itself. Span names and attributes follow the OpenTelemetry messaging
semantic conventions as of v1.27 (``messaging.operation.type``, ``messaging.consumer.group.name``,
``messaging.batch.message_count``); each source's event format names its ``messaging.system``. A
batch span links to every record's producer context, which the event format finds in the record
(W3C ``traceparent`` in Kafka or AMQP headers or SQS message attributes, or SQS's X-Ray header).
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry, Histogram

from poller.config import Mapping as MappingConfig
from poller.engine.outcome import Failed, Outcome, PartiallyFailed
from poller.engine.records import Batch, Record
from poller.redaction import redact
from poller.sources.protocol import EventFormat, Source

SEMCONV_VERSION = "1.27.0"
MAX_LINKS = 128  # the SDK's default span link limit


@dataclass(frozen=True)
class MappingInfo:
    """What every span of one mapping carries."""

    mapping: str
    function: str
    messaging_system: str  # OpenTelemetry's messaging.system of the broker
    source_name: str  # the topics, queues or stream the mapping reads (messaging.destination.name)
    consumer_group: str | None = None

    @classmethod
    def of(cls, name: str, mapping: MappingConfig, source: Source) -> MappingInfo:
        return cls(
            name, mapping.function_name, source.format.messaging_system, source.reads, source.consumer_group
        )


class Telemetry:
    """Spans and histograms for one App. Counters live in the runners' stats and are read by the
    collector in :mod:`poller.observability.admin` at scrape time."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer(
            "poller", schema_url=f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
        )
        self.registry = registry or CollectorRegistry()
        self.invocation_duration = Histogram(
            "poller_invocation_duration_seconds",
            "Duration of handler invocations.",
            ["mapping", "outcome"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
        )
        self.batch_size = Histogram(
            "poller_batch_size_records",
            "Records per invocation.",
            ["mapping"],
            registry=self.registry,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
        )

    @contextmanager
    def batch(
        self,
        info: MappingInfo,
        source_format: EventFormat,
        batch: Batch,
        positions: tuple[Any, Any],
        parent: bool,
    ) -> Iterator[BatchSpan]:
        """The span of a batch (``process <destination>``, CONSUMER). A bisected half is opened
        inside its parent's span and so becomes its child. Sets ``batch.trace_id``."""
        links = [Link(context) for context in producer_contexts(batch.records, source_format)[:MAX_LINKS]]
        attributes: dict[str, Any] = {
            "messaging.system": info.messaging_system,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": info.source_name,
            "messaging.destination.partition.id": batch.records[0].partition,
            "messaging.batch.message_count": len(batch.records),
            "poller.mapping": info.mapping,
            "poller.function": info.function,
            "poller.batch.first_position": str(positions[0]),
            "poller.batch.last_position": str(positions[1]),
            "poller.bisect_depth": batch.depth,
        }
        if info.consumer_group:
            attributes["messaging.consumer.group.name"] = info.consumer_group
        name = f"process {info.source_name}" if not parent else f"process {info.source_name} (bisected)"
        with self._span(name, SpanKind.CONSUMER, attributes, links) as span:
            context = span.get_span_context()
            if context.is_valid:
                batch.trace_id = trace.format_trace_id(context.trace_id)
            yield BatchSpan(span)

    @contextmanager
    def window_close(self, info: MappingInfo, partition: str, window: dict[str, str]) -> Iterator[None]:
        """The span of a tumbling window's final invocation (``close window <destination>``)."""
        attributes: dict[str, Any] = {
            "messaging.system": info.messaging_system,
            "messaging.operation.name": "process",
            "messaging.destination.name": info.source_name,
            "messaging.destination.partition.id": partition,
            "poller.mapping": info.mapping,
            "poller.function": info.function,
            "poller.window.start": window["start"],
            "poller.window.end": window["end"],
        }
        with self._span(f"close window {info.source_name}", SpanKind.CONSUMER, attributes):
            yield

    @contextmanager
    def attempt(self, info: MappingInfo, batch: Batch) -> Iterator[AttemptResult]:
        """The span of one invocation (``invoke <function>``), and its duration and size metrics."""
        result = AttemptResult()
        attributes: dict[str, Any] = {
            "poller.attempt": batch.invocations,
            "poller.retries": batch.retries,
            "messaging.batch.message_count": len(batch.records),
            "faas.invoked_name": info.function,
        }
        started = time.perf_counter()
        with self._span(f"invoke {info.function}", SpanKind.INTERNAL, attributes) as span:
            yield result
            outcome = result.outcome
            label = "success"
            if isinstance(outcome, Failed | PartiallyFailed):
                label = "partial" if isinstance(outcome, PartiallyFailed) else "error"
                error = outcome.error
                record_error(span, error.error_type, error.message, "\n".join(error.stack_trace))
            span.set_attribute("poller.outcome", label)
            if result.coldstart is not None:
                span.set_attribute("faas.coldstart", result.coldstart)
            if result.invocation_id is not None:
                span.set_attribute("faas.invocation_id", result.invocation_id)
        self.invocation_duration.labels(info.mapping, label).observe(time.perf_counter() - started)
        self.batch_size.labels(info.mapping).observe(len(batch.records))

    @contextmanager
    def delivery(self, info: MappingInfo, destination: str, batch: Batch, condition: str) -> Iterator[None]:
        """The span of an on-failure delivery (``send <destination>``, PRODUCER). Destinations put
        :func:`trace_headers` into what they write, so the failure continues this trace."""
        attributes: dict[str, Any] = {
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": destination,
            "messaging.batch.message_count": len(batch.records),
            "poller.mapping": info.mapping,
            "poller.condition": condition,
        }
        with self._span(f"send {destination}", SpanKind.PRODUCER, attributes):
            yield

    @contextmanager
    def _span(
        self, name: str, kind: SpanKind, attributes: dict[str, Any], links: Sequence[Link] | None = None
    ) -> Iterator[trace.Span]:
        """The current span ``name``; an exception that leaves it is recorded by :func:`record_error`
        (the SDK's own recording would quote its message as it is, secrets included)."""
        with self.tracer.start_as_current_span(
            name,
            kind=kind,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:
                stack = "".join(traceback.format_exception(exc))
                record_error(span, type(exc).__name__, str(exc), stack)
                raise


def record_error(span: trace.Span, error_type: str, message: str, stack: str) -> None:
    """Mark ``span`` failed, with an ``exception`` event as OpenTelemetry's conventions name it;
    the message and the stack are redacted (:mod:`poller.redaction`): a handler's or a client's
    error text may quote a URL or a password."""
    message = redact(message)
    span.set_status(Status(StatusCode.ERROR, message))
    span.set_attribute("error.type", error_type)
    span.add_event(
        "exception",
        {"exception.type": error_type, "exception.message": message, "exception.stacktrace": redact(stack)},
    )


@dataclass
class BatchSpan:
    """What the batch processor may add to a batch's span while it runs."""

    span: trace.Span

    def filtered(self, count: int) -> None:
        """``count`` records of the batch matched no filter and were committed uninvoked."""
        self.span.set_attribute("poller.batch.filtered", count)


@dataclass
class AttemptResult:
    outcome: Outcome | None = None
    coldstart: bool | None = None  # faas.coldstart, as the function runtime reports it
    invocation_id: str | None = None  # faas.invocation_id: the invocation's request id


def trace_headers() -> dict[str, str]:
    """The current trace context as W3C headers (``traceparent``), for a destination to write."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def xray_trace_header() -> str | None:
    """The current span as an X-Ray trace header (``Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;
    Sampled=<0|1>``), which Lambda hands a function in ``Lambda-Runtime-Trace-Id`` and its
    runtimes put in ``_X_AMZN_TRACE_ID``; None outside a valid span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    trace_id = trace.format_trace_id(context.trace_id)
    return (
        f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={trace.format_span_id(context.span_id)};"
        f"Sampled={1 if context.trace_flags.sampled else 0}"
    )


def producer_contexts(records: Sequence[Record], source_format: EventFormat) -> list[SpanContext]:
    """The producers' span contexts that records carry (as their event format finds them)."""
    contexts = []
    trace_parent = source_format.trace_parent
    for record in records:
        value = trace_parent(record)
        if value is not None:
            context = _from_traceparent(value)
            if context is not None:
                contexts.append(context)
    return contexts


def _from_traceparent(value: str) -> SpanContext | None:
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 1))
    return context if context.is_valid else None


def configure_tracing() -> None:
    """Install the global tracer provider that :func:`tracer_provider_from_env` describes."""
    provider = tracer_provider_from_env()
    if provider is not None:
        trace.set_tracer_provider(provider)


def tracer_provider_from_env() -> trace.TracerProvider | None:
    """The tracer provider that the standard OTEL_* environment variables ask for (the SDK reads
    some of them itself); None when ``OTEL_SDK_DISABLED=true`` turns tracing off.

    Spans are always made (their trace ids go into logs and failure records); they are exported over
    OTLP/HTTP only when an endpoint or exporter is configured, so an unconfigured service does not
    log export failures every few seconds. Without an exporter they are not recorded either (unless
    ``OTEL_TRACES_SAMPLER`` asks for it): recording two spans per batch for nobody cost about a
    tenth of the engine's instructions at 100 records a batch (``python -m bench.engine``).
    """
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "poller")})
    exporter_wanted = any(
        env.get(name)
        for name in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_TRACES_EXPORTER",
        )
    )
    exporting = exporter_wanted and env.get("OTEL_TRACES_EXPORTER", "otlp") != "none"
    # None: the SDK's own sampler, which it reads from OTEL_TRACES_SAMPLER (default: parent-based
    # always-on).
    sampler = None if exporting or env.get("OTEL_TRACES_SAMPLER") else ALWAYS_OFF
    provider = TracerProvider(resource=resource, sampler=sampler)
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def shutdown_tracing() -> None:
    """Flush spans still buffered (called once the service has drained)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


def flush_tracing(timeout: float) -> None:
    """Export the spans still buffered, waiting at most ``timeout`` seconds (before a forced exit)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if callable(force_flush):
        force_flush(int(timeout * 1000))
