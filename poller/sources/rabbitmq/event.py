"""The Amazon MQ for RabbitMQ event, and the message properties it is built from.

The event is AWS's (https://docs.aws.amazon.com/lambda/latest/dg/with-mq.html):
``rmqMessagesByQueue`` keyed ``"<queue>::<virtual host>"``, each message with ``basicProperties``,
``redelivered`` and the base64 body as ``data``. AWS serialises the RabbitMQ Java client's objects
with Gson, and that is what the header values show: an AMQP string is ``{"bytes": [...]}`` (Java
signed bytes), a byte array a plain list of them, a timestamp the Java default date format
(``"Jun 10, 2024, 6:13:20 AM"``, UTC as on Lambda), numbers and booleans as they are. Unset
properties are ``null``.

:class:`MessageProperties` holds a message's properties exactly as they came off the wire, and
round-trips them through a JSON snapshot without loss, so that a message retried through a delay
queue shows the handler the same ``basicProperties`` on every attempt (see ``rabbitmq.py``).
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pybase64
from pamqp.commands import Basic
from yarl import URL

from poller.connections.account import ACCOUNT_ID
from poller.engine.filters import RABBITMQ_FILTER_FIELD
from poller.engine.records import Record, json_copy, new_record
from poller.sources.protocol import OriginalMessage

DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_BROKER_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def broker_arn(url: str, region: str) -> str:
    """An Amazon MQ broker ARN for a broker that has none: ``arn:aws:mq:<region>:000000000000:
    broker:<host>:b-<uuid>``, the uuid derived from scheme, host and port, so it is stable."""
    parsed = URL(url)
    host = parsed.host or "localhost"
    port = parsed.port or DEFAULT_PORTS.get(parsed.scheme, 5672)
    # Amazon MQ broker names allow letters, digits, '-' and '_' (1-50 characters).
    name = _BROKER_NAME.sub("-", host).strip("-")[:50] or "broker"
    broker_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{parsed.scheme}://{host}:{port}")
    return f"arn:aws:mq:{region}:{ACCOUNT_ID}:broker:{name}:b-{broker_id}"


def queue_key(queue: str, vhost: str) -> str:
    """The ``rmqMessagesByQueue`` key of a queue: ``"orders::/"`` for queue orders on vhost /."""
    return f"{queue}::{vhost}"


def format_timestamp(moment: datetime) -> str:
    """An AMQP timestamp as AWS shows it: Java's default US date format, in UTC."""
    utc = moment.astimezone(UTC)
    hour = utc.hour % 12 or 12
    half = "AM" if utc.hour < 12 else "PM"
    return f"{_MONTHS[utc.month - 1]} {utc.day}, {utc.year}, {hour}:{utc.minute:02d}:{utc.second:02d} {half}"


def signed_bytes(data: bytes) -> list[int]:
    """Bytes as Java signed bytes (-128..127), as Gson writes a ``byte[]``."""
    return memoryview(data).cast("b").tolist() if data else []


@dataclass(frozen=True, slots=True)
class MessageProperties:
    """A message's AMQP basic properties, as decoded from the wire.

    Header values keep the types pamqp decodes: ``str``, ``bytes`` (a long string that is not
    UTF-8), ``bytearray`` (an AMQP byte array), ``int``, ``float``, ``bool``, ``Decimal``,
    ``datetime``, ``None``, ``list`` and ``dict``.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None

    @classmethod
    def from_wire(cls, properties: Basic.Properties) -> MessageProperties:
        return cls(
            content_type=properties.content_type,
            content_encoding=properties.content_encoding,
            headers=properties.headers,
            delivery_mode=properties.delivery_mode,
            priority=properties.priority,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            expiration=properties.expiration,
            message_id=properties.message_id,
            timestamp=properties.timestamp,
            type=properties.message_type,
            user_id=properties.user_id,
            app_id=properties.app_id,
            # pamqp decodes an absent cluster-id as "" (the property is deprecated, always empty).
            cluster_id=properties.cluster_id or None,
        )

    def with_message_id(self) -> MessageProperties:
        """These properties with a fresh unique ``message_id`` when the publisher set none: it is the
        partial-batch item identifier, and a retried copy carries it on."""
        return self if self.message_id else replace(self, message_id=str(uuid.uuid4()))

    def to_snapshot(self) -> str:
        """A JSON text from which :meth:`from_snapshot` rebuilds these properties exactly."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if item.name == "headers":
                value = {name: _pack(entry) for name, entry in value.items()}
            elif item.name == "timestamp":
                value = value.timestamp()
            data[item.name] = value
        return orjson.dumps(data).decode()

    @classmethod
    def from_snapshot(cls, text: str | bytes) -> MessageProperties:
        """Raises ValueError when ``text`` is not a snapshot written by :meth:`to_snapshot`."""
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        names = {item.name for item in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown properties {sorted(unknown)}")
        if "headers" in data:
            if not isinstance(data["headers"], dict):
                raise ValueError("headers is not an object")
            data["headers"] = {name: _unpack(entry) for name, entry in data["headers"].items()}
        if "timestamp" in data:
            if not isinstance(data["timestamp"], int | float):
                raise ValueError("timestamp is not a number")
            try:
                data["timestamp"] = datetime.fromtimestamp(data["timestamp"], UTC)
            except (OverflowError, OSError) as exc:  # past what the platform's time_t holds (fuzzing)
                raise ValueError(f"timestamp out of range: {exc}") from exc
        for name in ("delivery_mode", "priority"):
            if name in data and not isinstance(data[name], int):
                raise ValueError(f"{name} is not an integer")
        for name in names - {"headers", "timestamp", "delivery_mode", "priority"}:
            if name in data and not isinstance(data[name], str):
                raise ValueError(f"{name} is not a string")
        return cls(**data)

    def to_event(self, body_size: int) -> dict[str, Any]:
        """The ``basicProperties`` object of the AWS event, in AWS's key order."""
        headers = self.headers
        return {
            "contentType": self.content_type,
            "contentEncoding": self.content_encoding,
            "headers": None if headers is None else {name: _event_value(v) for name, v in headers.items()},
            "deliveryMode": self.delivery_mode,
            "priority": self.priority,
            "correlationId": self.correlation_id,
            "replyTo": self.reply_to,
            "expiration": self.expiration,
            "messageId": self.message_id,
            "timestamp": None if self.timestamp is None else format_timestamp(self.timestamp),
            "type": self.type,
            "userId": self.user_id,
            "appId": self.app_id,
            "clusterId": self.cluster_id,
            "bodySize": body_size,
        }


def _event_value(value: Any) -> Any:
    """One header value as Gson writes the Java client's decoded value."""
    if isinstance(value, str):
        return {"bytes": signed_bytes(value.encode())}
    if isinstance(value, bytes):  # a LongString that is not UTF-8
        return {"bytes": signed_bytes(value)}
    if isinstance(value, bytearray):  # an AMQP byte array: a Java byte[]
        return signed_bytes(bytes(value))
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, dict):
        return {name: _event_value(entry) for name, entry in value.items()}
    if isinstance(value, list):
        return [_event_value(entry) for entry in value]
    return value  # int, bool, float, None


# Snapshot encoding of header values: JSON scalars stand for themselves; every other type is a
# one-key object tagged with its AMQP field type, so that nothing is lost (a float stays a double
# where pamqp would re-encode it as a 32-bit float, and a non-UTF-8 string stays bytes).
def _pack(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return {"d": repr(value)}
    if isinstance(value, Decimal):
        return {"D": str(value)}
    if isinstance(value, datetime):
        return {"T": value.timestamp()}
    if isinstance(value, bytearray):
        return {"x": base64.b64encode(value).decode()}
    if isinstance(value, bytes):
        return {"S": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {"F": {name: _pack(entry) for name, entry in value.items()}}
    if isinstance(value, list):
        return [_pack(entry) for entry in value]
    raise ValueError(f"unsupported header value type {type(value).__name__}")


def _unpack(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, list):
        return [_unpack(entry) for entry in value]
    if isinstance(value, dict) and len(value) == 1:
        [(tag, inner)] = value.items()
        try:
            if tag == "d":
                return float(inner)
            if tag == "D":
                return Decimal(inner)
            if tag == "T":
                return datetime.fromtimestamp(inner, UTC)
            if tag == "x":
                return bytearray(base64.b64decode(inner, validate=True))
            if tag == "S":
                return base64.b64decode(inner, validate=True)
            if tag == "F" and isinstance(inner, dict):
                return {name: _unpack(entry) for name, entry in inner.items()}
        except (TypeError, ValueError, ArithmeticError, OSError) as exc:  # OSError: a time_t overflow
            raise ValueError(f"bad {tag!r} header value: {exc}") from exc
    raise ValueError(f"not a snapshot header value: {value!r}")


def message_record(
    *,
    queue: str,
    vhost: str,
    lane: str,
    delivery_tag: int,
    properties: MessageProperties,
    body: bytes,
    redelivered: bool,
    attempts: int,
    first_seen: float,
) -> Record:
    """A delivered message as a Record whose payload is the AWS event message.

    ``properties`` must carry a ``message_id`` (see :meth:`MessageProperties.with_message_id`):
    it is the record's partial-batch item key. ``attempts`` is the number of earlier failed
    attempts and ``first_seen`` when the poller first received the message (epoch seconds).
    """
    assert properties.message_id, "message_record needs a message id"
    payload = {
        "basicProperties": properties.to_event(len(body)),
        "redelivered": redelivered,
        "data": pybase64.b64encode_as_string(body),
    }
    key = queue_key(queue, vhost)
    return new_record(
        partition=key,
        lane=lane,
        position=delivery_tag,
        item_key=properties.message_id,
        payload=payload,
        size=len(orjson.dumps(payload)) + 1,  # and a comma
        timestamp=first_seen,
        receive_count=attempts,
        data=body,
    )


class RabbitMQEventFormat:
    """Builds the ``aws:rmq`` event; ``Record.partition`` is the ``"<queue>::<vhost>"`` key."""

    messaging_system = "rabbitmq"
    filter_field = RABBITMQ_FILTER_FIELD

    def __init__(self, event_source_arn: str, vhost: str) -> None:
        self.event_source_arn = event_source_arn
        self.vhost = vhost

    def event(self, records: Sequence[Record], *, own: bool = True) -> dict[str, Any]:
        by_queue: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            if not own:
                by_queue.setdefault(record.partition, []).append(record.payload)
                continue
            # New containers, so that the handler owns its event (EventFormat.event).
            entry = record.payload.copy()
            properties = entry["basicProperties"] = entry["basicProperties"].copy()
            properties["headers"] = json_copy(properties["headers"])
            by_queue.setdefault(record.partition, []).append(entry)
        return {
            "eventSource": "aws:rmq",
            "eventSourceArn": self.event_source_arn,
            "rmqMessagesByQueue": by_queue,
        }

    def describe(self, records: Sequence[Record]) -> dict[str, Any]:
        suffix = "::" + self.vhost
        queues = sorted({record.partition.removesuffix(suffix) for record in records})
        return {
            "type": "rabbitmq",
            "eventSourceArn": self.event_source_arn,
            "virtualHost": self.vhost,
            "queues": queues,
            "batchSize": len(records),
            "messageIds": [record.item_key for record in records],
        }

    def item_key(self, identifier: object) -> Hashable | None:
        # basicProperties.messageId, a non-empty string.
        return identifier if isinstance(identifier, str) and identifier else None

    def trace_parent(self, record: Record) -> str | None:
        """A ``traceparent`` AMQP header, as a string or as bytes (the event shows those as
        ``{"bytes": [...]}``)."""
        headers = record.payload["basicProperties"]["headers"]
        value = headers.get("traceparent") if headers else None
        if isinstance(value, dict) and isinstance(value.get("bytes"), list):
            value = bytes(b & 0xFF for b in value["bytes"]).decode(errors="replace")
        return value if isinstance(value, str) else None

    def original_message(self, record: Record) -> OriginalMessage | None:
        return None
