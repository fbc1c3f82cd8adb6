"""The synchronous invocation (``RequestResponse``), the one code path of the Invoke API and of
``poller invoke`` (SPEC sections 3 and 13).

One invocation, no retries, and no waiting for concurrency: when the function's
``reserved_concurrent_executions`` invocations are in flight (or it is 0) the invocation is refused
at once (:class:`~poller.errors.Throttled`), as Lambda refuses it. The result is what Lambda's
Invoke answers: the response exactly as the function's runtime serialised it, or, for a function
error, the error document, with ``FunctionError: Unhandled``; and the invocation's own log.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from poller.engine.outcome import InvocationError
from poller.observability.invocation_spans import InvocationSpan
from poller.runtime.environments.api import Response
from poller.runtime.environments.logs import InvocationLog
from poller.runtime.function import FunctionRuntime

UNHANDLED = "Unhandled"  # X-Amz-Function-Error of every function error
# Errors that Lambda itself reports about an environment (not the runtime's error document): it
# writes their message as "RequestId: <id> Error: <message>".
_PLATFORM_ERRORS = frozenset(
    {
        "Sandbox.Timedout",
        "Sandbox.Failure",
        "Runtime.ExitError",
        "Runtime.OutOfMemory",
        "Runtime.InvalidEntrypoint",
    }
)


@dataclass(frozen=True)
class SyncResult:
    """What a synchronous invocation came to."""

    request_id: str
    payload: bytes  # the response as the runtime serialised it, or the error document
    content_type: str
    error: InvocationError | None  # a function error (the invocation itself was made)
    log: InvocationLog
    cold_start: bool

    @property
    def function_error(self) -> str | None:
        """``X-Amz-Function-Error``: ``Unhandled`` for a function error, else None."""
        return UNHANDLED if self.error is not None else None

    def log_result(self) -> str:
        """``X-Amz-Log-Result``: the last 4 KB of the invocation's log, base64-encoded."""
        return base64.b64encode(self.log.tail().encode()).decode("ascii")


async def invoke_sync(
    function: FunctionRuntime,
    payload: bytes,
    *,
    client_context: dict[str, Any] | None = None,
    request_id: str | None = None,
    span: InvocationSpan | None = None,
) -> SyncResult:
    """Invoke ``function`` once with ``payload`` (JSON; an empty payload is ``{}``, as on Lambda).
    ``client_context``: the caller's, decoded, for ``context.client_context``. ``request_id``: the
    invocation's ``aws_request_id`` (default: a new one). ``span``: the API's span, which gets the
    invocation id, cold start and error. Raises Throttled when no concurrency is left; the function
    is otherwise never waited for."""
    context = function.new_context()
    context.client_context = client_context
    if request_id is not None:
        context.aws_request_id = request_id
    if span is not None:
        span.invocation_id = context.aws_request_id
    result = await function.invoke_payload(payload or b"{}", context, wait=False)
    if span is not None:
        span.coldstart = result.cold_start
    answer = result.answer
    if isinstance(answer, Response):
        return SyncResult(
            result.request_id, answer.payload, answer.content_type, None, result.log, result.cold_start
        )
    if span is not None:
        span.error = answer
    return SyncResult(
        result.request_id,
        error_document(answer, result.request_id),
        "application/json",
        answer,
        result.log,
        result.cold_start,
    )


def error_document(error: InvocationError, request_id: str) -> bytes:
    """The body of a function error: the runtime's own document when it posted one, else the
    document Lambda makes (as AWS's Python runtime shapes one for a handler's exception)."""
    if error.document is not None:
        return error.document
    if error.error_type in _PLATFORM_ERRORS:
        return orjson.dumps(
            {"errorType": error.error_type, "errorMessage": f"RequestId: {request_id} Error: {error.message}"}
        )
    return orjson.dumps(
        {
            "errorMessage": error.message,
            "errorType": error.error_type,
            "requestId": request_id,
            "stackTrace": error.stack_trace,
        }
    )
