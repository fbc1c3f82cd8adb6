"""aiobotocore clients for an ``aws`` connection (SPEC section 4).

``endpoint_urls[service]`` wins over ``endpoint_url``; with neither, botocore itself applies the
standard ``AWS_ENDPOINT_URL_<SERVICE>`` and ``AWS_ENDPOINT_URL`` variables and the normal
credential chain, as every AWS SDK does.
"""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from poller.config import AwsConnection

# Our own backoff handles outages; botocore's standard mode still retries throttling briefly.
_CLIENT_CONFIG = AioConfig(
    retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=65
)


def region_of(connection: AwsConnection) -> str:
    return (
        connection.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )


def client_options(connection: AwsConnection, service: str) -> dict[str, Any]:
    """Keyword arguments for ``session.create_client(service, ...)``."""
    options: dict[str, Any] = {"region_name": region_of(connection), "config": _CLIENT_CONFIG}
    endpoint = connection.endpoint_urls.get(service) or connection.endpoint_url
    if endpoint:
        options["endpoint_url"] = endpoint
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
