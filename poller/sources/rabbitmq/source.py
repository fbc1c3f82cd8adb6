"""RabbitMQ source (aio-pika): consume queues, ack after success, retry through delay queues.

One connection and one channel per mapping consume every queue of the mapping, classic or quorum.
The prefetch (``2 x batch_size x maximum_concurrency``, at most 65535, split over the queues)
bounds what the poller holds, whatever the backlog; batches run concurrently on
``maximum_concurrency`` lanes. A delivery stays unacked only while it is being processed: it is
acked once its batch succeeded, once its failure record was confirmed by the on-failure
destination, or once its retry copy was confirmed by a delay queue (:mod:`rabbitmq_retry`).

Reconnection is the source's own: when the connection or channel is lost, :meth:`poll` raises a
retriable SourceError (so ``/readyz`` shows it and the runner backs off) and the next :meth:`poll`
connects again. Deliveries of the old channel can no longer be acked and the broker redelivers
them, so records of an old channel are never acked or re-published: they are simply forgotten
when they complete (at least once: a handler may see them again). A plain aio-pika connection is
used rather than a robust one because the robust one restores consumers through ``IncomingMessage``,
which loses which properties were unset (the event must show them as ``null``), and reconnects
out of sight of ``/readyz``.

The event is built in :mod:`poller.sources.rabbitmq.event`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import aiormq
from aio_pika.abc import AbstractConnection
from aiormq.abc import AbstractChannel, DeliveredMessage
from pamqp.commands import Basic

from poller.config import Mapping, RabbitMQConnection, ScalingConfig
from poller.config import RabbitMQSource as RabbitMQSourceConfig
from poller.connections.account import default_region
from poller.connections.rabbitmq import (
    AMQP_ERRORS,
    OPERATION_TIMEOUT,
    close_quietly,
    connect,
    connection_name,
    virtual_host,
)
from poller.engine.records import Record
from poller.errors import SourceError
from poller.sources.protocol import LagMetric, LaneListener
from poller.sources.rabbitmq.delay_queues import (
    PROPERTIES_HEADER,
    RETRY_TIERS_MS,
    read_retry_headers,
    retry_copy_properties,
    retry_queue_arguments,
    retry_queue_name,
    retry_tier,
)
from poller.sources.rabbitmq.event import (
    MessageProperties,
    RabbitMQEventFormat,
    broker_arn,
    message_record,
)
from poller.sources.rabbitmq.flow import AckTracker, LaneAssigner
from poller.tasks import BackgroundTasks

log = logging.getLogger(__name__)

MAX_PREFETCH = 65535  # basic.qos prefetch-count is an unsigned short
POLL_WAIT = 0.5
BACKLOG_REFRESH = 10.0  # seconds between queue depth reads for lag()


@dataclass(slots=True, eq=False)
class _Delivery:
    """What the source keeps about a record until it is settled."""

    channel: AbstractChannel
    tag: int
    lane: int
    queue: str
    properties: MessageProperties
    attempts: int
    first_seen_ms: int


class RetryNotTakenError(Exception):
    """The broker did not take a retry copy (returned as unroutable, or nacked)."""


class RabbitMQSource:
    """Consumes a mapping's queues; see the module docstring for the guarantees."""

    ordered: ClassVar[bool] = False
    lag_metric: ClassVar[LagMetric] = LagMetric(
        "poller_queue_backlog_messages", "Messages waiting in the queue (approximate)."
    )

    def __init__(self, name: str, mapping: Mapping, connection: Any) -> None:
        assert isinstance(connection, RabbitMQConnection)
        assert isinstance(mapping.source, RabbitMQSourceConfig)
        self.name = name
        self.mapping = mapping
        self.connection = connection
        self.url = connection_name(connection.url)  # the password masked: for logs, errors and the ARN
        self.queues = list(dict.fromkeys(mapping.source.queues))
        self.reads = ",".join(self.queues)
        self.consumer_group = None
        self.vhost = virtual_host(self.url)
        self.format = RabbitMQEventFormat(broker_arn(self.url, default_region()), self.vhost)
        concurrency = (mapping.scaling_config or ScalingConfig()).maximum_concurrency
        batch_size = mapping.effective_batch_size
        # Two batches per lane: the next one arrives while the current one runs.
        self.prefetch = min(MAX_PREFETCH, 2 * batch_size * concurrency)
        self._lane_names = [f"slot-{i}" for i in range(concurrency)]
        self._lanes = LaneAssigner(concurrency, batch_size, mapping.effective_batching_window)
        self.connections = 0  # connections made so far
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._acks = AckTracker()
        self._consumers: dict[str, str] = {}  # consumer tag -> queue
        self._cancelled: set[str] = set()
        self._inbox: deque[tuple[str, DeliveredMessage]] = deque()
        self._arrived = asyncio.Event()
        self._deliveries: dict[Record, _Delivery] = {}
        self._backlog: dict[str, int] = {}
        self._backlog_due = 0.0
        self._ack_lock = asyncio.Lock()  # ack frames leave in the order AckTracker computed them
        # aiormq matches a returned (unroutable) message to its publish by message id, so two
        # copies with one id must never be in flight at once on the channel.
        self._publish_lock = asyncio.Lock()

    @property
    def unacked(self) -> int:
        """Deliveries of the current channel not settled with the broker yet."""
        return len(self._acks)

    def lag(self) -> dict[str, int]:
        """Lagging: messages ready in each queue (not counting those delivered and unacked), as
        the broker reported them at most about ten seconds ago."""
        return dict(self._backlog)

    # --- Source ----------------------------------------------------------------------------------

    async def start(self, listener: LaneListener, tasks: BackgroundTasks) -> None:
        await self._connect(at_start=True)

    async def poll(self) -> list[Record]:
        channel = self._channel
        if channel is None or channel.is_closed or self._cancelled:
            await self._disconnect()
            channel = await self._connect(at_start=False)
        if not self._inbox:
            self._arrived.clear()
            arrived = asyncio.ensure_future(self._arrived.wait())
            closing = channel.closing
            try:
                await asyncio.wait([arrived, closing], timeout=POLL_WAIT, return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrived.cancel()
                closing.cancel()
        if time.monotonic() >= self._backlog_due and not channel.is_closed:
            await self._read_backlog(channel)
        if channel.is_closed or self._cancelled:
            reason = (
                f"the broker cancelled the consumer of {', '.join(sorted(self._cancelled))}"
                if self._cancelled
                else "the channel closed"
            )
            # What this channel delivered and no handler saw yet is dropped, not processed twice:
            # the broker redelivers it.
            await self._disconnect()
            raise SourceError(f"RabbitMQ connection lost ({reason}); reconnecting")
        records: list[Record] = []
        now = time.time()
        while self._inbox:
            queue, message = self._inbox.popleft()
            if message.channel is channel:
                records.append(self._to_record(queue, message, now))
        return records

    async def commit(self, records: Sequence[Record]) -> None:
        """Ack these records (those of an earlier channel are left to the broker to redeliver)."""
        await self._ack([delivery for _, delivery in self._settle(records)])

    async def release(self, records: Sequence[Record], delay: float) -> None:
        """Publish each record's retry copy to its delay queue, then ack the original.

        A copy the broker returns as unroutable is published again once after re-declaring its
        delay queue. If the broker still does not take it, the delivery is held for the delay
        (at most 32 s, far below any consumer timeout), then returned to its queue with a nack,
        and SourceError is raised: that retry does not raise the attempt count.
        """
        settled = self._settle(records)
        if not settled:
            return
        channel = settled[0][1].channel
        tier, ttl = retry_tier(delay)
        taken: list[_Delivery] = []
        failed: list[tuple[_Delivery, BaseException]] = []
        async with self._publish_lock:
            for chunk in _distinct_message_ids(settled):
                results = await asyncio.gather(
                    *(
                        self._publish_retry(channel, record, delivery, tier, ttl)
                        for record, delivery in chunk
                    ),
                    return_exceptions=True,
                )
                for (_, delivery), result in zip(chunk, results, strict=True):
                    if isinstance(result, BaseException):
                        failed.append((delivery, result))
                    else:
                        taken.append(delivery)
        await self._ack(taken)
        if not failed or channel.is_closed:
            return  # a closed channel's deliveries are redelivered by the broker
        # Held for the delay rather than returned at once, so that a broken delay queue does not
        # turn into a hot loop of redeliveries.
        await asyncio.sleep(min(delay, RETRY_TIERS_MS[-1] / 1000))
        await self._nack([delivery for delivery, _ in failed])
        raise SourceError(
            f"RabbitMQ did not take {len(failed)} retry copies ({failed[0][1]!r}); "
            "returned them to their queue instead"
        )

    async def close(self) -> None:
        await self._disconnect()

    # --- connection ------------------------------------------------------------------------------

    async def _connect(self, *, at_start: bool) -> AbstractChannel:
        """Connect, check the queues, declare the delay queues, consume. At start, a missing queue
        or a conflicting delay queue is fatal; later they are retried."""
        connection = await connect(self.connection, f"poller {self.name}", refusal_is_fatal=at_start)
        try:
            channel = await (await connection.channel(publisher_confirms=True)).get_underlay_channel()
            for queue in self.queues:
                try:
                    declared = await channel.queue_declare(queue, passive=True, timeout=OPERATION_TIMEOUT)
                except aiormq.exceptions.ChannelNotFoundEntity as exc:
                    raise SourceError(
                        f"unknown RabbitMQ queue {queue!r} in virtual host {self.vhost!r}",
                        retriable=not at_start,
                    ) from exc
                self._backlog[queue] = declared.message_count or 0
            self._backlog_due = time.monotonic() + BACKLOG_REFRESH
            for queue in self.queues:
                for tier in RETRY_TIERS_MS:
                    await self._declare_retry_queue(channel, queue, tier, at_start=at_start)
            # Per consumer: quorum queues do not support a channel-wide (global) prefetch.
            per_consumer = math.ceil(self.prefetch / len(self.queues))
            await channel.basic_qos(prefetch_count=per_consumer, timeout=OPERATION_TIMEOUT)
            channel.on_consumer_cancel_callbacks.add(self._on_cancel)
            self._connection, self._channel = connection, channel
            self._acks = AckTracker()
            self._inbox.clear()
            self._cancelled.clear()
            self._consumers.clear()
            self.connections += 1
            for queue in self.queues:
                tag = f"poller/{self.name}/{queue}/{self.connections}"
                self._consumers[tag] = queue
                await channel.basic_consume(
                    queue, partial(self._on_delivery, queue), consumer_tag=tag, timeout=OPERATION_TIMEOUT
                )
        except SourceError:
            await self._disconnect(connection)
            raise
        except AMQP_ERRORS as exc:
            await self._disconnect(connection)
            raise SourceError(f"cannot consume from RabbitMQ at {self.url}: {exc!r}") from exc
        log.info(
            "mapping %s: consuming %s from %s (prefetch %d, connection %d)",
            self.name,
            ",".join(self.queues),
            self.url,
            self.prefetch,
            self.connections,
        )
        return channel

    async def _declare_retry_queue(
        self, channel: AbstractChannel, queue: str, tier: int, *, at_start: bool = False
    ) -> None:
        name = retry_queue_name(self.name, queue, tier)
        arguments = retry_queue_arguments(queue)
        try:
            await channel.queue_declare(name, durable=True, arguments=arguments, timeout=OPERATION_TIMEOUT)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise SourceError(
                f"the retry queue {name!r} exists with other arguments than {arguments}; "
                f"delete it so that poller can declare it ({exc})",
                retriable=not at_start,
            ) from exc
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise SourceError(
                f"no permission to declare the retry queue {name!r} ({exc})", retriable=not at_start
            ) from exc

    async def _read_backlog(self, channel: AbstractChannel) -> None:
        self._backlog_due = time.monotonic() + BACKLOG_REFRESH
        try:
            for queue in self.queues:
                declared = await channel.queue_declare(queue, passive=True, timeout=OPERATION_TIMEOUT)
                self._backlog[queue] = declared.message_count or 0
        except AMQP_ERRORS as exc:
            # A deleted queue closes the channel: poll() reports that as a lost connection.
            log.debug("mapping %s: cannot read the queue depths: %r", self.name, exc)

    async def _disconnect(self, connection: AbstractConnection | None = None) -> None:
        """Close ``connection`` (default: the current one) and forget the current one if it was it."""
        connection = connection or self._connection
        if connection is self._connection:
            self._connection = self._channel = None
            self._inbox.clear()
        if connection is not None:
            await close_quietly(connection)

    async def _on_delivery(self, queue: str, message: DeliveredMessage) -> None:
        self._inbox.append((queue, message))
        self._arrived.set()

    def _on_cancel(self, frame: Basic.Cancel) -> None:
        # The broker cancels a consumer whose queue was deleted (or whose quorum queue lost its
        # leader for good); poll() then reconnects, which checks the queue again.
        queue = self._consumers.get(frame.consumer_tag or "")
        if queue is not None:
            log.warning("mapping %s: the broker cancelled the consumer of queue %s", self.name, queue)
            self._cancelled.add(queue)
            self._arrived.set()

    # --- records ---------------------------------------------------------------------------------

    def _to_record(self, queue: str, message: DeliveredMessage, now: float) -> Record:
        delivery = message.delivery
        assert isinstance(delivery, Basic.Deliver)
        assert delivery.delivery_tag is not None
        wire = message.header.properties
        retried = None
        try:
            retried = read_retry_headers(wire.headers or {})
        except ValueError as exc:
            log.warning(
                "mapping %s: ignoring malformed retry headers (%s): %s", self.name, PROPERTIES_HEADER, exc
            )
        if retried is None:
            properties, attempts, first_seen_ms = MessageProperties.from_wire(wire), 0, int(now * 1000)
        else:
            properties, attempts, first_seen_ms = retried
        properties = properties.with_message_id()
        lane = self._lanes.assign(time.monotonic())
        record = message_record(
            queue=queue,
            vhost=self.vhost,
            lane=self._lane_names[lane],
            delivery_tag=delivery.delivery_tag,
            properties=properties,
            body=message.body,
            # A retry copy is a new message to the broker; to the handler it is a redelivery.
            redelivered=bool(delivery.redelivered) or attempts > 0,
            attempts=attempts,
            first_seen=first_seen_ms / 1000,
        )
        self._acks.delivered(delivery.delivery_tag)
        self._deliveries[record] = _Delivery(
            message.channel, delivery.delivery_tag, lane, queue, properties, attempts, first_seen_ms
        )
        return record

    def _settle(self, records: Sequence[Record]) -> list[tuple[Record, _Delivery]]:
        """Forget these records; return those whose deliveries can still be settled with the
        broker (those of the current, open channel)."""
        current: list[tuple[Record, _Delivery]] = []
        for record in records:
            delivery = self._deliveries.pop(record, None)
            if delivery is None:
                continue
            self._lanes.settled(delivery.lane)
            if delivery.channel is self._channel and not delivery.channel.is_closed:
                current.append((record, delivery))
        return current

    async def _ack(self, deliveries: Sequence[_Delivery], *, nacked: Sequence[_Delivery] = ()) -> None:
        """Ack ``deliveries`` (and return ``nacked`` to their queue) on their channel."""
        if not deliveries and not nacked:
            return
        channel = (deliveries or nacked)[0].channel
        async with self._ack_lock:
            if channel is not self._channel or channel.is_closed:
                return  # the broker redelivers them
            # aiormq queues frames for its writer in a queue of ten: once the connection is gone
            # and its writer with it, a frame waits for room for ever, and with it this lock and
            # every later ack, those of the next connection too. So the acks race the channel's
            # closing; if it closes first, they are dropped and the broker redelivers them.
            sending = asyncio.ensure_future(self._send_acks(channel, deliveries, nacked))
            closing = channel.closing
            try:
                await asyncio.wait([sending, closing], return_when=asyncio.FIRST_COMPLETED)
            finally:
                closing.cancel()
                if not sending.done():
                    sending.cancel()
                    await asyncio.wait([sending])  # it ends at the frame it waits to queue
            if not sending.cancelled():
                sending.result()  # a SourceError of the broker's refusal

    async def _send_acks(
        self, channel: AbstractChannel, deliveries: Sequence[_Delivery], nacked: Sequence[_Delivery]
    ) -> None:
        try:
            # wait=False: acks need no reply; a lost one only means a redelivery.
            for delivery in nacked:
                await channel.basic_nack(delivery.tag, requeue=True, wait=False)
            frames = self._acks.settle((d.tag for d in nacked), sent=True)
            frames += self._acks.settle(d.tag for d in deliveries)
            for tag, multiple in frames:
                await channel.basic_ack(tag, multiple=multiple, wait=False)
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # closed meanwhile: the broker redelivers them
        except AMQP_ERRORS as exc:
            raise SourceError(f"RabbitMQ ack failed: {exc!r}") from exc

    async def _nack(self, deliveries: Sequence[_Delivery]) -> None:
        await self._ack((), nacked=deliveries)

    async def _publish_retry(
        self, channel: AbstractChannel, record: Record, delivery: _Delivery, tier: int, ttl: int
    ) -> None:
        """Publish one retry copy and wait for the broker's confirm; raise if it was not taken."""
        properties = retry_copy_properties(
            delivery.properties,
            attempts=delivery.attempts + 1,
            first_seen_ms=delivery.first_seen_ms,
            ttl_ms=ttl,
        )
        # The payload holds the body (base64); keeping the raw bytes as well would double memory.
        body = base64.b64decode(record.payload["data"])
        queue = retry_queue_name(self.name, delivery.queue, tier)
        for attempt in range(2):
            result = await channel.basic_publish(
                body,
                exchange="",
                routing_key=queue,
                properties=properties,
                mandatory=True,
                timeout=OPERATION_TIMEOUT,
            )
            if isinstance(result, Basic.Ack):
                return
            if isinstance(result, DeliveredMessage) and attempt == 0:
                # Returned as unroutable: someone deleted the delay queue. Declare it, try again.
                log.warning("mapping %s: retry queue %s is missing; declaring it again", self.name, queue)
                await self._declare_retry_queue(channel, delivery.queue, tier)
                continue
            raise RetryNotTakenError(f"{queue}: the broker answered {type(result).__name__}")


def _distinct_message_ids(
    items: Iterable[tuple[Record, _Delivery]],
) -> Iterable[list[tuple[Record, _Delivery]]]:
    """Split into chunks whose message ids are distinct (see ``_publish_lock``)."""
    pending = list(items)
    while pending:
        seen: set[str | None] = set()
        chunk: list[tuple[Record, _Delivery]] = []
        rest: list[tuple[Record, _Delivery]] = []
        for item in pending:
            message_id = item[1].properties.message_id
            (rest if message_id in seen else chunk).append(item)
            seen.add(message_id)
        yield chunk
        pending = rest
