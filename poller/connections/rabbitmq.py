"""aio-pika connections for a ``rabbitmq`` connection (SPEC section 4), and what their errors mean.

A plain aio-pika connection rather than a robust one: the source reconnects itself, in sight of
``/readyz`` (see :mod:`poller.sources.rabbitmq.source`).
"""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection
from yarl import URL

from poller.errors import SourceError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
OPERATION_TIMEOUT = 30.0  # a declare, consume or publisher confirm that takes longer failed
# What aio-pika and aiormq raise for a broken connection or channel, or a refused operation
# (aio-pika's own list, which includes aiormq's AMQPError, pamqp's errors and closed-channel states).
AMQP_ERRORS = (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, TimeoutError)


def connection_name(url: str) -> str:
    """The URL with its password masked, for logs and errors."""
    try:
        parsed = URL(url)
    except ValueError:
        return "(a malformed URL)"
    return str(parsed.with_password("******") if parsed.password else parsed)


async def connect(url: str, client_name: str, *, refusal_is_fatal: bool = True) -> AbstractConnection:
    """Open a plain aio-pika connection named ``client_name`` (shown by the broker's tools).

    Raises SourceError, retriable unless the broker refused the credentials or the virtual host and
    ``refusal_is_fatal`` (at start: waiting will not fix them; later they may be fixed meanwhile).
    """
    try:
        return await aio_pika.connect(
            url, timeout=CONNECT_TIMEOUT, client_properties={"connection_name": client_name}
        )
    except ValueError as exc:  # a malformed URL (an aiormq error is never a ValueError)
        raise SourceError(f"invalid AMQP URL {connection_name(url)}: {exc}", retriable=False) from exc
    except (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.AuthenticationError) as exc:
        raise SourceError(
            f"RabbitMQ at {connection_name(url)} refused the credentials: {exc}",
            retriable=not refusal_is_fatal,
        ) from exc
    except aiormq.exceptions.InvalidFrameError as exc:
        # RabbitMQ answers Connection.Open for an unknown or forbidden virtual host with a close.
        raise SourceError(
            f"RabbitMQ at {connection_name(url)} refused the virtual host {virtual_host(url)!r}: {exc}",
            retriable=not refusal_is_fatal,
        ) from exc
    except AMQP_ERRORS as exc:
        raise SourceError(f"cannot connect to RabbitMQ at {connection_name(url)}: {exc!r}") from exc


async def close_quietly(connection: AbstractConnection) -> None:
    """Close a connection; the broker requeues its unacked deliveries. Never raises."""
    try:
        await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT)
    except (Exception, TimeoutError) as exc:
        log.debug("error while closing a RabbitMQ connection: %r", exc)


def virtual_host(url: str) -> str:
    """The virtual host an AMQP URL names, decoded as aiormq decodes it ("/" when there is none)."""
    path = URL(url).path
    return "/" if path in ("", "/") else path[1:].replace("%2F", "/")
