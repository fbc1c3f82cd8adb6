"""The handler of the tumbling-window tests: counts a window's records in its state and writes a
line per invocation to the file in ``WINDOW_LOG`` (the function's environment), so that the test
reads what it saw wherever the handler runs."""

from __future__ import annotations

import base64
import json
import os
from typing import Any


def records_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    if "Records" in event:  # Kinesis
        return list(event["Records"])
    return [record for records in event["records"].values() for record in records]  # Kafka


def identity(record: dict[str, Any]) -> str:
    if "kinesis" in record:
        return str(record["kinesis"]["sequenceNumber"])
    return f"{record['partition']}:{record['offset']}"


def timestamp(record: dict[str, Any]) -> float:
    if "kinesis" in record:
        return float(record["kinesis"]["approximateArrivalTimestamp"])
    return float(record["timestamp"]) / 1000


def count(event: dict[str, Any], context: Any) -> dict[str, Any]:
    records = records_of(event)
    state = dict(event["state"])
    state["count"] = state.get("count", 0) + len(records)
    for record in records:
        data = record["kinesis"]["data"] if "kinesis" in record else record["value"]
        key = json.loads(base64.b64decode(data))["key"]
        state[key] = state.get(key, 0) + 1
    line = {
        "partition": event.get("partition") or event.get("shardId"),
        "window": event["window"],
        "final": event["isFinalInvokeForWindow"],
        "early": event["isWindowTerminatedEarly"],
        "state_in": event["state"],
        "state_out": state,
        "records": [[identity(record), timestamp(record)] for record in records],
        "arn": event["eventSourceARN"],
    }
    with open(os.environ["WINDOW_LOG"], "a") as log:
        log.write(json.dumps(line) + "\n")
    return {"state": state}
