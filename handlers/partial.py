"""Report the records that failed instead of failing the batch (ReportBatchItemFailures).

Records whose value (an SQS message's body) starts with "fail" are reported. From a Kafka topic,
the poller commits everything before the first of them and retries from there; from an SQS queue,
it deletes the other messages and retries only the reported ones.
"""

import base64


def handler(event, context):
    failures = []
    for partition, records in event.get("records", {}).items():  # Kafka
        for record in records:
            if base64.b64decode(record.get("value") or "").startswith(b"fail"):
                failures.append({"itemIdentifier": {"partition": partition, "offset": record["offset"]}})
    for record in event.get("Records", []):
        if record.get("body", "").startswith("fail"):  # SQS: the message id
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
