"""Fail the whole batch when any record's value contains the word "poison".

With ``bisect_batch_on_function_error: true`` the poller splits such a batch until the poison
record is alone, and sends only that record to the on-failure destination.
"""

import base64


class PoisonRecordError(ValueError):
    pass


def _values(event):
    for records in event.get("records", {}).values():  # Kafka
        for record in records:
            yield record, base64.b64decode(record.get("value") or "")


def handler(event, context):
    for record, value in _values(event):
        if b"poison" in value:
            raise PoisonRecordError(
                f"poison record at {record['topic']}-{record['partition']}@{record['offset']}"
            )
    return None
