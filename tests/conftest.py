"""Session-wide broker fixtures (SPEC section 11).

A test that needs a broker and cannot get one fails; it is never skipped, so a green run always
means the broker tests ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from poller.devtools.standins import (
    KAFKA_PORT,
    KINESALITE_PORT,
    LOOPBACK,
    MOTO_PORT,
    RABBITMQ_PORT,
    StandInError,
    port_open,
    start_kafka,
    start_kinesalite,
    start_moto,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
# The same directory as `python -m poller.devtools.standins`, so a CI trap's `stop` also finds a broker
# left behind by a test run that was killed before its teardown.
STATE_DIR = REPO_ROOT / ".brokers"
# Functions run in execution environments, child processes that import their handler as Python
# does, from the working directory and PYTHONPATH (SPEC section 5), and inherit poller's environment:
# this makes the test handler modules (and the helpers they share) importable there as they are here.
HANDLER_PATHS = [REPO_ROOT / "tests" / "integration", REPO_ROOT / "tests"]
os.environ["PYTHONPATH"] = os.pathsep.join(
    [*map(str, HANDLER_PATHS), *([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])]
)


@pytest.fixture(scope="session", autouse=True)
def _calls_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Where the test handlers record what they saw (``tests/integration/recording.py``): in files,
    since they run in other processes; environments inherit the variable from poller."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CALLS_DIR", str(tmp_path_factory.mktemp("calls")))
        yield


def _first_address(bootstrap: str) -> tuple[str, int] | None:
    entry = bootstrap.split(",")[0].strip()
    host, _, port = entry.rpartition(":")
    try:
        return host.strip("[]") or LOOPBACK, int(port)
    except ValueError:
        return None


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Kafka bootstrap servers: ``$KAFKA_BOOTSTRAP``, else a tansu stand-in on 127.0.0.1:9092.

    A stand-in is started only if the port is closed, and stopped at the end of the session only
    if this fixture started it.
    """
    configured = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if configured:
        address = _first_address(configured)
        if address is None:
            pytest.fail(f"KAFKA_BOOTSTRAP={configured!r} is not host:port[,host:port...]")
        if not port_open(*address):
            pytest.fail(f"KAFKA_BOOTSTRAP={configured!r}: nothing listens on {address[0]}:{address[1]}")
        yield configured
        return
    try:
        stand_in = start_kafka(KAFKA_PORT, STATE_DIR)
    except StandInError as exc:
        pytest.fail(f"no Kafka broker for the tests: {exc}")
    try:
        yield f"{LOOPBACK}:{KAFKA_PORT}"
    finally:
        if stand_in is not None:
            stand_in.stop()


def _stand_in(variable: str, start: object, port: int, what: str) -> Iterator[str]:
    """``$variable`` if set (it must answer), else a stand-in on loopback started for the session."""
    configured = os.environ.get(variable, "").strip()
    if configured:
        yield configured
        return
    try:
        stand_in = start(port, STATE_DIR)  # type: ignore[operator]
    except StandInError as exc:
        pytest.fail(f"no {what} for the tests: {exc}")
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        if stand_in is not None:
            stand_in.stop()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """SQS, SNS, S3 and DynamoDB: ``$AWS_ENDPOINT_URL``, else the moto server on 127.0.0.1:4566."""
    yield from _stand_in("AWS_ENDPOINT_URL", start_moto, MOTO_PORT, "moto server (SQS/SNS/S3/DynamoDB)")


@pytest.fixture(scope="session")
def kinesis_endpoint() -> Iterator[str]:
    """Kinesis: ``$AWS_ENDPOINT_URL_KINESIS``, else kinesalite on 127.0.0.1:4567."""
    yield from _stand_in("AWS_ENDPOINT_URL_KINESIS", start_kinesalite, KINESALITE_PORT, "Kinesis stand-in")


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """RabbitMQ: ``$AMQP_URL``, else the broker on 127.0.0.1:5672 (guest/guest).

    Nothing is started here: starting RabbitMQ needs root, so ``.ci/run`` installs and starts
    Debian's rabbitmq-server before the tests (``poller dev`` starts it for development).
    """
    url = os.environ.get("AMQP_URL", "").strip() or f"amqp://guest:guest@{LOOPBACK}:{RABBITMQ_PORT}/"
    parsed = urlsplit(url)
    host = parsed.hostname or LOOPBACK
    port = parsed.port or (5671 if parsed.scheme == "amqps" else RABBITMQ_PORT)
    if not port_open(host, port):
        pytest.fail(
            f"no RabbitMQ for the tests: nothing listens on {host}:{port}. Install and start Debian's "
            "rabbitmq-server (sudo apt-get install rabbitmq-server; .ci/run does both), or set AMQP_URL"
        )
    return url


@pytest.fixture(autouse=True)
def _aws_test_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # The stand-ins accept any credentials; real ones must never be used by a test.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
