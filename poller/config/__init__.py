"""The configuration: pydantic models that are the single source of truth for every YAML key
(:mod:`~poller.config.models`), loading a file with environment interpolation and line numbers in
errors (:mod:`~poller.config.loader`), and the JSON Schema exported from the models
(:mod:`~poller.config.schema`, ``python -m poller.config.schema``)."""

from poller.config.admin import Admin, AdminCredentials
from poller.config.functions import DEFAULT_RUNTIME, Function, Runtime
from poller.config.loader import default_config_path, load_config
from poller.config.models import (
    AwsConnection,
    Config,
    Connection,
    DestinationConfig,
    DynamoDBCheckpoints,
    FileDestination,
    KafkaConnection,
    KafkaDestination,
    KafkaSource,
    KinesisSource,
    Mapping,
    OnFailure,
    RabbitMQConnection,
    RabbitMQDestination,
    RabbitMQSource,
    S3Destination,
    ScalingConfig,
    SnsDestination,
    SqliteCheckpoints,
    SqsDestination,
    SqsSource,
)

__all__ = [
    "DEFAULT_RUNTIME",
    "Admin",
    "AdminCredentials",
    "AwsConnection",
    "Config",
    "Connection",
    "DestinationConfig",
    "DynamoDBCheckpoints",
    "FileDestination",
    "Function",
    "KafkaConnection",
    "KafkaDestination",
    "KafkaSource",
    "KinesisSource",
    "Mapping",
    "OnFailure",
    "RabbitMQConnection",
    "RabbitMQDestination",
    "RabbitMQSource",
    "Runtime",
    "S3Destination",
    "ScalingConfig",
    "SnsDestination",
    "SqliteCheckpoints",
    "SqsDestination",
    "SqsSource",
    "default_config_path",
    "load_config",
]
