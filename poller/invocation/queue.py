"""The seam between the Invoke API and asynchronous invocation (SPEC section 13): what the API hands
an accepted ``Event`` invocation to."""

from __future__ import annotations

from typing import Protocol

from poller.runtime.function import FunctionRuntime


class EventQueue(Protocol):
    """Where accepted asynchronous invocations wait until they are processed."""

    async def accept(
        self, function: FunctionRuntime, payload: bytes, *, request_id: str, trace_parent: str | None
    ) -> None:
        """Store one event for ``function``: ``payload`` is its JSON (checked, at most 1 MB),
        ``request_id`` the invocation's id (the API's answer carries it, and the function gets it
        as ``aws_request_id``), ``trace_parent`` the W3C traceparent of the API's span, for the
        invocation to continue that trace. Return only once the event is durably stored (the API
        then answers 202); raise :class:`~poller.errors.PollerError` if it cannot be (the API
        answers that the service is unavailable)."""
