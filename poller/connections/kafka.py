"""aiokafka clients for a ``kafka`` connection (SPEC section 4), and what their errors mean."""

from __future__ import annotations

from typing import Any

from aiokafka.errors import KafkaError

from poller.config import KafkaConnection
from poller.errors import SourceError


def client_options(connection: KafkaConnection) -> dict[str, Any]:
    """aiokafka keyword arguments shared by consumers and producers of one connection."""
    options: dict[str, Any] = {
        "bootstrap_servers": connection.bootstrap_servers,
        "client_id": connection.client_id,
        "security_protocol": connection.security_protocol,
    }
    if connection.sasl_mechanism:
        options.update(
            sasl_mechanism=connection.sasl_mechanism,
            sasl_plain_username=connection.sasl_username,
            sasl_plain_password=connection.sasl_password,
        )
    if connection.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        options["ssl_context"] = create_ssl_context(cafile=connection.ssl_cafile)
    return options


def source_error(what: str, exc: KafkaError) -> SourceError:
    """A Kafka error as a SourceError, retriable as aiokafka says (``KafkaError.retriable``; a
    connection error is)."""
    return SourceError(f"{what}: {exc}", retriable=bool(getattr(exc, "retriable", True)))
