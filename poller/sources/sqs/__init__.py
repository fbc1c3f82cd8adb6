"""The SQS source: long-polling receivers (:mod:`.source`), the messages in flight and the calls
that settle them (:mod:`.in_flight`), and Lambda's SQS event and queue lookup (:mod:`.event`)."""
