"""Fail the whole batch when any record's value (an SQS message's body) contains the word "poison".

With ``bisect_batch_on_function_error: true`` the poller splits such a batch until the poison
record is alone, and sends only that record to the on-failure destination.
"""

import base64


class PoisonRecordError(ValueError):
    pass


def _values(event):
    """(where, value) of each record: the value as bytes, and where it came from."""
    for records in event.get("records", {}).values():  # Kafka
        for record in records:
            where = f"{record['topic']}-{record['partition']}@{record['offset']}"
            yield where, base64.b64decode(record.get("value") or "")
    for record in event.get("Records", []):
        if "body" in record:  # SQS
            yield f"SQS message {record['messageId']}", record["body"].encode()


def handler(event, context):
    for where, value in _values(event):
        if b"poison" in value:
            raise PoisonRecordError(f"poison record at {where}")
    return None
