"""The configuration model: the single source of truth for every YAML key (SPEC section 4).

Mapping keys follow the argument names of Terraform's ``aws_lambda_event_source_mapping`` so that
settings carry over. Durations are in seconds, as AWS names them. Unknown keys are errors.
Loading a file (environment interpolation, duplicate keys, line numbers in errors) lives in
:mod:`poller.config.loader`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from poller.config.admin import Admin
from poller.config.base import Model as _Model

# The connections section lives in its own module; its models are part of this one's interface.
from poller.config.connections import AwsConnection as AwsConnection
from poller.config.connections import Connection as Connection
from poller.config.connections import KafkaConnection as KafkaConnection
from poller.config.connections import RabbitMQConnection as RabbitMQConnection
from poller.config.function_url import function_url_errors
from poller.config.functions import Function
from poller.config.invocation import AsyncQueue, default_async_queue, invocation_reference_errors
from poller.engine.filters import FILTER_FIELDS, MAX_FILTERS, FilterCriteria, FilterPatternError

NAME_PATTERN = r"^[A-Za-z0-9_.:-]+$"


ConnectionT = TypeVar("ConnectionT", KafkaConnection, RabbitMQConnection, AwsConnection)


# --- destinations --------------------------------------------------------------------------------


class KafkaDestination(_Model):
    type: Literal["kafka"]
    connection: str
    topic: str


class SqsDestination(_Model):
    type: Literal["sqs"]
    connection: str
    queue: str = Field(description="Queue name, URL or ARN.")
    overflow_bucket: str | None = Field(
        None,
        description="S3 bucket (same connection) for failure records larger than the queue accepts; the "
        "message then says where the record is. Without it, such a message leaves the records out.",
    )


class SnsDestination(_Model):
    type: Literal["sns"]
    connection: str
    topic_arn: str
    overflow_bucket: str | None = Field(
        None,
        description="S3 bucket (same connection) for failure records larger than SNS's 256 KB; the "
        "message then says where the record is. Without it, such a message leaves the records out.",
    )


class S3Destination(_Model):
    type: Literal["s3"]
    connection: str
    bucket: str
    prefix: str = ""


class RabbitMQDestination(_Model):
    type: Literal["rabbitmq"]
    connection: str
    exchange: str = Field(description='"" is the default exchange (routing_key is then a queue name).')
    routing_key: str = ""


class FileDestination(_Model):
    type: Literal["file"]
    path: str = Field(description="JSON lines, one failure record a line (for development).")


Destination = Annotated[
    KafkaDestination
    | SqsDestination
    | SnsDestination
    | S3Destination
    | RabbitMQDestination
    | FileDestination,
    Field(discriminator="type"),
]


# --- sources -------------------------------------------------------------------------------------


class KafkaSource(_Model):
    type: Literal["kafka"]
    connection: str
    topics: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    consumer_group_id: str | None = Field(None, description="Defaults to the mapping name.")
    # Group timeouts. Real Kafka's defaults suit production; a test broker may want them shorter.
    session_timeout_ms: int = Field(45000, ge=1000)
    heartbeat_interval_ms: int = Field(3000, ge=100)
    rebalance_timeout_ms: int | None = Field(None, ge=1000)
    max_poll_interval_ms: int = Field(300000, ge=1000)


class SqsSource(_Model):
    type: Literal["sqs"]
    connection: str
    queue: str = Field(description="Queue name, URL or ARN.")
    wait_time_seconds: int = Field(
        20,
        ge=1,
        le=20,
        description="Long-poll wait of each ReceiveMessage (Lambda's is 20). On shutdown a poll still "
        "waiting is given 2 s to return; a shorter wait lets more of them end in time.",
    )


class KinesisSource(_Model):
    type: Literal["kinesis"]
    connection: str
    stream: str = Field(description="Stream name or ARN.")
    poll_interval_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Pause between GetRecords calls on a shard that returned nothing new (Lambda and "
        "the KCL poll an idle shard once a second); a shard with a backlog is read without pausing.",
    )


class RabbitMQSource(_Model):
    type: Literal["rabbitmq"]
    connection: str
    queues: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)


Source = Annotated[KafkaSource | SqsSource | KinesisSource | RabbitMQSource, Field(discriminator="type")]

# The kind of connection each source and destination type uses.
CONNECTION_TYPE = {
    "kafka": "kafka",
    "rabbitmq": "rabbitmq",
    "sqs": "aws",
    "kinesis": "aws",
    "sns": "aws",
    "s3": "aws",
}

# Per-source defaults, as on AWS.
DEFAULT_BATCH_SIZE = {"kafka": 100, "kinesis": 100, "rabbitmq": 100, "sqs": 10}
DEFAULT_BATCHING_WINDOW = {"kafka": 0.5, "rabbitmq": 0.5, "kinesis": 0.0, "sqs": 0.0}


class OnFailure(_Model):
    destination: str = Field(description="Name of an entry under destinations.")


class DestinationConfig(_Model):
    on_failure: OnFailure | None = None


class ScalingConfig(_Model):
    maximum_concurrency: int = Field(10, ge=1, le=1000)


# Where shard checkpoints go when a Kinesis mapping sets no `checkpoints` (relative to the working directory).
DEFAULT_SQLITE_CHECKPOINTS_PATH = ".poller/checkpoints.db"


class SqliteCheckpoints(_Model):
    type: Literal["sqlite"]
    path: str = Field(
        DEFAULT_SQLITE_CHECKPOINTS_PATH,
        description="SQLite file holding one checkpoint per shard; one poller process uses it at a time.",
    )


class DynamoDBCheckpoints(_Model):
    type: Literal["dynamodb"]
    connection: str
    table: str = Field(description="Lease table shared by every replica; created if missing.")
    lease_duration_seconds: float = Field(
        10.0,
        ge=1,
        le=600,
        description="A lease not renewed for this long is taken over (the KCL's failover time). Owners "
        "renew every quarter of it and stop reading a shard whose lease they could not renew for half of it.",
    )
    max_leases_to_steal_at_one_time: int = Field(
        1, ge=1, le=100, description="Leases a replica below its fair share asks for per round."
    )


Checkpoints = Annotated[SqliteCheckpoints | DynamoDBCheckpoints, Field(discriminator="type")]


class FilterPattern(_Model):
    pattern: str | dict[str, Any] = Field(
        description="An EventBridge event pattern, as JSON text (Terraform's jsonencode) or a mapping."
    )


class FilterCriteriaSettings(_Model):
    """Terraform's ``filter_criteria { filter { pattern } }``: a record is invoked when it matches
    at least one pattern; the others are committed without an invocation (SPEC section 14)."""

    filter: list[FilterPattern] = Field(default_factory=list, max_length=MAX_FILTERS)

    def compile(self, source_type: str | None = None) -> FilterCriteria:
        """The compiled patterns; raises FilterPatternError naming the filter and the problem."""
        field = FILTER_FIELDS.get(source_type) if source_type else None
        return FilterCriteria.compile([entry.pattern for entry in self.filter], field=field)


class Mapping(_Model):
    function_name: str
    source: Source
    enabled: bool = True
    starting_position: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"] = Field(
        "TRIM_HORIZON", description="For a consumer group or shard with no checkpoint yet."
    )
    starting_position_timestamp: datetime | None = Field(None, description="RFC 3339, with AT_TIMESTAMP.")
    batch_size: int | None = Field(None, ge=1, le=10000, description="Default: SQS 10, the others 100.")
    maximum_batching_window_in_seconds: float | None = Field(
        None, ge=0, le=300, description="Default: 0 for SQS and Kinesis, 0.5 for Kafka and RabbitMQ."
    )
    bisect_batch_on_function_error: bool = False
    maximum_retry_attempts: int = Field(-1, ge=-1, le=10000, description="-1 = no limit.")
    maximum_record_age_in_seconds: int = Field(
        86400, description="-1 = no limit, else 60..604800; default 86400, the 24-hour retry."
    )
    function_response_types: list[Literal["ReportBatchItemFailures"]] = Field(
        default_factory=list, max_length=1
    )
    destination_config: DestinationConfig | None = None
    scaling_config: ScalingConfig | None = None
    parallelization_factor: int = Field(1, ge=1, le=10, description="Kinesis: concurrent batches per shard.")
    checkpoints: Checkpoints | None = Field(
        None,
        description="Kinesis: where shard checkpoints and window state are kept; Kafka with tumbling "
        "windows: where window state is kept (offsets stay in the consumer group); default "
        f"{{type: sqlite, path: {DEFAULT_SQLITE_CHECKPOINTS_PATH}}}.",
    )
    filter_criteria: FilterCriteriaSettings | None = Field(
        None, description="At most 5 patterns, ORed; records that match none are not invoked."
    )
    tumbling_window_in_seconds: int | None = Field(
        None,
        ge=1,
        le=900,
        description="Kinesis and Kafka: aggregate over windows of this many seconds (state passed from "
        "one invocation to the next, a final invocation per window).",
    )

    @field_validator("filter_criteria")
    @classmethod
    def _check_filters(
        cls, criteria: FilterCriteriaSettings | None, info: ValidationInfo
    ) -> FilterCriteriaSettings | None:
        # Compiled here so that a bad pattern is a config error with this key's path and line.
        if criteria is not None:
            source = info.data.get("source")
            try:
                criteria.compile(source.type if source is not None else None)
            except FilterPatternError as exc:
                raise ValueError(str(exc)) from None
        return criteria

    @field_validator("maximum_record_age_in_seconds")
    @classmethod
    def _check_record_age(cls, age: int) -> int:
        # A field validator, not a model one, so that the error carries this key's path and line.
        if age != -1 and not 60 <= age <= 604800:
            raise ValueError("must be -1 (no limit) or between 60 and 604800")
        return age

    @model_validator(mode="after")
    def _check(self) -> Mapping:
        if (self.starting_position == "AT_TIMESTAMP") != (self.starting_position_timestamp is not None):
            raise ValueError("starting_position_timestamp is required with AT_TIMESTAMP, and only with it")
        return self

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or DEFAULT_BATCH_SIZE[self.source.type]

    @property
    def effective_batching_window(self) -> float:
        if self.maximum_batching_window_in_seconds is not None:
            return self.maximum_batching_window_in_seconds
        return DEFAULT_BATCHING_WINDOW[self.source.type]

    @property
    def report_batch_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types

    @property
    def filters(self) -> FilterCriteria:
        """The compiled filter criteria; without ``filter_criteria`` they match every record."""
        if self.filter_criteria is None:
            return FilterCriteria(())
        return self.filter_criteria.compile(self.source.type)

    @property
    def on_failure_destination(self) -> str | None:
        on_failure = self.destination_config and self.destination_config.on_failure
        return on_failure.destination if on_failure else None


class Config(_Model):
    connections: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Connection] = Field(default_factory=dict)
    functions: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Function] = Field(default_factory=dict)
    destinations: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Destination] = Field(default_factory=dict)
    mappings: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Mapping] = Field(default_factory=dict)
    admin: Admin = Admin()
    async_queue: AsyncQueue = Field(default_factory=default_async_queue)

    def connection(self, name: str, kind: type[ConnectionT]) -> ConnectionT:
        """The connection ``name``, which :meth:`reference_errors` checked is of this ``kind``."""
        connection = self.connections[name]
        assert isinstance(connection, kind), f"connection {name} is not a {kind.__name__}"
        return connection

    def reference_errors(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Names that point nowhere or at the wrong kind of thing, as (key path, message) pairs."""
        errors: list[tuple[tuple[str | int, ...], str]] = []

        def check_connection(path: tuple[str | int, ...], name: str, kind: str) -> None:
            connection = self.connections.get(name)
            if connection is None:
                errors.append((path, f"unknown connection {name!r}"))
            elif connection.type != kind:
                errors.append((path, f"connection {name!r} is of type {connection.type}, not {kind}"))

        for name, destination in self.destinations.items():
            if not isinstance(destination, FileDestination):
                kind = CONNECTION_TYPE[destination.type]
                check_connection(("destinations", name, "connection"), destination.connection, kind)
        for name, mapping in self.mappings.items():
            if mapping.function_name not in self.functions:
                errors.append(
                    (("mappings", name, "function_name"), f"unknown function {mapping.function_name!r}")
                )
            check_connection(
                ("mappings", name, "source", "connection"),
                mapping.source.connection,
                CONNECTION_TYPE[mapping.source.type],
            )
            target = mapping.on_failure_destination
            if target is not None and target not in self.destinations:
                errors.append(
                    (
                        ("mappings", name, "destination_config", "on_failure", "destination"),
                        f"unknown destination {target!r}",
                    )
                )
            if mapping.source.type != "kinesis":
                if mapping.parallelization_factor != 1:
                    errors.append(
                        (("mappings", name, "parallelization_factor"), "applies to kinesis sources only")
                    )
                windowed_kafka = mapping.source.type == "kafka" and mapping.tumbling_window_in_seconds
                if mapping.checkpoints is not None and not windowed_kafka:
                    errors.append(
                        (
                            ("mappings", name, "checkpoints"),
                            "applies to kinesis sources, and to kafka sources with tumbling windows",
                        )
                    )
            if mapping.tumbling_window_in_seconds is not None:
                errors += _window_errors(name, mapping)
            if isinstance(mapping.checkpoints, DynamoDBCheckpoints):
                check_connection(
                    ("mappings", name, "checkpoints", "connection"), mapping.checkpoints.connection, "aws"
                )
            if mapping.scaling_config is not None and mapping.source.type not in ("sqs", "rabbitmq"):
                errors.append(
                    (
                        ("mappings", name, "scaling_config"),
                        "scaling_config applies to sqs and rabbitmq sources only",
                    )
                )
        errors += function_url_errors(
            {n: f.function_url for n, f in self.functions.items()},
            self.admin.port,
            has_credentials=self.admin.credentials is not None,
        )
        seen_env: dict[str, tuple[str, str]] = {}
        for fname, function in self.functions.items():
            if not function.inline:
                continue  # each environment has its own variables
            for key, value in function.environment.items():
                other = seen_env.setdefault(key, (fname, value))
                if other[1] != value:
                    # Inline handlers share one process, so one variable cannot hold two values.
                    errors.append(
                        (
                            ("functions", fname, "environment", key),
                            f"conflicts with functions.{other[0]}.environment.{key} (one process, one environment)",
                        )
                    )
        errors += invocation_reference_errors(self.functions, self.destinations)
        return errors


def _window_errors(name: str, mapping: Mapping) -> list[tuple[tuple[str | int, ...], str]]:
    """What cannot be combined with tumbling windows (SPEC section 15)."""
    path: tuple[str | int, ...] = ("mappings", name, "tumbling_window_in_seconds")
    errors: list[tuple[tuple[str | int, ...], str]] = []
    if mapping.source.type not in ("kinesis", "kafka"):
        errors.append((path, "applies to kinesis and kafka sources only"))
    if mapping.parallelization_factor > 1:
        errors.append((path, "cannot be combined with parallelization_factor above 1"))
    if mapping.bisect_batch_on_function_error:
        errors.append((path, "cannot be combined with bisect_batch_on_function_error"))
    return errors
