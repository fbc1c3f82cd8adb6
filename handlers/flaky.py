"""Fail each batch the first time it is seen, then succeed: shows retries with backoff.

Set FLAKY_FAILURES to fail more times than once. What was seen is kept in the module, so, as on
Lambda, per execution environment: a retry that another environment takes fails there once more.
"""

import base64
import hashlib
import os
import threading

_seen = {}
_lock = threading.Lock()


def handler(event, context):
    values = [
        base64.b64decode(record.get("value") or "")
        for records in event.get("records", {}).values()
        for record in records
    ] + [record["body"].encode() for record in event.get("Records", []) if "body" in record]  # SQS
    key = hashlib.sha256(b"\0".join(values)).hexdigest()
    with _lock:
        _seen[key] = _seen.get(key, 0) + 1
        attempt = _seen[key]
    if attempt <= int(os.environ.get("FLAKY_FAILURES", "1")):
        raise ConnectionError(f"downstream unavailable (attempt {attempt})")
    return None
