"""Handlers for the execution-environment tests. They run in environments (other processes), so
they tell the tests what they saw by appending JSON lines to the file that the function's
environment names in RECORD_FILE: one line when their module is initialised, one per batch."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

VARIABLES = (
    "_X_AMZN_TRACE_ID",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "TABLE",
)


def _write(entry: dict[str, Any]) -> None:
    with open(os.environ["RECORD_FILE"], "a") as file:
        file.write(json.dumps(entry) + "\n")


_write({"init": os.getpid(), "type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE")})
if os.environ.get("FAIL_INIT"):
    raise RuntimeError("the module's code failed")


def _records(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [record for records in event["records"].values() for record in records]


def _seen(event: dict[str, Any], context: Any, started: float, **extra: Any) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "records": [[record["partition"], record["offset"]] for record in _records(event)],
        "started": started,
        "ended": time.monotonic(),
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "remaining": context.get_remaining_time_in_millis(),
        "env": {name: os.environ.get(name) for name in VARIABLES},
        **extra,
    }


def handle(event: dict[str, Any], context: Any) -> None:
    """Record the batch. A record whose value is ``exit`` ends the process; ``loop`` spins for
    ever; ``memory`` touches 400 MB. HANDLER_SLEEP makes every batch take that long."""
    started = time.monotonic()
    for record in _records(event):
        value = base64.b64decode(record["value"])
        if value == b"exit":
            os._exit(3)
        if value == b"loop":
            _write({"looping": os.getpid()})
            while True:
                pass
        if value == b"memory":
            hog = b"x" * (400 * 1024 * 1024)
            _write({"touched": len(hog)})
    time.sleep(float(os.environ.get("HANDLER_SLEEP", "0")))
    _write(_seen(event, context, started))


async def handle_async(event: dict[str, Any], context: Any) -> None:
    started = time.monotonic()
    await asyncio.sleep(0.01)
    _write(_seen(event, context, started, loop=id(asyncio.get_running_loop())))
