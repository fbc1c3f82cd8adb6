"""Count page views from a Kinesis stream of click events (JSON such as {"page": "/", "userId": 7}).

A record that is not such an event is reported as failed (``ReportBatchItemFailures``): the poller
checkpoints just before it and retries from there, so the handler stops at the first bad record
rather than count the ones after it twice. Once retries are exhausted the record goes to the
on-failure destination and the shard moves on past it.
"""

import base64
import json
import logging
from collections import Counter

log = logging.getLogger(__name__)


def handler(event, context):
    views = Counter()
    for record in event["Records"]:
        try:
            views[json.loads(base64.b64decode(record["kinesis"]["data"]))["page"]] += 1
        except (ValueError, KeyError, TypeError):
            log.warning("not a click event: %s", record["eventID"])
            return {"batchItemFailures": [{"itemIdentifier": record["kinesis"]["sequenceNumber"]}]}
    log.info("request %s: page views %s", context.aws_request_id, dict(views))
    return {"batchItemFailures": []}
