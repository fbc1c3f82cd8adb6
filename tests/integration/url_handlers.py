"""Handlers behind the function URL tests. They run in environments (other processes), so they
tell the tests what they saw by appending one JSON line per invocation to the file named by
RECORD_FILE. What a handler does depends on the request's path."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any


def _write(entry: dict[str, Any]) -> None:
    with open(os.environ["RECORD_FILE"], "a") as file:
        file.write(json.dumps(entry) + "\n")


def handle(event: dict[str, Any], context: Any) -> Any:
    """``/plain``: a plain JSON result. ``/reverse``: the request's (base64) body reversed, as a
    base64 response. ``/raise``: an unhandled error. ``/hold``: waits until the file
    RELEASE_FILE names exists. Anything else: a response with a status, headers, cookies and a
    body that says what the handler saw."""
    path = event["rawPath"]
    _write({"path": path, "event": event, "request_id": context.aws_request_id, "pid": os.getpid()})
    if path == "/plain":
        return {"greeting": os.environ.get("GREETING", "hello"), "pid": os.getpid()}
    if path == "/reverse":
        data = base64.b64decode(event["body"]) if event["isBase64Encoded"] else event["body"].encode()
        return {
            "statusCode": 200,
            "headers": {"Content-Type": "application/octet-stream"},
            "body": base64.b64encode(data[::-1]).decode(),
            "isBase64Encoded": True,
        }
    if path == "/raise":
        raise RuntimeError("the handler failed on purpose")
    if path == "/hold":
        release = Path(os.environ["RELEASE_FILE"])
        deadline = time.monotonic() + 20
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return {"held": True}
    return {
        "statusCode": 201,
        "headers": {"Content-Type": "application/json", "X-Handler": "seen"},
        "cookies": ["session=abc; Path=/; HttpOnly", "theme=dark"],
        "body": json.dumps({"saw": event["requestContext"]["http"]["method"] + " " + path}),
    }
