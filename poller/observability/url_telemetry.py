"""The span and metrics of each request to a function URL (SPEC section 8).

A request is a SERVER span named after its method, with the HTTP semantic-convention attributes
(``http.request.method``, ``url.path``, ``http.response.status_code``, ...) and the ``faas.*`` ones
the invocation span of a mapping carries; it continues the caller's trace when the request has a
W3C ``traceparent``. Counted by function and status class (``2xx``, ``4xx``, ``5xx``), timed by
function.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram

from poller.observability.tracing import Telemetry


@dataclass
class UrlInvocation:
    """What the function runtime reports of the invocation a request made (InvocationReport)."""

    coldstart: bool | None = None
    invocation_id: str | None = None


class UrlRequestSpan:
    """What the listener tells the span of one request as it goes."""

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.status = 0  # the response's, once there is one
        self.invocation = UrlInvocation()
        self.error_recorded = False

    def failed(self, error_type: str, message: str) -> None:
        """The invocation failed (or its response was not one): ``error.type`` and an exception
        event, as an invocation span records a function error."""
        self.error_recorded = True
        self.span.set_status(Status(StatusCode.ERROR, message))
        self.span.set_attribute("error.type", error_type)
        self.span.add_event("exception", {"exception.type": error_type, "exception.message": message})


class UrlTelemetry:
    """Spans and metrics of the function URLs of one App (made once: the metrics are registered
    in the App's registry)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.tracer = telemetry.tracer
        self.requests = Counter(
            "poller_function_url_requests",
            "Requests to function URLs, by function and status class (2xx, 4xx, 5xx).",
            ["function", "status"],
            registry=telemetry.registry,
        )
        self.duration = Histogram(
            "poller_function_url_request_duration_seconds",
            "Requests to function URLs, from arrival to the response.",
            ["function"],
            registry=telemetry.registry,
            buckets=(
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
                30,
                60,
                300,
                900,
            ),
        )

    @contextmanager
    def request(
        self,
        function: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        server: tuple[str, int],
        client: str,
    ) -> Iterator[UrlRequestSpan]:
        """The span of one request, current while the block runs; the block sets ``status``."""
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": path,
            "url.scheme": "http",
            "server.address": server[0],
            "server.port": server[1],
            "client.address": client,
            "faas.trigger": "http",
            "faas.invoked_name": function,
        }
        agent = headers.get("User-Agent")
        if agent:
            attributes["user_agent.original"] = agent
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            method,
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
        ) as span:
            request = UrlRequestSpan(span)
            try:
                yield request
            except BaseException:
                request.status = request.status or 500  # no response was made (e.g. cancelled)
                raise
            finally:
                self._finish(function, span, request, started)

    def _finish(self, function: str, span: trace.Span, request: UrlRequestSpan, started: float) -> None:
        span.set_attribute("http.response.status_code", request.status)
        if request.status >= 500 and not request.error_recorded:
            span.set_status(Status(StatusCode.ERROR))
        invocation = request.invocation
        if invocation.coldstart is not None:
            span.set_attribute("faas.coldstart", invocation.coldstart)
        if invocation.invocation_id is not None:
            span.set_attribute("faas.invocation_id", invocation.invocation_id)
        self.requests.labels(function, f"{request.status // 100}xx").inc()
        self.duration.labels(function).observe(time.perf_counter() - started)
