"""What the SQS, SNS and S3 destinations share: a lazily opened client, and fitting a failure record
into a message of limited size (overflowing it to S3, or leaving the records out).

A failure record holds the failed records themselves (SPEC section 7), so it can pass the 256 KB that
SNS accepts, or a queue's ``MaximumMessageSize``. Then, as AWS leaves the payload out of such
messages (https://docs.aws.amazon.com/lambda/latest/dg/kinesis-on-failure-destination.html), the
message carries the record without ``records`` and says so in ``recordsOmitted``; with an overflow
bucket, the whole record is stored in S3 first and ``recordsLocation`` names the object. A single
message (an invocation record, a dead-lettered event) that does not fit goes to the overflow
bucket the same way (``bodyLocation``), or is refused as MessageTooLarge.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from poller.config import AwsConnection
from poller.connections.aws import close_quietly, create_client
from poller.destinations.message import Message, MessageTooLarge

log = logging.getLogger(__name__)

MAX_ERROR_MESSAGE = 1024


class LazyClient:
    """An aiobotocore client opened on first use (a destination may never be used) and closed by
    :meth:`close`. Opening raises botocore's errors, which the destination maps."""

    def __init__(self, connection: AwsConnection, service: str) -> None:
        self.connection = connection
        self.service = service
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    async def get(self) -> Any:
        if self._client is None:
            stack = contextlib.AsyncExitStack()
            self._client = await stack.enter_async_context(create_client(self.connection, self.service))
            self._stack = stack
        return self._client

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        await close_quietly(stack, f"an {self.service} client")


def encode(document: dict[str, Any]) -> bytes:
    """The document as JSON that SQS and SNS accept: orjson escapes control characters, and the two
    noncharacters U+FFFE and U+FFFF, which SQS refuses, are escaped here (they only occur inside
    JSON strings, so the JSON means the same)."""
    return _escape_noncharacters(orjson.dumps(document))


def _escape_noncharacters(data: bytes) -> bytes:
    if b"\xef\xbf\xbe" in data or b"\xef\xbf\xbf" in data:
        data = data.replace(b"\xef\xbf\xbe", b"\\ufffe").replace(b"\xef\xbf\xbf", b"\\uffff")
    return data


def message_attributes(failure: dict[str, Any]) -> dict[str, dict[str, str]]:
    """SQS/SNS message attributes naming the mapping, the condition and the error type, so that
    consumers and SNS subscription filters need not parse the body."""
    values = {
        "poller-mapping": failure.get("mapping"),
        "poller-condition": (failure.get("requestContext") or {}).get("condition"),
        "poller-error-type": (failure.get("errorInfo") or {}).get("errorType"),
    }
    # Attribute values may not be empty.
    return {
        name: {"DataType": "String", "StringValue": str(value)} for name, value in values.items() if value
    }


def typed_attributes(attributes: Mapping[str, str | int]) -> dict[str, dict[str, str]]:
    """A message's attributes as SQS/SNS message attributes: an ``int`` a Number, the rest Strings
    (an empty value, which they refuse, is left out)."""
    typed = {}
    for name, value in attributes.items():
        if isinstance(value, int):
            typed[name] = {"DataType": "Number", "StringValue": str(value)}
        elif value:
            typed[name] = {"DataType": "String", "StringValue": value}
    return typed


async def fit_body(
    message: Message,
    *,
    limit: int,
    where: str,
    overflow: Callable[[Message], Awaitable[tuple[str, str]]] | None,
    reserved: int,
) -> str:
    """A message's body as the text of an SQS/SNS message that, with ``reserved`` bytes of
    attributes, stays within ``limit``: whole, or (too large, with an overflow bucket) a small
    document naming the S3 object that holds it. Raises MessageTooLarge without a bucket."""
    body = _escape_noncharacters(message.body)  # JSON: they occur only inside its strings
    if len(body) + reserved <= limit:
        return body.decode()
    if overflow is None:
        raise MessageTooLarge(
            f"a message of {len(body) + reserved} bytes is more than the {limit} bytes {where} accepts"
        )
    bucket, key = await overflow(message)
    return encode(
        {
            "bodyOmitted": f"the message is {len(body) + reserved} bytes, more than the {limit} bytes {where} "
            "accepts; it is stored whole in S3 at bodyLocation",
            "bodyLocation": {"bucket": bucket, "key": key},
        }
    ).decode()


def attributes_size(attributes: dict[str, dict[str, str]]) -> int:
    """What message attributes count toward SQS's and SNS's message size limit."""
    return sum(
        len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
        for name, value in attributes.items()
    )


async def fit_message(
    failure: dict[str, Any],
    *,
    limit: int,
    where: str,
    overflow: Callable[[dict[str, Any]], Awaitable[tuple[str, str]]] | None,
    reserved: int = 0,
) -> str:
    """The failure record as a message body that, with ``reserved`` bytes of message attributes,
    stays within the ``limit`` bytes that ``where`` accepts.

    When the whole record does not fit, ``overflow`` (if given) stores it and returns its (bucket,
    key), and the body says where it is; otherwise the body leaves the records out and says why.
    Errors of ``overflow`` propagate (a DestinationError: the send is retried as a whole)."""
    room = limit - reserved
    body = encode(failure)
    if len(body) <= room:
        return body.decode()
    size = len(body) + reserved
    slim: dict[str, Any] = {**failure, "records": []}
    if overflow is not None:
        bucket, key = await overflow(failure)
        slim["recordsOmitted"] = (
            f"the failure record is {size} bytes, more than the {limit} bytes {where} accepts; "
            "it is stored whole in S3 at recordsLocation"
        )
        slim["recordsLocation"] = {"bucket": bucket, "key": key}
    else:
        slim["recordsOmitted"] = (
            f"the failure record is {size} bytes, more than the {limit} bytes {where} accepts"
        )
    body = encode(slim)
    if len(body) > room:
        body = encode(_shrink(slim, room))
    return body.decode()


def _shrink(document: dict[str, Any], limit: int) -> dict[str, Any]:
    """Without its records a failure record is small, unless its error or its source description
    is huge (a long message, thousands of message ids): cut those, keeping what identifies it."""
    error = dict(document.get("errorInfo") or {})
    error["stackTrace"] = []
    error["errorMessage"] = str(error.get("errorMessage", ""))[:MAX_ERROR_MESSAGE]
    shrunk = {**document, "errorInfo": error}
    if len(encode(shrunk)) <= limit:
        return shrunk
    source = {
        key: value
        for key, value in (document.get("source") or {}).items()
        if not isinstance(value, list | dict)
    }
    source["truncated"] = True
    return {**shrunk, "source": source}
