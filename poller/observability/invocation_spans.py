"""The span of an invocation that arrives through poller's Lambda Invoke API (SPEC sections 8, 13).

One SERVER span per API call (``invoke <function>``), with the FaaS semantic-convention attributes
of the invoked side (``faas.trigger``, ``faas.invocation_id``, ``faas.coldstart``) and the function's
ARN as ``cloud.resource_id``. It continues the caller's trace when the request carries one: a W3C
``traceparent`` header, else an X-Ray ``X-Amzn-Trace-Id`` (what AWS SDKs send when they are
traced by X-Ray). The span is current while the function runs, so the function's trace header
(``_X_AMZN_TRACE_ID``) names it as the parent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from poller.engine.outcome import InvocationError
from poller.observability.tracing import trace_headers
from poller.sources.sqs.event import xray_to_traceparent

XRAY_HEADER = "X-Amzn-Trace-Id"


@dataclass
class InvocationSpan:
    """What the API notes on its span while the invocation runs."""

    span: trace.Span
    coldstart: bool | None = None  # faas.coldstart, as the function runtime reports it
    invocation_id: str | None = None  # faas.invocation_id: the invocation's request id
    error: InvocationError | None = None  # a function error (the API still answers 200)

    @property
    def trace_parent(self) -> str | None:
        """The span as a W3C traceparent (for an asynchronous invocation to continue the trace)."""
        return trace_headers().get("traceparent")


class InvocationSpans:
    """Makes the spans of API invocations with ``tracer`` (the App's)."""

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self.tracer = tracer or trace.get_tracer("poller")

    @contextmanager
    def invocation(
        self,
        function: str,
        arn: str,
        invocation_type: str,
        headers: Mapping[str, str],
        *,
        trigger: str = "other",
    ) -> Iterator[InvocationSpan]:
        """The span of one invocation of ``function``, a child of the trace ``headers`` carry."""
        attributes: dict[str, Any] = {
            "faas.trigger": trigger,
            "cloud.resource_id": arn,
            "poller.function": function,
            "poller.invocation_type": invocation_type,
        }
        with self.tracer.start_as_current_span(
            f"invoke {function}",
            context=caller_context(headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
        ) as span:
            noted = InvocationSpan(span)
            yield noted
            if noted.coldstart is not None:
                span.set_attribute("faas.coldstart", noted.coldstart)
            if noted.invocation_id is not None:
                span.set_attribute("faas.invocation_id", noted.invocation_id)
            if noted.error is not None:
                error = noted.error
                span.set_status(Status(StatusCode.ERROR, error.message))
                span.set_attribute("error.type", error.error_type)
                span.add_event(
                    "exception",
                    {
                        "exception.type": error.error_type,
                        "exception.message": error.message,
                        "exception.stacktrace": "\n".join(error.stack_trace),
                    },
                )


def caller_context(headers: Mapping[str, str]) -> Context | None:
    """The caller's trace context: from ``traceparent`` (and ``tracestate``), else from
    ``X-Amzn-Trace-Id``; None when the request carries neither (the span starts a trace)."""
    context = propagate.extract(headers)
    if trace.get_current_span(context).get_span_context().is_valid:
        return context
    xray = headers.get(XRAY_HEADER)
    traceparent = xray_to_traceparent(xray) if xray else None
    if traceparent is None:
        return None
    return propagate.extract({"traceparent": traceparent})
