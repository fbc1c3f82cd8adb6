"""poller: AWS Lambda-style event source mappings for Kafka, RabbitMQ, SQS and Kinesis."""

__version__ = "0.1.0"
