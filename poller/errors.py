"""One root error; retryability is data on the error, not a guess from its type.

Client-library exceptions (aiokafka, aio-pika, botocore) are mapped to these at the source and
destination boundaries, so nothing above them imports a client library. Their messages often quote
what the client said, URLs included: every PollerError redacts its message (:mod:`poller.redaction`),
so what reaches a log line, ``lastError`` or a span carries no secret.
"""

from __future__ import annotations

from typing import Any

from poller.redaction import redact_value


class PollerError(Exception):
    """Root of every error poller raises on purpose; its arguments are redacted when it is made."""

    retriable: bool = False

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact_value(arg) for arg in args))


class ConfigError(PollerError):
    """The configuration cannot be used; carries every problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems: list[str] = redact_value(list(problems))
        super().__init__("\n".join(self.problems))


class SourceError(PollerError):
    """A source could not poll or commit. ``retriable`` says whether waiting may help."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class DestinationError(PollerError):
    """An on-failure destination did not confirm a write; the caller retries, never skips."""

    retriable = True


class HandlerLoadError(PollerError):
    """A function's handler cannot be imported or is not callable."""


class Throttled(PollerError):
    """An invocation that may not wait found no concurrency left: ``reserved_concurrent_executions``
    invocations of its function are in flight (or it is 0). Lambda answers a synchronous Invoke so
    (429 ``TooManyRequestsException``); callers that may wait never see this."""
