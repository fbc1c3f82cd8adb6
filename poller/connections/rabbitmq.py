"""aio-pika connections for a ``rabbitmq`` connection (SPEC section 4), and what their errors mean.

A plain aio-pika connection rather than a robust one: the source reconnects itself, in sight of
``/readyz`` (see :mod:`poller.sources.rabbitmq.source`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection
from yarl import URL

from poller.config import RabbitMQConnection
from poller.connections.tls import client_context, is_refused_handshake, tls_failure
from poller.errors import SourceError
from poller.redaction import MASK, SecretUrl

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 15.0
OPERATION_TIMEOUT = 30.0  # a declare, consume or publisher confirm that takes longer failed
# What aio-pika and aiormq raise for a broken connection or channel, or a refused operation
# (aio-pika's own list, which includes aiormq's AMQPError, pamqp's errors and closed-channel states).
AMQP_ERRORS = (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, TimeoutError)


def connection_name(url: str | SecretUrl) -> str:
    """The URL with its password masked, for logs and errors."""
    text = url.reveal() if isinstance(url, SecretUrl) else url
    try:
        parsed = URL(text)
    except ValueError:
        return "(a malformed URL)"
    return str(parsed.with_password(MASK) if parsed.password else parsed)


def tls_context(connection: RabbitMQConnection) -> ssl.SSLContext | None:
    """The TLS context of an ``amqps://`` connection (None for ``amqp://``): the broker's
    certificate checked against ``ssl_cafile`` (else the system's CAs), ``ssl_certfile`` presented
    when the broker asks for a client certificate. Raises a non-retriable SourceError for a file
    that cannot be used."""
    if not connection.tls:
        return None
    return client_context(
        f"RabbitMQ at {connection_name(connection.url)}",
        cafile=connection.ssl_cafile,
        certfile=connection.ssl_certfile,
        keyfile=connection.ssl_keyfile,
        password=connection.ssl_password,
    )


async def connect(
    connection: RabbitMQConnection, client_name: str, *, refusal_is_fatal: bool = True
) -> AbstractConnection:
    """Open a plain aio-pika connection named ``client_name`` (shown by the broker's tools), over
    TLS for an ``amqps://`` URL.

    Raises SourceError, retriable unless the broker refused the credentials, the virtual host or
    the TLS handshake (a certificate either side did not accept) and ``refusal_is_fatal`` (at
    start: waiting will not fix them; later they may be fixed meanwhile).
    """
    name = connection_name(connection.url)
    context = tls_context(connection)
    try:
        return await aio_pika.connect(
            connection.url.reveal(),
            timeout=CONNECT_TIMEOUT,
            client_properties={"connection_name": client_name},
            ssl_context=context,
        )
    except ValueError as exc:  # a malformed URL (an aiormq error is never a ValueError)
        raise SourceError(f"invalid AMQP URL {name}: {exc}", retriable=False) from exc
    except (aiormq.exceptions.ProbableAuthenticationError, aiormq.exceptions.AuthenticationError) as exc:
        raise SourceError(
            f"RabbitMQ at {name} refused the credentials: {exc}", retriable=not refusal_is_fatal
        ) from exc
    except aiormq.exceptions.InvalidFrameError as exc:
        # RabbitMQ answers Connection.Open for an unknown or forbidden virtual host with a close.
        raise SourceError(
            f"RabbitMQ at {name} refused the virtual host {virtual_host(name)!r}: {exc}",
            retriable=not refusal_is_fatal,
        ) from exc
    except ssl.SSLError as exc:
        raise SourceError(
            f"cannot connect to RabbitMQ at {name}: {tls_failure(exc)}",
            retriable=not (refusal_is_fatal and is_refused_handshake(exc)),
        ) from exc
    except AMQP_ERRORS as exc:
        cause = _tls_cause(exc)
        if cause is None:
            hint = ""
            if connection.tls and connection.ssl_certfile is None:
                # TLS 1.3 reports a refused client certificate after the handshake, as a hang-up.
                hint = " (if the broker requires a client certificate, set ssl_certfile)"
            raise SourceError(f"cannot connect to RabbitMQ at {name}: {exc!r}{hint}") from exc
        raise SourceError(
            f"cannot connect to RabbitMQ at {name}: {tls_failure(cause)}",
            retriable=not (refusal_is_fatal and is_refused_handshake(cause)),
        ) from exc


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error that aiormq wrapped into a connection error, if that is what it was."""
    for error in (exc, exc.__cause__, exc.__context__, *getattr(exc, "args", ())):
        if isinstance(error, ssl.SSLError):
            return error
    return None


async def close_quietly(connection: AbstractConnection) -> None:
    """Close a connection; the broker requeues its unacked deliveries. Never raises."""
    try:
        await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT)
    except (Exception, TimeoutError) as exc:
        log.debug("error while closing a RabbitMQ connection: %r", exc)


def virtual_host(url: str | SecretUrl) -> str:
    """The virtual host an AMQP URL names, decoded as aiormq decodes it ("/" when there is none)."""
    path = URL(str(url)).path
    return "/" if path in ("", "/") else path[1:].replace("%2F", "/")
