"""Log how many records arrived and succeed: the smallest useful handler."""

import logging

log = logging.getLogger(__name__)


def handler(event, context):
    count = sum(len(records) for records in event.get("records", {}).values()) or len(
        event.get("Records", [])
    )
    log.info("request %s: %d records", context.aws_request_id, count)
    return {"processed": count}
