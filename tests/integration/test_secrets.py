"""Secrets never leak (SPEC section 16), end to end: a real ``poller run`` whose config takes a Kafka
SASL password, a RabbitMQ URL password and an AWS secret key from the environment, against brokers
that refuse or cannot be reached, with a handler whose error quotes secrets; then every output is
searched for the secret values: the log (JSON at DEBUG, client libraries included, and text),
``/mappings`` with its ``lastError``, ``/readyz``, ``/metrics``, the spans exported over OTLP, and
``poller validate``'s output for the file and for a broken copy of it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from otlp_receiver import OtlpReceiver
from support import INTEGRATION, REPO, poller_log, spawn_poller, unique_name, wait_exit, wait_for
from tls_support import free_port

from poller.redaction import MASK

pytestmark = [pytest.mark.sqs, pytest.mark.rabbitmq]

CONFIG = """\
connections:
  kafka:
    type: kafka
    bootstrap_servers: "127.0.0.1:${CLOSED_PORT}"
    security_protocol: SASL_PLAINTEXT
    sasl_mechanism: SCRAM-SHA-512
    sasl_username: orders
    sasl_password: "${KAFKA_SASL_PASSWORD}"
  rabbit: {type: rabbitmq, url: "amqp://guest:${RABBIT_PASSWORD}@127.0.0.1:${RABBIT_PORT}/"}
  aws: {type: aws, endpoint_url: "${MOTO}", access_key_id: AKIDPOLLERTEST, secret_access_key: "${AWS_SECRET_KEY}"}
  aws-down:
    type: aws
    endpoint_url: "http://127.0.0.1:${CLOSED_PORT}"
    access_key_id: AKIDPOLLERTEST
    secret_access_key: "${AWS_SECRET_KEY}"
functions:
  leaky: {handler: "secret_handlers:leaky"}
mappings:
  from-kafka: {function_name: leaky, source: {type: kafka, connection: kafka, topics: [orders]}}
  from-rabbit: {function_name: leaky, source: {type: rabbitmq, connection: rabbit, queues: [orders]}}
  from-sqs: {function_name: leaky, source: {type: sqs, connection: aws, queue: "${QUEUE}", wait_time_seconds: 1}}
  from-sqs-down: {function_name: leaky, source: {type: sqs, connection: aws-down, queue: orders, wait_time_seconds: 1}}
admin: {port: ${ADMIN_PORT}}
"""


def secrets() -> dict[str, str]:
    token = uuid.uuid4().hex[:12]
    return {
        "KAFKA_SASL_PASSWORD": f"kafka-Sasl-{token}",
        "RABBIT_PASSWORD": f"rabbit-Wr0ng-{token}",
        "AWS_SECRET_KEY": f"aws/Secret+Key{token}",
        "HANDLER_URL_PASSWORD": f"handler-url-{token}",
    }


def assert_clean(what: str, text: str, values: dict[str, str]) -> None:
    for name, value in values.items():
        assert value not in text, f"{what} shows {name}"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    await otlp.start()
    yield otlp
    await otlp.close()


async def make_queue(endpoint: str) -> str:
    from aiobotocore.session import get_session

    name = unique_name("secrets")
    async with get_session().create_client("sqs", region_name="us-east-1", endpoint_url=endpoint) as sqs:
        url = (await sqs.create_queue(QueueName=name))["QueueUrl"]
        await sqs.send_message(QueueUrl=url, MessageBody="a record the handler fails on")
    return name


async def get(session: aiohttp.ClientSession, port: int, path: str) -> str:
    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
        return await response.text()


async def test_no_output_of_a_running_poller_shows_a_secret(
    moto_endpoint: str, amqp_url: str, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    values = secrets()
    admin = free_port()
    env = {
        **values,
        "CLOSED_PORT": str(free_port()),  # nothing listens: Kafka and the second AWS stay unreachable
        "RABBIT_PORT": str(free_port()),
        "MOTO": moto_endpoint,
        "QUEUE": await make_queue(moto_endpoint),
        "ADMIN_PORT": str(admin),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    config = tmp_path / "poller.yaml"
    config.write_text(CONFIG)
    process = spawn_poller(config, env, options=["--log-level", "DEBUG"])
    try:
        async with aiohttp.ClientSession() as session:

            async def failing_everywhere() -> dict[str, Any] | None:
                try:
                    mappings = json.loads(await get(session, admin, "/mappings"))
                except aiohttp.ClientError:
                    return None
                errors = [
                    mappings[name]["lastError"] for name in ("from-kafka", "from-rabbit", "from-sqs-down")
                ]
                failed = mappings["from-sqs"]["counts"]["failed"]
                return mappings if all(errors) and failed and receiver.named("invoke leaky") else None

            mappings = await wait_for(failing_everywhere, timeout=90, message="every mapping failing")
            body = await get(session, admin, "/mappings")
            readyz = await get(session, admin, "/readyz")
            metrics = await get(session, admin, "/metrics")
        process.send_signal(signal.SIGTERM)
        assert await wait_exit(process, 40) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = poller_log(config)
    assert mappings["from-rabbit"]["lastError"].startswith(
        "cannot connect to RabbitMQ at amqp://guest:******@127.0.0.1:"
    )
    assert mappings["from-kafka"]["lastError"].startswith("cannot connect to Kafka at 127.0.0.1:")
    assert "SQS lookup of queue 'orders' failed" in mappings["from-sqs-down"]["lastError"]
    assert 'poller_mapping_ready{mapping="from-rabbit"} 0.0' in metrics
    spans = [
        json.dumps([span.name, span.attributes, span.events, span.status_message]) for span in receiver.spans
    ]
    invoke = receiver.named("invoke leaky")[0]
    assert invoke.status_message == f"cannot log in to amqp://app:{MASK}@db.internal/ nor with {MASK}"
    assert '"level":"DEBUG","logger":"aiormq' in log  # the client libraries logged too
    for what, text in {"log": log, "/mappings": body, "/readyz": readyz, "/metrics": metrics}.items():
        assert_clean(what, text, values)
    assert_clean("spans", "\n".join(spans), values)


async def test_a_refused_rabbitmq_password_stays_out_of_text_logs(amqp_url: str, tmp_path: Path) -> None:
    values = secrets()
    config = tmp_path / "poller.yaml"
    config.write_text(
        "connections:\n"
        '  rabbit: {type: rabbitmq, url: "amqp://guest:${RABBIT_PASSWORD}@127.0.0.1:5672/"}\n'
        "functions: {leaky: {handler: 'secret_handlers:leaky'}}\n"
        "mappings: {m: {function_name: leaky, source: {type: rabbitmq, connection: rabbit, queues: [q]}}}\n"
        "admin: {port: 0}\n"
    )
    process = spawn_poller(config, values, options=["--log-format", "text", "--log-level", "DEBUG"])
    try:
        assert await wait_exit(process, 60) == 1  # refused credentials at start end the service
    finally:
        if process.poll() is None:
            process.kill()
    log = poller_log(config)
    assert "RabbitMQ at amqp://guest:******@127.0.0.1:5672/ refused the credentials: ACCESS_REFUSED" in log
    assert_clean("text log", log, values)


def validate(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "poller", "validate", "-c", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(INTEGRATION), str(REPO)]), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_poller_validate_shows_no_secret_in_its_verdict_or_its_errors(tmp_path: Path) -> None:
    values = secrets()
    env = {**values, "CLOSED_PORT": "9", "RABBIT_PORT": "5672", "MOTO": "http://127.0.0.1:9", "QUEUE": "q"}
    env["ADMIN_PORT"] = "0"
    good = tmp_path / "good.yaml"
    good.write_text(CONFIG)
    result = await asyncio.to_thread(validate, good, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good}: ok (4 mappings")
    # Broken around every secret: a password that breaks its URL, SASL settings on a plain
    # connection, an AWS secret without its key id, an unknown key beside a password.
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        CONFIG.replace("guest:${RABBIT_PASSWORD}@", "guest:${RABBIT_PASSWORD}/x@")
        .replace("security_protocol: SASL_PLAINTEXT", "security_protocol: PLAINTEXT\n    sasl_pasword: x")
        .replace("access_key_id: AKIDPOLLERTEST, ", "")
    )
    result = await asyncio.to_thread(validate, broken, env)
    assert result.returncode == 2
    errors = result.stderr
    assert "connections.rabbit.url: not an AMQP URL" in errors
    assert "connections.kafka.sasl_pasword: unknown key 'sasl_pasword'" in errors
    assert "connections.aws: access_key_id and secret_access_key go together" in errors
    assert_clean("poller validate", result.stdout + errors, values)
