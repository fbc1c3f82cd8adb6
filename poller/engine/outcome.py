"""What an invocation came to, as values: Succeeded, PartiallyFailed or Failed (SPEC section 5).

A handler fails when it raises, times out, or returns an invalid partial-batch response. With
``ReportBatchItemFailures`` it may name the records that failed; an identifier that is empty, under
the wrong key, or not in the batch fails the whole batch, as on AWS
(https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html).
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from poller.engine.windows import state_of

MAX_STACK_FRAMES = 20
_RUNTIME_DIR = str(Path(__file__).parent)


def _is_runtime(filename: str) -> bool:
    return filename.startswith(_RUNTIME_DIR) or "/asyncio/" in filename


@dataclass(frozen=True)
class InvocationError:
    """Why an invocation failed, in Lambda's error shape. ``document``: the error document exactly
    as the function's runtime posted it, when it posted one (the Invoke API answers with it)."""

    error_type: str
    message: str
    stack_trace: list[str] = field(default_factory=list)
    document: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_exception(cls, exc: BaseException) -> InvocationError:
        # As Lambda's Python runtime: the handler's frames, not the runtime's own.
        frames = [
            frame for frame in traceback.extract_tb(exc.__traceback__) if not _is_runtime(frame.filename)
        ]
        stack = [entry.rstrip("\n") for entry in traceback.format_list(frames[-MAX_STACK_FRAMES:])]
        return cls(type(exc).__name__, str(exc), stack)

    @classmethod
    def from_document(cls, body: bytes | None, header_type: str | None = None) -> InvocationError:
        """An error document as a runtime posts it (``errorMessage``, ``errorType``,
        ``stackTrace``; Node's client sends ``trace``); ``header_type`` names the type when the
        body does not (the Runtime API's ``Lambda-Runtime-Function-Error-Type``)."""
        document: Any = None
        if body:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError:
                document = None
        if not isinstance(document, dict):
            text = body.decode("utf-8", "replace") if body else ""
            return cls(header_type or "Runtime.Unknown", text)
        stack = document.get("stackTrace", document.get("trace"))
        if isinstance(stack, str):
            stack = stack.splitlines()
        if not isinstance(stack, list):
            stack = []
        return cls(
            str(document.get("errorType") or header_type or "Runtime.Unknown"),
            str(document.get("errorMessage", "")),
            [str(line) for line in stack],
            document=body,
        )

    def to_json(self) -> dict[str, Any]:
        return {"errorType": self.error_type, "errorMessage": self.message, "stackTrace": self.stack_trace}


@dataclass(frozen=True)
class Succeeded:
    """Every record succeeded. ``state``: what a tumbling-window invocation returned."""

    state: dict[str, Any] | None = None


@dataclass(frozen=True)
class PartiallyFailed:
    """The handler reported these item keys (as normalised by the source) as failed."""

    failed: frozenset[Hashable]
    error: InvocationError
    state: dict[str, Any] | None = None


@dataclass(frozen=True)
class Failed:
    error: InvocationError


Outcome = Succeeded | PartiallyFailed | Failed


def outcome_of(
    result: Any,
    *,
    report_batch_item_failures: bool,
    batch_keys: Sequence[Hashable],
    item_key: Callable[[object], Hashable | None],
    window: bool = False,
) -> Outcome:
    """Turn a handler's result (or InvocationError) into an Outcome.

    ``item_key`` normalises one ``itemIdentifier`` to the key the source gave its records, or
    returns None when the identifier has the wrong shape. With ``window`` (a tumbling-window
    invocation) the response must be an object with a ``state`` object, which the outcome carries.
    """
    if isinstance(result, InvocationError):
        return Failed(result)
    state = None
    if window:
        state = state_of(result)
        if state is None:
            return Failed(
                InvocationError(
                    "InvalidTumblingWindowResponse",
                    "a tumbling-window invocation must return an object with a state object",
                )
            )
    if not report_batch_item_failures or result is None:
        return Succeeded(state)
    if not isinstance(result, dict):
        return Succeeded() if result in ("", []) else _invalid(f"response is a {type(result).__name__}")
    failures = result.get("batchItemFailures")
    if not failures:  # absent, null or empty: everything succeeded
        return Succeeded(state)
    if not isinstance(failures, list):
        return _invalid("batchItemFailures is not a list")
    known = set(batch_keys)
    failed: set[Hashable] = set()
    for entry in failures:
        if not isinstance(entry, dict) or "itemIdentifier" not in entry:
            return _invalid("a batchItemFailures entry has no itemIdentifier")
        identifier = entry["itemIdentifier"]
        if identifier in (None, ""):
            return _invalid("an itemIdentifier is empty")
        key = item_key(identifier)
        if key is None or key not in known:
            return _invalid(f"itemIdentifier {identifier!r} is not in the batch")
        failed.add(key)
    error = InvocationError("BatchItemFailures", f"{len(failed)} of {len(known)} records reported as failed")
    return PartiallyFailed(frozenset(failed), error, state)


def _invalid(reason: str) -> Failed:
    return Failed(InvocationError("InvalidPartialBatchResponse", f"invalid partial batch response: {reason}"))


def decode_response(payload: bytes | None) -> Any:
    """A function's response as a value: JSON (also as Python's runtime writes it: ``NaN`` and
    ``Infinity``, which orjson refuses, through the json module), else the text itself. An
    integer past 64 bits comes out as orjson parses it, a float."""
    if not payload:
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        try:
            return json.loads(payload)
        except ValueError:
            return payload.decode("utf-8", "replace")
