"""One harness per source broker for the shared delivery-guarantee suite (``test_guarantees*.py``).

``BROKERS`` parametrizes a test over the four sources, each with its pytest marker; the ``broker``
fixture (``tests/integration/conftest.py``) hands the test a fresh :class:`BrokerHarness` of one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .base import MAPPING, BrokerHarness, Counters, Sent, counters
from .kafka import KafkaHarness
from .kinesis import KinesisHarness
from .rabbitmq import RabbitMQHarness
from .sqs import SqsHarness

__all__ = ["BROKERS", "MAPPING", "BrokerHarness", "Counters", "Sent", "counters", "harness_for"]

BROKERS = [
    pytest.param(kind, marks=getattr(pytest.mark, kind), id=kind)
    for kind in ("kafka", "sqs", "kinesis", "rabbitmq")
]


def harness_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> BrokerHarness:
    """The harness of ``kind``, on the broker its session fixture (``tests/conftest.py``) gives."""
    if kind == "kafka":
        return KafkaHarness(request.getfixturevalue("kafka_bootstrap"))
    if kind == "sqs":
        return SqsHarness(request.getfixturevalue("moto_endpoint"))
    if kind == "kinesis":
        return KinesisHarness(request.getfixturevalue("kinesis_endpoint"), tmp_path)
    assert kind == "rabbitmq", kind
    return RabbitMQHarness(request.getfixturevalue("amqp_url"))
