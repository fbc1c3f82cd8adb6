"""Handlers of the asynchronous invocation tests. They run in environments (other processes), so
they tell the tests what they saw by appending JSON lines to the file that the function's
environment names in RECORD_FILE: ``{"started": request id, ...}`` as an attempt begins and
``{"finished": request id, ...}`` as it ends (``fail`` raises instead of finishing)."""

from __future__ import annotations

import json
import os
import time
from typing import Any


def _write(entry: dict[str, Any]) -> None:
    with open(os.environ["RECORD_FILE"], "a") as file:
        file.write(json.dumps(entry) + "\n")


def succeed(event: Any, context: Any) -> dict[str, Any]:
    """Answers with the event and who handled it; HANDLER_SLEEP makes every attempt that long."""
    _write({"started": context.aws_request_id, "version": os.environ.get("VERSION")})
    time.sleep(float(os.environ.get("HANDLER_SLEEP", "0")))
    _write({"finished": context.aws_request_id, "event": event})
    return {"received": event, "requestId": context.aws_request_id, "version": os.environ.get("VERSION")}


def fail(event: Any, context: Any) -> None:
    _write({"started": context.aws_request_id})
    raise RuntimeError(f"cannot handle {event['n']}")
