"""The on-failure record (SPEC section 7): one JSON document per failed batch or bisected sub-batch.

It follows AWS's ESM invocation record (requestContext, responseContext, version, timestamp) and,
unlike AWS's SQS and SNS destinations, always carries the failed records themselves.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from poller.engine.outcome import InvocationError
from poller.engine.records import Record


def failure_record(
    *,
    mapping: str,
    function_arn: str,
    condition: str,
    error: InvocationError,
    invocations: int,
    source: dict[str, Any],
    records: Sequence[Record],
    trace_id: str,
    now: float,
) -> dict[str, Any]:
    invoked = invocations > 0
    return {
        "version": "1.0",
        "timestamp": datetime.fromtimestamp(now, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": invocations,
        },
        # AWS sends no response context when the function was never invoked with these records.
        "responseContext": (
            {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
            if invoked
            else None
        ),
        "errorInfo": error.to_json(),
        "mapping": mapping,
        "source": source,
        "traceId": trace_id,
        "records": [record.payload for record in records],
    }
