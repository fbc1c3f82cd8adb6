"""What an asynchronous event's destinations receive (SPEC section 13). Pure.

``on_success`` and ``on_failure`` destinations get AWS's **invocation record**
(https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html): the request
and the response payloads, and why it was sent (``Success``, ``RetriesExhausted``,
``EventAgeExceeded``). The ``dead_letter_config`` destination gets the raw event, with AWS's
dead-letter attributes: ``RequestID``, ``ErrorCode`` (the 3-digit HTTP status of the last attempt:
200 for a function error, 429 for a throttle) and ``ErrorMessage`` (its first 1 KB).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from poller.engine.outcome import decode_response

MAX_ERROR_MESSAGE = 1024  # bytes of ErrorMessage, as Lambda truncates it
THROTTLED_STATUS = 429
PAYLOADS_OMITTED = (
    "requestPayload and responsePayload are left out: the record is larger than the destination accepts"
)


def iso_timestamp(epoch: float) -> str:
    """``2026-11-22T10:00:00.000Z``, as Lambda writes its timestamps."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def invocation_record(
    *,
    request_id: str,
    function_arn: str,
    condition: str,
    invoke_count: int,
    request_payload: bytes,
    response_payload: bytes | None,
    function_error: str | None,
    now: float,
) -> dict[str, Any]:
    """The invocation record of one event. ``response_payload`` is what its last attempt returned
    (the error document after a function error); an event that was never invoked (throttled until
    it expired) has no response context and no response payload."""
    response_context: dict[str, Any] | None = None
    if invoke_count:
        response_context = {"statusCode": 200, "executedVersion": "$LATEST"}
        if function_error is not None:
            response_context["functionError"] = function_error
    return {
        "version": "1.0",
        "timestamp": iso_timestamp(now),
        "requestContext": {
            "requestId": request_id,
            "functionArn": f"{function_arn}:$LATEST",
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": decode_response(request_payload),
        "responseContext": response_context,
        "responsePayload": decode_response(response_payload) if invoke_count else None,
    }


def without_payloads(record: dict[str, Any]) -> dict[str, Any]:
    """The record for a destination that cannot take it whole: the payloads left out, and why."""
    return {**record, "requestPayload": None, "responsePayload": None, "payloadsOmitted": PAYLOADS_OMITTED}


def dead_letter_attributes(request_id: str, *, throttled: bool, error_message: str) -> dict[str, str | int]:
    """The attributes of a dead-lettered event; ``throttled``: its last attempt was a throttle."""
    message = error_message.encode()[:MAX_ERROR_MESSAGE].decode("utf-8", "ignore")
    return {
        "RequestID": request_id,
        "ErrorCode": THROTTLED_STATUS if throttled else 200,
        "ErrorMessage": message or "(no message)",
    }
