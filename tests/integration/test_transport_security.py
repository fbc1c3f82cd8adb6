"""Transport security with real handshakes on loopback (SPEC section 16), with certificates the test
makes: RabbitMQ over amqps, Kafka over SSL, SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
and SASL_SSL, AWS over HTTPS with ``verify``. What stands in front of each stand-in and why:
tls_support.py. Each test also shows a wrong CA (or password) refused with an error that says so.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
import recorder
import rmq_handlers
import sqs_handlers
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from support import KAFKA_TEST_GROUP_SETTINGS, mapping_config, running, unique_name, wait_for
from tls_support import (
    LOOPBACK,
    Certificates,
    KafkaSaslFront,
    TlsTerminator,
    free_port,
    make_certificates,
    start_fronted_tansu,
)

from poller.config import AwsConnection, KafkaConnection, RabbitMQConnection
from poller.connections.aws import create_client, is_refusal, source_error
from poller.connections.kafka import client_options, start_client
from poller.connections.rabbitmq import close_quietly, connect
from poller.devtools.dev import create_example_resources
from poller.errors import SourceError

REPO = Path(__file__).resolve().parents[2]
USERS = {"orders": "kafka-Sasl-pw-0rders"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


# --- RabbitMQ ------------------------------------------------------------------------------------


@pytest.fixture
async def amqps_port(amqp_url: str, certificates: Certificates) -> AsyncIterator[int]:
    parsed = urlsplit(amqp_url)
    terminator = TlsTerminator(
        (parsed.hostname or LOOPBACK, parsed.port or 5672), certificates.server_context()
    )
    port = await terminator.start()
    yield port
    await terminator.close()


def amqps_url(amqp_url: str, port: int) -> str:
    parsed = urlsplit(amqp_url)
    return f"amqps://{parsed.username}:{parsed.password}@{LOOPBACK}:{port}{parsed.path or '/'}"


@pytest.mark.rabbitmq
async def test_rabbitmq_round_trip_over_amqps_with_the_test_ca(
    amqp_url: str, amqps_port: int, certificates: Certificates
) -> None:
    queue = unique_name("amqps")
    url = amqps_url(amqp_url, amqps_port)
    connection = RabbitMQConnection(type="rabbitmq", url=url, ssl_cafile=str(certificates.ca_file))  # type: ignore[arg-type]
    # Published through poller's own connection helper (what the RabbitMQ destination uses) ...
    amqp = await connect(connection, "transport test")
    try:
        channel = await amqp.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        for i in range(3):
            await channel.default_exchange.publish(aio_pika.Message(f"tls-{i}".encode()), routing_key=queue)
    finally:
        await close_quietly(amqp)
    # ... and consumed by a mapping whose connection is amqps with the test's CA.
    config = mapping_config(
        {"rabbit": {"type": "rabbitmq", "url": url, "ssl_cafile": str(certificates.ca_file)}},
        {"type": "rabbitmq", "connection": "rabbit", "queues": [queue]},
        "rmq_handlers:collect",
        maximum_batching_window_in_seconds=0,
    )
    async with running(config) as app:

        def seen() -> list[bytes]:
            return sorted(rmq_handlers.body(m) for batch in rmq_handlers.calls(f"{queue}::/") for m in batch)

        await wait_for(lambda: len(seen()) >= 3, message="messages handled over amqps")
        assert seen() == [b"tls-0", b"tls-1", b"tls-2"]
        assert app.runners["m"].status.ready
    async with await aio_pika.connect(amqp_url) as plain:
        await (await plain.channel()).queue_delete(queue)


@pytest.mark.rabbitmq
async def test_rabbitmq_refuses_a_broker_certificate_from_another_ca(
    amqp_url: str, amqps_port: int, certificates: Certificates
) -> None:
    url = amqps_url(amqp_url, amqps_port)
    connection = RabbitMQConnection(type="rabbitmq", url=url, ssl_cafile=str(certificates.other_ca_file))  # type: ignore[arg-type]
    with pytest.raises(SourceError) as raised:
        await connect(connection, "transport test")
    assert not raised.value.retriable
    message = str(raised.value)
    assert message.startswith("cannot connect to RabbitMQ at amqps://")
    assert message.endswith(
        f"@{LOOPBACK}:{amqps_port}/: the broker's certificate was not accepted (unable to get local issuer certificate)"
    )


# --- Kafka ---------------------------------------------------------------------------------------


@pytest.fixture
async def fronted_kafka(tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    """A tansu of this test's own: (its plain port, the port it advertises, where a front listens)."""
    plain, advertised = free_port(), free_port()
    tansu = start_fronted_tansu(plain, advertised, REPO / ".brokers")
    yield plain, advertised
    tansu.stop()


def kafka_connection(
    port: int, protocol: str, certificates: Certificates, **settings: Any
) -> KafkaConnection:
    if protocol.endswith("SSL"):
        settings.setdefault("ssl_cafile", str(certificates.ca_file))
    return KafkaConnection.model_validate(
        {
            "type": "kafka",
            "bootstrap_servers": f"{LOOPBACK}:{port}",
            "security_protocol": protocol,
            **settings,
        }
    )


async def produce_and_consume(connection: KafkaConnection, count: int = 3) -> list[bytes]:
    """Create a topic and produce to it through poller's connection helpers, then run a mapping on
    ``connection`` until it handled every record; return the values it saw."""
    topic = unique_name("secure")
    config = mapping_config(
        {"kafka": connection.model_dump(mode="python")},
        {"type": "kafka", "connection": "kafka", "topics": [topic], **KAFKA_TEST_GROUP_SETTINGS},
        "recorder:collect",
        maximum_batching_window_in_seconds=0,
    )
    options = client_options(connection)
    admin = AIOKafkaAdminClient(**options)
    await start_client(admin, connection, options)
    try:
        from aiokafka.admin import NewTopic

        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**options)
    await start_client(producer, connection, options)
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"secure-{i}".encode())
    finally:
        await producer.stop()
    async with running(config):
        await wait_for(
            lambda: sum(map(len, recorder.calls(topic))) >= count, timeout=60, message="records handled"
        )
    return sorted(base64.b64decode(record["value"]) for batch in recorder.calls(topic) for record in batch)


async def refusal(connection: KafkaConnection) -> SourceError:
    """The error with which a producer on ``connection`` fails to start."""
    options = client_options(connection)
    producer = AIOKafkaProducer(**options)
    try:
        with pytest.raises(SourceError) as raised:
            await start_client(producer, connection, options)
    finally:
        await producer.stop()
    return raised.value


@pytest.mark.kafka
async def test_kafka_over_ssl_through_a_tls_terminator(
    fronted_kafka: tuple[int, int], certificates: Certificates
) -> None:
    plain, advertised = fronted_kafka
    terminator = TlsTerminator((LOOPBACK, plain), certificates.server_context())
    await terminator.start(advertised)
    try:
        values = await produce_and_consume(kafka_connection(advertised, "SSL", certificates))
        assert values == [b"secure-0", b"secure-1", b"secure-2"]
        assert terminator.connections >= 2  # bootstrap, then the advertised broker, both over TLS
        wrong = kafka_connection(advertised, "SSL", certificates, ssl_cafile=str(certificates.other_ca_file))
        error = await refusal(wrong)
        assert not error.retriable
        assert str(error) == (
            f"cannot connect to Kafka at {LOOPBACK}:{advertised}: the broker's certificate was not "
            "accepted (unable to get local issuer certificate)"
        )
    finally:
        await terminator.close()


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_kafka_sasl_plaintext_authenticates_with_each_mechanism(
    mechanism: str, fronted_kafka: tuple[int, int], certificates: Certificates
) -> None:
    plain, advertised = fronted_kafka
    front = KafkaSaslFront((LOOPBACK, plain), USERS)
    await front.start(advertised)
    try:
        sasl = {"sasl_mechanism": mechanism, "sasl_username": "orders"}
        connection = kafka_connection(
            advertised, "SASL_PLAINTEXT", certificates, sasl_password=USERS["orders"], **sasl
        )
        assert await produce_and_consume(connection) == [b"secure-0", b"secure-1", b"secure-2"]
        assert front.refused == 0
        assert set(front.authenticated) == {(mechanism, "orders")}
        wrong = kafka_connection(
            advertised, "SASL_PLAINTEXT", certificates, sasl_password="not-the-password", **sasl
        )
        error = await refusal(wrong)
        assert not error.retriable
        assert str(error) == (
            f"cannot connect to Kafka at {LOOPBACK}:{advertised}: the broker refused the SASL "
            f"{mechanism} credentials of user 'orders'"
        )
    finally:
        await front.close()


@pytest.mark.kafka
async def test_kafka_sasl_ssl_and_poller_dev_creating_topics(
    fronted_kafka: tuple[int, int], certificates: Certificates
) -> None:
    plain, advertised = fronted_kafka
    front = KafkaSaslFront((LOOPBACK, plain), USERS, certificates.server_context())
    await front.start(advertised)
    try:
        connection = kafka_connection(
            advertised,
            "SASL_SSL",
            certificates,
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="orders",
            sasl_password=USERS["orders"],
        )
        assert await produce_and_consume(connection) == [b"secure-0", b"secure-1", b"secure-2"]
        # `poller dev` creates the topics a config names through the same helpers.
        topic = unique_name("dev-created")
        config = mapping_config(
            {"kafka": connection.model_dump(mode="python")},
            {"type": "kafka", "connection": "kafka", "topics": [topic]},
            "recorder:collect",
        )
        await create_example_resources(config)
        options = client_options(connection)
        admin = AIOKafkaAdminClient(**options)
        await start_client(admin, connection, options)
        try:
            assert topic in await admin.list_topics()
        finally:
            await admin.close()
        assert front.refused == 0
    finally:
        await front.close()


# --- AWS -----------------------------------------------------------------------------------------


@pytest.mark.sqs
async def test_aws_verify_accepts_the_test_ca_refuses_others_and_can_be_turned_off(
    moto_endpoint: str, certificates: Certificates
) -> None:
    parsed = urlsplit(moto_endpoint)
    terminator = TlsTerminator(
        (parsed.hostname or LOOPBACK, parsed.port or 443), certificates.server_context()
    )
    port = await terminator.start()
    endpoint = f"https://{LOOPBACK}:{port}"
    queue = unique_name("https")
    try:
        trusted = AwsConnection(type="aws", endpoint_url=endpoint, verify=str(certificates.ca_file))
        async with create_client(trusted, "sqs") as sqs:
            url = (await sqs.create_queue(QueueName=queue))["QueueUrl"]
            await sqs.send_message(QueueUrl=url, MessageBody="over https")
        config = mapping_config(
            {"aws": trusted.model_dump(mode="python")},
            {"type": "sqs", "connection": "aws", "queue": queue, "wait_time_seconds": 1},
            "sqs_handlers:collect",
        )
        async with running(config):
            handled = await wait_for(lambda: sqs_handlers.calls(queue), message="handled over https")
            assert [record["body"] for record in handled[0]] == ["over https"]
        unverified = AwsConnection(type="aws", endpoint_url=endpoint, verify=False)
        async with create_client(unverified, "sqs") as sqs:
            assert (await sqs.get_queue_url(QueueName=queue))["QueueUrl"] == url
        system_cas = AwsConnection(type="aws", endpoint_url=endpoint)  # the test CA is not among them
        async with create_client(system_cas, "sqs") as sqs:
            with pytest.raises(Exception) as raised:  # noqa: PT011 (mapped just below, as poller does)
                await sqs.get_queue_url(QueueName=queue)
        error = source_error("SQS lookup", raised.value, fatal_codes=frozenset())
        assert is_refusal(raised.value)
        assert not error.retriable
        assert str(error).startswith(f"SQS lookup: SSL validation failed for {endpoint}/")
        assert "CERTIFICATE_VERIFY_FAILED" in str(error)
        async with create_client(trusted, "sqs") as sqs:
            await sqs.delete_queue(QueueUrl=url)
    finally:
        await terminator.close()


@pytest.mark.rabbitmq
async def test_rabbitmq_mutual_tls_presents_the_client_certificate(
    amqp_url: str, certificates: Certificates
) -> None:
    parsed = urlsplit(amqp_url)
    context = certificates.server_context(require_client_cert=True)
    terminator = TlsTerminator((parsed.hostname or LOOPBACK, parsed.port or 5672), context)
    port = await terminator.start()
    url = amqps_url(amqp_url, port)
    try:
        with_certificate = RabbitMQConnection(
            type="rabbitmq",
            url=url,  # type: ignore[arg-type]
            ssl_cafile=str(certificates.ca_file),
            ssl_certfile=str(certificates.client_cert_file),
        )
        amqp = await connect(with_certificate, "transport test")
        try:
            channel = await amqp.channel()
            assert not channel.is_closed
        finally:
            await close_quietly(amqp)
        without = RabbitMQConnection(type="rabbitmq", url=url, ssl_cafile=str(certificates.ca_file))  # type: ignore[arg-type]
        with pytest.raises(SourceError) as raised:
            await connect(without, "transport test")
        message = str(raised.value)
        assert message.startswith("cannot connect to RabbitMQ at amqps://")
        assert message.endswith("(if the broker requires a client certificate, set ssl_certfile)")
    finally:
        await terminator.close()
