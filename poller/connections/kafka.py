"""aiokafka clients for a ``kafka`` connection (SPEC sections 4 and 16), and what their errors mean.

Consumers (the Kafka source), producers (the Kafka destination) and the admin client of ``poller
dev`` all take :func:`client_options` and are started by :func:`start_client`, so that TLS, SASL and
the meaning of a refused connection are the same everywhere.

aiokafka reports a failed bootstrap as "Unable to bootstrap from [...]" and logs the reason, which
poller silences; :func:`start_client` then opens one connection itself to find the reason (a
certificate not accepted, SASL credentials refused) and puts it into the error.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from poller.config import KafkaConnection
from poller.connections.tls import client_context, is_refused_handshake, tls_failure
from poller.errors import SourceError

DIAGNOSIS_TIMEOUT = 10.0
# The client options that a single broker connection takes too.
_CONNECTION_KEYS = frozenset(
    {
        "client_id",
        "security_protocol",
        "ssl_context",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
    }
)


class _Startable(Protocol):
    async def start(self) -> None: ...


def client_options(connection: KafkaConnection) -> dict[str, Any]:
    """aiokafka keyword arguments shared by consumers, producers and admin clients of one connection.

    Raises a non-retriable SourceError when an ``ssl_*`` file cannot be used."""
    options: dict[str, Any] = {
        "bootstrap_servers": connection.bootstrap_servers,
        "client_id": connection.client_id,
        "security_protocol": connection.security_protocol,
    }
    if connection.sasl_mechanism and connection.sasl_password is not None:
        options.update(
            sasl_mechanism=connection.sasl_mechanism,
            sasl_plain_username=connection.sasl_username,
            sasl_plain_password=connection.sasl_password.reveal(),
        )
    if connection.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = client_context(
            f"Kafka at {connection.bootstrap_servers}",
            cafile=connection.ssl_cafile,
            certfile=connection.ssl_certfile,
            keyfile=connection.ssl_keyfile,
            password=connection.ssl_password,
        )
    return options


async def start_client(client: _Startable, connection: KafkaConnection, options: dict[str, Any]) -> None:
    """``await client.start()`` with its errors as a SourceError saying why, retriable unless the
    broker refused the certificate or the credentials (or does not offer the SASL mechanism)."""
    where = f"Kafka at {connection.bootstrap_servers}"
    try:
        await client.start()
    except KafkaConnectionError as exc:
        reason, refused = await diagnose(connection, options)
        raise SourceError(f"cannot connect to {where}: {reason or exc}", retriable=not refused) from exc
    except KafkaError as exc:
        raise source_error(f"cannot connect to {where}", exc) from exc
    except (KeyError, ValueError) as exc:
        # aiokafka's SCRAM client reads the server's final message as "v=<signature>"; a broker
        # that refuses the credentials answers "e=<error>" there, and aiokafka fails on the key.
        if connection.sasl_mechanism and connection.sasl_mechanism.startswith("SCRAM"):
            raise SourceError(
                f"{where} refused the SASL {connection.sasl_mechanism} credentials of user "
                f"{connection.sasl_username!r} (unknown user or wrong password)",
                retriable=False,
            ) from exc
        raise


async def diagnose(connection: KafkaConnection, options: dict[str, Any]) -> tuple[str | None, bool]:
    """Why a bootstrap failed, found by opening one connection to the first bootstrap server
    with the same settings: (what went wrong or None, whether it is a refusal)."""
    host, _, port = connection.bootstrap_servers.split(",")[0].strip().rpartition(":")
    if not port.isdigit():
        return None, False
    settings = {key: options[key] for key in _CONNECTION_KEYS if key in options}
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host.strip("[]"), int(port), request_timeout_ms=int(DIAGNOSIS_TIMEOUT * 1000), **settings
            ),
            DIAGNOSIS_TIMEOUT,
        )
    except (OSError, KafkaError, TimeoutError, KeyError, ValueError) as exc:
        return _explain(connection, exc)
    conn.close()
    return None, False


def _explain(connection: KafkaConnection, exc: BaseException) -> tuple[str | None, bool]:
    cause = exc.__cause__ or exc.__context__
    for error in (exc, cause):
        if error is not None and (reason := tls_failure(error)) is not None:
            return reason, is_refused_handshake(error)
    if isinstance(exc, SaslAuthenticationFailed | KeyError | ValueError):
        return (
            f"the broker refused the SASL {connection.sasl_mechanism} credentials of user "
            f"{connection.sasl_username!r}",
            True,
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"the broker does not offer SASL {connection.sasl_mechanism} ({exc})", True
    if isinstance(exc, ConnectionResetError | asyncio.IncompleteReadError) or (
        isinstance(exc, KafkaConnectionError) and connection.security_protocol.endswith("SSL")
    ):
        # A TLS client talking to a plain listener (or the other way round) sees the connection cut.
        return (
            f"the connection was closed during the handshake ({exc!r}); is the listener {connection.security_protocol}?",
            False,
        )
    if isinstance(exc, OSError):
        return exc.strerror or repr(exc), False
    return repr(exc), False


def source_error(what: str, exc: KafkaError) -> SourceError:
    """A Kafka error as a SourceError, retriable as aiokafka says (``KafkaError.retriable``; a
    connection error is)."""
    return SourceError(f"{what}: {exc}", retriable=bool(getattr(exc, "retriable", True)))
