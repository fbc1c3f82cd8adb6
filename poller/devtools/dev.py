"""``poller dev``: local stand-in brokers, the example topics, and the service on config/dev.yaml.

A stand-in starts only where the config points at a loopback address whose port is closed, so a
broker you already run is used as it is. What this command started, it stops on exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from yarl import URL

from poller.app import run_service
from poller.config import (
    AwsConnection,
    Config,
    DynamoDBCheckpoints,
    KafkaConnection,
    KafkaDestination,
    KafkaSource,
    KinesisSource,
    RabbitMQConnection,
    RabbitMQDestination,
    RabbitMQSource,
    S3Destination,
    SnsDestination,
    SqsDestination,
    SqsSource,
)
from poller.config.loader import load_config
from poller.connections.kafka import client_options, start_client
from poller.connections.rabbitmq import connect
from poller.devtools.standins import (
    LOOPBACK,
    StandIn,
    StandInError,
    port_open,
    start_kafka,
    start_kinesalite,
    start_moto,
    start_rabbitmq,
)
from poller.errors import SourceError

log = logging.getLogger(__name__)

DEV_PARTITIONS = 3
DEV_SHARDS = 2
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", LOOPBACK}


def run_dev(config_path: str, drain_timeout: float) -> bool:
    """``poller dev``: start the stand-ins the config needs, create its resources, run it until a
    signal, then stop the stand-ins it started. False if the service stopped because of an error."""
    config = load_config(config_path)
    started = start_stand_ins(config)
    try:
        asyncio.run(create_example_resources(config))
        return run_service(config, drain_timeout, config_path)
    finally:
        for stand_in in started:
            log.info("stopping the %s stand-in", stand_in.name)
            stand_in.stop()


def start_stand_ins(config: Config) -> list[StandIn]:
    started: list[StandIn] = []
    for connection in config.connections.values():
        if isinstance(connection, KafkaConnection):
            for address in connection.bootstrap_servers.split(","):
                host, _, port = address.strip().rpartition(":")
                if host in _LOOPBACK_HOSTS and port.isdigit() and not port_open(LOOPBACK, int(port)):
                    stand_in = start_kafka(int(port), die_with_starter=True)
                    if stand_in is not None:
                        log.info("started the Kafka stand-in (tansu) on %s:%s", LOOPBACK, port)
                        started.append(stand_in)
        elif isinstance(connection, RabbitMQConnection):
            url = URL(connection.url.reveal())
            amqp_port = url.port or 5672
            if url.host in _LOOPBACK_HOSTS and not port_open(LOOPBACK, amqp_port):
                try:
                    rabbit = start_rabbitmq(amqp_port)
                except StandInError as exc:
                    # The other mappings still run; the RabbitMQ ones retry until a broker is there.
                    log.error("no RabbitMQ for the RabbitMQ mappings: %s", exc)
                    continue
                if rabbit is not None:
                    log.info("started RabbitMQ (rabbitmq-server) on %s:%s", LOOPBACK, amqp_port)
                    started.append(rabbit)
    started += _start_aws_stand_ins(config)
    return started


async def create_example_resources(config: Config) -> None:
    """Create every topic the mappings read and the destinations write, if missing."""
    topics: dict[str, set[str]] = {}
    for mapping in config.mappings.values():
        if isinstance(mapping.source, KafkaSource):
            topics.setdefault(mapping.source.connection, set()).update(mapping.source.topics)
    for destination in config.destinations.values():
        if isinstance(destination, KafkaDestination):
            topics.setdefault(destination.connection, set()).add(destination.topic)
    await _create_rabbitmq_queues(config)
    await _create_kinesis_streams(config)
    await _create_sqs_sns_s3(config)
    for connection_name, names in topics.items():
        connection = config.connections[connection_name]
        assert isinstance(connection, KafkaConnection)
        options = client_options(connection)
        admin = AIOKafkaAdminClient(**options)
        await start_client(admin, connection, options)
        try:
            for name in sorted(names):
                try:
                    await admin.create_topics([NewTopic(name, DEV_PARTITIONS, 1)])
                    log.info("created topic %s", name)
                except TopicAlreadyExistsError:
                    pass
        finally:
            await admin.close()


async def _create_rabbitmq_queues(config: Config) -> None:
    """Declare (durable, classic) every queue the RabbitMQ mappings read, and make every RabbitMQ
    destination routable: its queue on the default exchange, or for a named exchange a durable
    direct exchange with a queue ``<exchange>.<routing_key>`` bound to it. Skipped, with a warning,
    for a broker that cannot be reached."""
    queues: dict[str, set[str]] = {}
    bindings: dict[str, set[tuple[str, str]]] = {}
    for mapping in config.mappings.values():
        if isinstance(mapping.source, RabbitMQSource):
            queues.setdefault(mapping.source.connection, set()).update(mapping.source.queues)
    for destination in config.destinations.values():
        if isinstance(destination, RabbitMQDestination):
            if destination.exchange == "":
                queues.setdefault(destination.connection, set()).add(destination.routing_key)
            else:
                pair = (destination.exchange, destination.routing_key)
                bindings.setdefault(destination.connection, set()).add(pair)
    for connection_name in sorted(set(queues) | set(bindings)):
        connection = config.connections[connection_name]
        assert isinstance(connection, RabbitMQConnection)
        try:
            amqp = await connect(connection, "poller dev")
        except SourceError as exc:
            log.warning(
                "cannot reach RabbitMQ (connection %s) to declare its queues: %r", connection_name, exc
            )
            continue
        async with amqp:
            channel = await amqp.channel()
            for name in sorted(queues.get(connection_name, ())):
                await channel.declare_queue(name, durable=True)
                log.info("declared queue %s", name)
            for exchange_name, routing_key in sorted(bindings.get(connection_name, ())):
                exchange = await channel.declare_exchange(exchange_name, "direct", durable=True)
                queue = await channel.declare_queue(f"{exchange_name}.{routing_key}", durable=True)
                await queue.bind(exchange, routing_key)
                log.info("declared exchange %s and queue %s", exchange_name, queue.name)


# The stand-in that serves each AWS service: kinesalite ends closed shards and numbers records as
# Kinesis does, moto does not (SPEC section 11); moto serves the DynamoDB lease table.
_AWS_STAND_INS: dict[str, Callable[[int], StandIn | None]] = {
    "kinesis": lambda port: start_kinesalite(port, die_with_starter=True),
    "dynamodb": lambda port: start_moto(port, die_with_starter=True),
    "sqs": lambda port: start_moto(port, die_with_starter=True),
    "sns": lambda port: start_moto(port, die_with_starter=True),
    "s3": lambda port: start_moto(port, die_with_starter=True),
}


def aws_services(config: Config) -> dict[str, set[str]]:
    """The AWS services that each aws connection is used for (of those ``poller dev`` knows)."""
    used: dict[str, set[str]] = {}
    for mapping in config.mappings.values():
        if isinstance(mapping.source, KinesisSource):
            used.setdefault(mapping.source.connection, set()).add("kinesis")
        if isinstance(mapping.checkpoints, DynamoDBCheckpoints):
            used.setdefault(mapping.checkpoints.connection, set()).add("dynamodb")
        if isinstance(mapping.source, SqsSource):
            used.setdefault(mapping.source.connection, set()).add("sqs")
    for destination in config.destinations.values():
        if isinstance(destination, SqsDestination | SnsDestination | S3Destination):
            used.setdefault(destination.connection, set()).add(destination.type)
            if not isinstance(destination, S3Destination) and destination.overflow_bucket:
                used[destination.connection].add("s3")
    return used


def _aws_endpoint(connection: AwsConnection, service: str) -> str | None:
    # The same precedence as poller.aws and botocore: the config, then the standard variables.
    return (
        connection.endpoint_urls.get(service)
        or connection.endpoint_url
        or os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}")
        or os.environ.get("AWS_ENDPOINT_URL")
    )


def _start_aws_stand_ins(config: Config) -> list[StandIn]:
    started: list[StandIn] = []
    local = True
    for name, services in aws_services(config).items():
        connection = config.connections[name]
        assert isinstance(connection, AwsConnection)
        for service in sorted(services):
            url = urlsplit(_aws_endpoint(connection, service) or "")
            if url.hostname not in _LOOPBACK_HOSTS or url.port is None:
                local = False
                continue
            if port_open(LOOPBACK, url.port):
                continue
            try:
                stand_in = _AWS_STAND_INS[service](url.port)
            except StandInError as exc:
                log.error("no %s stand-in: %s", service, exc)
                continue
            if stand_in is not None:
                log.info("started %s for %s on %s:%s", stand_in.name, service, LOOPBACK, url.port)
                started.append(stand_in)
    if local:
        # The stand-ins take any credentials; botocore insists on some.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "poller-dev")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "poller-dev")
    return started


async def _create_kinesis_streams(config: Config) -> None:
    """Create every stream the Kinesis mappings read, with DEV_SHARDS shards, if missing; skipped
    with a warning when Kinesis cannot be reached."""
    from botocore.exceptions import BotoCoreError, ClientError

    from poller.connections.aws import create_client
    from poller.sources.kinesis.source import stream_name_of

    for mapping in config.mappings.values():
        if not isinstance(mapping.source, KinesisSource):
            continue
        connection = config.connections[mapping.source.connection]
        assert isinstance(connection, AwsConnection)
        stream = stream_name_of(mapping.source.stream)
        try:
            async with create_client(connection, "kinesis") as kinesis:
                try:
                    await kinesis.describe_stream_summary(StreamName=stream)
                    continue
                except kinesis.exceptions.ResourceNotFoundException:
                    await kinesis.create_stream(StreamName=stream, ShardCount=DEV_SHARDS)
                waiter = kinesis.get_waiter("stream_exists")
                await waiter.wait(StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
                log.info("created stream %s with %d shards", stream, DEV_SHARDS)
        except (BotoCoreError, ClientError) as exc:
            log.warning("cannot create Kinesis stream %s: %s", stream, exc)


def sqs_sns_s3_resources(config: Config) -> dict[str, dict[str, set[str]]]:
    """Per aws connection: the queues (names), SNS topics (names) and buckets a config uses."""
    wanted: dict[str, dict[str, set[str]]] = {}

    def add(connection: str, kind: str, name: str) -> None:
        wanted.setdefault(connection, {"sqs": set(), "sns": set(), "s3": set()})[kind].add(name)

    for mapping in config.mappings.values():
        if isinstance(mapping.source, SqsSource):
            add(mapping.source.connection, "sqs", _last_part(mapping.source.queue))
    for destination in config.destinations.values():
        if isinstance(destination, SqsDestination):
            add(destination.connection, "sqs", _last_part(destination.queue))
        elif isinstance(destination, SnsDestination):
            add(destination.connection, "sns", _last_part(destination.topic_arn))
        elif isinstance(destination, S3Destination):
            add(destination.connection, "s3", destination.bucket)
        if isinstance(destination, SqsDestination | SnsDestination) and destination.overflow_bucket:
            add(destination.connection, "s3", destination.overflow_bucket)
    return wanted


_KINDS = {"sqs": "queue", "sns": "topic", "s3": "bucket"}


def _last_part(name: str) -> str:
    # A queue URL ends in /NAME, a queue or topic ARN in :NAME.
    return name.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]


async def _create_sqs_sns_s3(config: Config) -> None:
    """Create the SQS queues, SNS topics and S3 buckets the config uses, if missing (a ``.fifo`` name
    makes a FIFO queue or topic); skipped with a warning when the service cannot be reached."""
    from botocore.exceptions import BotoCoreError, ClientError

    from poller.connections.aws import create_client, region_of

    for connection_name, kinds in sqs_sns_s3_resources(config).items():
        connection = config.connections[connection_name]
        assert isinstance(connection, AwsConnection)
        region = region_of(connection)
        for kind, names in kinds.items():
            if not names:
                continue
            try:
                async with create_client(connection, kind) as client:
                    for name in sorted(names):
                        fifo = name.endswith(".fifo")
                        if kind == "sqs":
                            attributes = (
                                {"FifoQueue": "true", "ContentBasedDeduplication": "true"} if fifo else {}
                            )
                            await client.create_queue(QueueName=name, Attributes=attributes)
                        elif kind == "sns":
                            attributes = {"FifoTopic": "true"} if fifo else {}
                            await client.create_topic(Name=name, Attributes=attributes)
                        else:
                            await _create_bucket(client, name, region)
                        log.info("created %s %s unless it existed", _KINDS[kind], name)
            except (BotoCoreError, ClientError) as exc:
                log.warning("cannot create %s resources %s: %s", kind, ", ".join(sorted(names)), exc)


async def _create_bucket(client: Any, name: str, region: str) -> None:
    from botocore.exceptions import ClientError

    options: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":  # the one region that takes no location constraint
        options["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        await client.create_bucket(**options)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def main(argv: list[str] | None = None) -> int:
    """``python -m poller.devtools.dev create -c FILE``: create the resources a config names, then exit
    (the init step of docker-compose.yml, against real brokers)."""
    import argparse

    from poller.errors import ConfigError
    from poller.observability.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m poller.devtools.dev")
    parser.add_argument("command", choices=["create"])
    parser.add_argument("-c", "--config", default="config/dev.yaml")
    args = parser.parse_args(argv)
    configure_logging("text")
    try:
        config = load_config(args.config, check_handlers=False)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 2
    asyncio.run(create_example_resources(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
