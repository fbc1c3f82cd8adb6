"""Handlers for the Invoke API tests. They run in execution environments (other processes) or
inline; they tell the tests what they saw in their response, which the API hands back, and wait
for the tests through files where a test needs an invocation held in flight."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def echo(event: Any, context: Any) -> dict[str, Any]:
    """The event and what the context and environment said about the invocation."""
    print(f"echo handling {context.aws_request_id}")
    client_context = context.client_context
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "function_arn": context.invoked_function_arn,
        "custom": client_context.custom if client_context is not None else None,
        "env": client_context.env if client_context is not None else None,
        "app_title": client_context.client.app_title
        if client_context is not None and client_context.client is not None
        else None,
        "trace_header": os.environ.get("_X_AMZN_TRACE_ID"),
    }


def fail(event: Any, context: Any) -> None:
    raise ValueError(f"cannot handle {event.get('order', 'this')}")


def held(event: Any, context: Any) -> str:
    """Write ``started`` into the file ``event["started"]``, then return once ``event["release"]``
    exists (the test holds the invocation in flight until then)."""
    Path(event["started"]).write_text(context.aws_request_id)
    deadline = time.monotonic() + 20
    while not Path(event["release"]).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return "released"


def exits(event: Any, context: Any) -> None:
    os._exit(4)
