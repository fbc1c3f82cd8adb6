"""Take payments from a RabbitMQ queue (JSON such as {"paymentId": 7, "amount": 42.5}).

A message that is not such a payment is reported as failed by its ``basicProperties.messageId``
(``ReportBatchItemFailures``; the poller fills in an id where the publisher set none): the poller
acks the others and retries only that one, through a delay queue, so it never holds the delivery.
Once retries are exhausted it goes to the on-failure destination with its properties and body.
"""

import base64
import json
import logging

log = logging.getLogger(__name__)


def handler(event, context):
    failures = []
    total = 0.0
    for queue, messages in event["rmqMessagesByQueue"].items():  # "payments::/"
        for message in messages:
            try:
                total += float(json.loads(base64.b64decode(message["data"]))["amount"])
            except (ValueError, KeyError, TypeError):
                message_id = message["basicProperties"]["messageId"]
                log.warning("not a payment: %s in %s", message_id, queue)
                failures.append({"itemIdentifier": message_id})
    log.info("request %s: %.2f taken", context.aws_request_id, total)
    return {"batchItemFailures": failures}
