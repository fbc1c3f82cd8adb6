"""Sources: the brokers records come from, one package per broker behind the protocols of
:mod:`poller.sources.protocol`. The engine never branches on the broker type; it finds a source by
the ``type`` of its config through :func:`build_source`."""

from __future__ import annotations

import importlib

from poller.config import Config, Mapping
from poller.sources.protocol import (
    EventFormat,
    Lagging,
    LaneListener,
    Pausable,
    Releasing,
    Source,
)

__all__ = ["EventFormat", "Lagging", "LaneListener", "Pausable", "Releasing", "Source", "build_source"]

_SOURCES = {
    "kafka": "poller.sources.kafka.source:KafkaSource",
    "sqs": "poller.sources.sqs.source:SqsSource",
    "kinesis": "poller.sources.kinesis.source:KinesisSource",
    "rabbitmq": "poller.sources.rabbitmq.source:RabbitMQSource",
}


def build_source(name: str, mapping: Mapping, config: Config) -> Source:
    module_name, _, class_name = _SOURCES[mapping.source.type].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    from_config = getattr(cls, "from_config", None)
    if from_config is not None:
        # A source that needs more than its own connection (Kinesis: its lease store's).
        source: Source = from_config(name, mapping, config)
    else:
        source = cls(name, mapping, config.connections[mapping.source.connection])
    return source
