"""aiobotocore clients for an ``aws`` connection (SPEC section 4), and what their errors mean.

``endpoint_urls[service]`` wins over ``endpoint_url``; with neither, botocore itself applies the
standard ``AWS_ENDPOINT_URL_<SERVICE>`` and ``AWS_ENDPOINT_URL`` variables and the normal
credential chain, as every AWS SDK does.

Every source, lease store and destination that calls AWS catches :data:`AWS_ERRORS` and turns them
into poller's own errors with :func:`source_error`: a network error or a throttle is retriable
everywhere; refused credentials (and what a caller names, such as a missing queue) are not.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from aiohttp import ClientError as HttpClientError
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, SSLError

from poller.config import AwsConnection
from poller.connections.account import default_region
from poller.errors import SourceError

# Every exception an aiobotocore call may raise for a failed request: the service's answer
# (ClientError), botocore's own (connection, credentials, parsing) and aiohttp's transport errors
# that aiobotocore lets through (a server that closed the connection, a cut-off payload).
AWS_ERRORS = (ClientError, BotoCoreError, HttpClientError)

# Error codes that waiting does not cure, whatever the service.
REFUSED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
    }
)

log = logging.getLogger(__name__)

# Our own backoff handles outages; botocore's standard mode still retries throttling briefly.
_CLIENT_CONFIG = AioConfig(
    retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=65
)


def region_of(connection: AwsConnection) -> str:
    return connection.region or default_region()


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError (``ResourceNotFoundException``), else the exception's
    type name."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return type(exc).__name__


def error_text(exc: BaseException) -> str:
    """An AWS error in one line: its code and message for a ClientError."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")
    return str(exc) or type(exc).__name__


def is_refusal(exc: BaseException, fatal_codes: frozenset[str] = frozenset()) -> bool:
    """Whether waiting cannot cure ``exc``: no credentials, refused ones, a certificate that
    ``verify`` does not accept, or one of ``fatal_codes``."""
    return isinstance(exc, NoCredentialsError | SSLError) or error_code(exc) in REFUSED_CODES | fatal_codes


def source_error(what: str, exc: BaseException, *, fatal_codes: frozenset[str] | None = None) -> SourceError:
    """``exc``, raised by ``what``, as a SourceError. With ``fatal_codes`` (at start: a missing
    resource, refused credentials) those codes and refusals are not retriable; without, everything
    is (at run time a refusal may be repaired meanwhile, and the caller backs off)."""
    fatal = fatal_codes is not None and is_refusal(exc, fatal_codes)
    return SourceError(f"{what}: {error_text(exc)}", retriable=not fatal)


def client_options(connection: AwsConnection, service: str) -> dict[str, Any]:
    """Keyword arguments for ``session.create_client(service, ...)``: region, endpoint, TLS
    verification (``verify``: False or a CA bundle) and the connection's own credentials, if it
    names any (otherwise botocore's standard chain finds them)."""
    options: dict[str, Any] = {"region_name": region_of(connection), "config": _CLIENT_CONFIG}
    endpoint = connection.endpoint_urls.get(service) or connection.endpoint_url
    if endpoint:
        options["endpoint_url"] = endpoint
    if connection.verify is not True:
        options["verify"] = connection.verify
    if connection.access_key_id is not None and connection.secret_access_key is not None:
        options["aws_access_key_id"] = connection.access_key_id
        options["aws_secret_access_key"] = connection.secret_access_key.reveal()
        if connection.session_token is not None:
            options["aws_session_token"] = connection.session_token.reveal()
    return options


def create_client(
    connection: AwsConnection, service: str, *, wire_values: bool = False
) -> AbstractAsyncContextManager[Any]:
    """An aiobotocore client for one service, to be used as ``async with`` (it owns a connection pool).

    ``wire_values``: responses keep blobs as the base64 text and timestamps as the epoch numbers
    that a JSON protocol sends, instead of bytes and timezone-aware datetimes. The Kinesis event
    wants exactly those, and botocore's decoding (base64, then a dateutil ``tzlocal`` datetime
    per record) was a third of the Kinesis source's CPU (docs/benchmarks.md)."""
    session = get_session()
    if wire_values:
        # A documented botocore hook, per session: each client has a session of its own.
        session.get_component("response_parser_factory").set_parser_defaults(
            blob_parser=_unchanged, timestamp_parser=_unchanged
        )
    return session.create_client(service, **client_options(connection, service))  # type: ignore[no-any-return]


def _unchanged(value: Any) -> Any:
    return value


async def close_quietly(stack: AsyncExitStack | None, what: str) -> None:
    """Close the clients a stack holds (their connection pools). Never raises: a client that
    cannot close cleanly is gone anyway."""
    if stack is None:
        return
    try:
        await stack.aclose()
    except Exception as exc:
        log.debug("error while closing %s: %s", what, exc)
