"""A tumbling-window aggregate: counts clicks per page over each window of a Kinesis or Kafka
mapping with ``tumbling_window_in_seconds``, and reports the totals when the window closes.

Each invocation gets the state the previous one of its window returned (``{}`` when the window
opens) and returns the new state; the last invocation of a window has ``isFinalInvokeForWindow``
and no records, and is where a real function would write the totals somewhere."""

import base64
import json
import logging

log = logging.getLogger(__name__)


def handler(event, context):
    state = dict(event["state"])
    if "Records" in event:  # Kinesis
        values = [record["kinesis"]["data"] for record in event["Records"]]
    else:  # Kafka: {"topic-partition": [...]}
        values = [record["value"] for records in event["records"].values() for record in records]
    for value in values:
        page = json.loads(base64.b64decode(value)).get("page", "unknown")
        state[page] = state.get(page, 0) + 1
    if event["isFinalInvokeForWindow"]:
        where = event.get("shardId") or event.get("partition")
        log.info("window %s..%s of %s: %s", event["window"]["start"], event["window"]["end"], where, state)
    return {"state": state}
