"""Asynchronous invocation settings (SPEC section 13): where accepted events wait, and what a
function does with them.

``event_invoke_config`` follows Terraform's ``aws_lambda_function_event_invoke_config`` (and AWS's
``PutFunctionEventInvokeConfig``), except that destinations name entries under ``destinations:``
where AWS takes ARNs; ``retry_delay_in_seconds`` is poller's own (AWS waits about a minute, then two).
``dead_letter_config`` is the function's legacy dead-letter queue (Terraform's ``dead_letter_config``,
``target_arn`` here a destination name): it gets the raw event of an invocation that failed.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal, Protocol

from pydantic import Field

from poller.config.base import Model

DEFAULT_ASYNC_QUEUE_PATH = ".poller/async.db"


class SqliteAsyncQueue(Model):
    """Accepted events in a SQLite file (WAL, each commit fsynced): every poller process and
    ``poller invoke --async`` on the same file may add events; one process at a time works them."""

    type: Literal["sqlite"]
    path: str = Field(
        DEFAULT_ASYNC_QUEUE_PATH,
        description="SQLite file of the events accepted for asynchronous invocation (relative to the "
        "working directory).",
    )


# The store types ``async_queue`` may name: a union (discriminated by ``type``) once there are two.
AsyncQueue = SqliteAsyncQueue


def default_async_queue() -> AsyncQueue:
    return SqliteAsyncQueue(type="sqlite")


class DestinationTarget(Model):
    destination: str = Field(description="Name of an entry under destinations.")


class EventDestinationConfig(Model):
    on_success: DestinationTarget | None = Field(
        None, description="Gets the invocation record of every event the function handled."
    )
    on_failure: DestinationTarget | None = Field(
        None,
        description="Gets the invocation record of every event given up (RetriesExhausted, EventAgeExceeded).",
    )


class EventInvokeConfig(Model):
    maximum_retry_attempts: int = Field(
        2, ge=0, le=2, description="Retries after a function error (AWS: 0..2, default 2)."
    )
    maximum_event_age_in_seconds: int = Field(
        21600,
        ge=60,
        le=21600,
        description="An event older than this is given up (EventAgeExceeded) instead of being attempted.",
    )
    retry_delay_in_seconds: float = Field(
        60.0,
        ge=0,
        le=21600,
        description="poller's own: the wait before the first retry after a function error, doubling "
        "before each further retry (AWS waits about 1 minute, then 2).",
    )
    destination_config: EventDestinationConfig = Field(default_factory=EventDestinationConfig)


class DeadLetterConfig(Model):
    destination: str = Field(
        description="Name of an entry under destinations: it gets the raw event of every event given up, "
        "with RequestID, ErrorCode and ErrorMessage as attributes."
    )


class InvocationSettings(Protocol):
    """What :func:`invocation_reference_errors` reads of a function."""

    @property
    def event_invoke_config(self) -> EventInvokeConfig: ...

    @property
    def dead_letter_config(self) -> DeadLetterConfig | None: ...


def invocation_reference_errors(
    functions: Mapping[str, InvocationSettings], destinations: Collection[str]
) -> list[tuple[tuple[str | int, ...], str]]:
    """Destinations of asynchronous invocations that name no entry under ``destinations:``."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    for name, function in functions.items():
        targets = function.event_invoke_config.destination_config
        named: list[tuple[tuple[str | int, ...], str]] = []
        for kind, target in (("on_success", targets.on_success), ("on_failure", targets.on_failure)):
            if target is not None:
                named.append(
                    (("event_invoke_config", "destination_config", kind, "destination"), target.destination)
                )
        if function.dead_letter_config is not None:
            named.append((("dead_letter_config", "destination"), function.dead_letter_config.destination))
        for path, destination in named:
            if destination not in destinations:
                errors.append((("functions", name, *path), f"unknown destination {destination!r}"))
    return errors
