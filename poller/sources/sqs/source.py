"""SQS source (aiobotocore): Lambda's SQS trigger on the engine's lanes.

- Long-polling receivers (``wait_time_seconds``, 20 by default) run as background tasks of the
  source and feed :meth:`SqsSource.poll` through a buffer; their number follows the backlog, from
  one up to ``scaling_config.maximum_concurrency`` (a full receive adds one, an empty long poll
  retires one).
- A message is *in flight* from its receipt until it is deleted (:meth:`~SqsSource.commit`) or
  handed back (:meth:`~SqsSource.release`). Meanwhile a heartbeat keeps extending its visibility
  timeout (:mod:`poller.sources.sqs.in_flight`), so a handler slower than the queue's visibility
  timeout causes no second delivery, and a crash lets it reappear after one timeout. At most
  ``2 x maximum_concurrency x batch_size`` messages are in flight: that bounds memory and the
  heartbeat's work.
- ``release`` sets the visibility timeout to the backoff delay: the retry waits in SQS, and its
  count is ``ApproximateReceiveCount`` (``Record.receive_count``), which survives a restart.
- Which lane a message goes to, and when a FIFO lane gets its next batch, is decided by
  :mod:`poller.sources.sqs.lanes`.

Scaling: https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from poller.config import AwsConnection, Mapping
from poller.config import SqsSource as SqsSourceConfig
from poller.connections.aws import AWS_ERRORS, client_options, close_quietly, error_text, source_error
from poller.engine.backoff import Backoff
from poller.engine.records import Record
from poller.errors import SourceError
from poller.sources.protocol import LagMetric, LaneListener
from poller.sources.sqs.event import QueueInfo, SqsEventFormat, resolve_queue, to_record
from poller.sources.sqs.in_flight import CALL_CONCURRENCY, MAX_VISIBILITY_SECONDS, InFlight, InFlightMessage
from poller.sources.sqs.lanes import LaneAssignment
from poller.tasks import BackgroundTasks

log = logging.getLogger(__name__)

MAX_MESSAGES = 10  # ReceiveMessage returns at most 10
POLL_WAIT_SECONDS = 0.5
FIFO_MAX_BATCH_SIZE = 10
DEFAULT_MAXIMUM_CONCURRENCY = 10
RECEIVE_BACKOFF_FIRST, RECEIVE_BACKOFF_MAX = 1.0, 30.0
CLOSE_TIMEOUT = 5.0
BACKLOG_INTERVAL = 10.0  # seconds between reads of ApproximateNumberOfMessages, for lag()
# On close, how long long polls in progress may take to return: once cancelled, a poll keeps
# running inside SQS until its wait ends and takes messages that nobody will process.
CLOSE_GRACE = 2.0

# Errors that waiting does not cure at start (besides refused credentials): the service stops
# instead of retrying forever.
FATAL_AT_START = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "InvalidAddress",
        "InvalidParameterValue",
    }
)

ClientFactory = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


class SqsSource:
    """Receives one queue for one mapping; see the module docstring for the design.

    ``client_factory`` makes the SQS client (an async context manager); by default an aiobotocore
    client of the mapping's connection."""

    ordered: ClassVar[bool] = False
    lag_metric: ClassVar[LagMetric] = LagMetric(
        "poller_queue_backlog_messages", "Messages waiting in the queue (approximate)."
    )

    def __init__(
        self, name: str, mapping: Mapping, connection: Any, *, client_factory: ClientFactory | None = None
    ) -> None:
        assert isinstance(connection, AwsConnection)
        assert isinstance(mapping.source, SqsSourceConfig)
        self.name = name
        self.mapping = mapping
        self.config: SqsSourceConfig = mapping.source
        self.connection: AwsConnection = connection
        self.reads = self.config.queue
        self.consumer_group = None
        scaling = mapping.scaling_config
        self.maximum_concurrency = scaling.maximum_concurrency if scaling else DEFAULT_MAXIMUM_CONCURRENCY
        self.batch_size = mapping.effective_batch_size
        self.window = mapping.effective_batching_window
        self.max_in_flight = max(MAX_MESSAGES, 2 * self.maximum_concurrency * self.batch_size)
        # Concurrent ReceiveMessage calls at most (tests lower it: moto may hand a message to two
        # concurrent receives), and how long each long poll waits.
        self.max_receivers = self.maximum_concurrency
        self.wait_time_seconds = self.config.wait_time_seconds
        self.format = SqsEventFormat()
        self._client_factory = client_factory or self._create_client
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._queue: QueueInfo | None = None
        self._lanes: LaneAssignment | None = None
        self._in_flight = InFlight(name)
        self._tasks: BackgroundTasks | None = None
        self._receivers = 0
        self._closing = False
        self._polls: dict[object, float] = {}  # ReceiveMessage calls in progress -> when SQS ends them
        self._polls_ended = asyncio.Event()
        self._reserved = 0  # room promised to receive calls in progress
        self._room_changed = asyncio.Event()
        self._ready: list[Record] = []
        self._ready_changed = asyncio.Event()
        self._error: SourceError | None = None
        self._backlog: int | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, listener: LaneListener, tasks: BackgroundTasks) -> None:
        """Find the queue and start receiving. Raises SourceError: a missing queue, refused
        credentials and limits FIFO queues do not support are not retriable."""
        stack = contextlib.AsyncExitStack()
        try:
            try:
                client = await stack.enter_async_context(self._client_factory())
                queue = await resolve_queue(client, self.config.queue)
            except AWS_ERRORS as exc:
                raise source_error(
                    f"SQS lookup of queue {self.config.queue!r} failed", exc, fatal_codes=FATAL_AT_START
                ) from exc
            except ValueError as exc:
                raise SourceError(str(exc), retriable=False) from exc
            self._check_limits(queue)
        except BaseException:
            # Cancelled or failed: the client must not outlive this call.
            await close_quietly(stack, "an SQS client")
            raise
        self._stack, self._client, self._queue, self._tasks = stack, client, queue, tasks
        self._closing = False
        self.format.queue = queue
        self._in_flight.bind(client, queue.url, queue.visibility_timeout)
        self._lanes = LaneAssignment(
            queue.name, self.maximum_concurrency, self.batch_size, self.window, fifo=queue.fifo
        )
        tasks.spawn(self._in_flight.heartbeat(), "sqs heartbeat")
        tasks.spawn(self._watch_backlog(), "sqs backlog")
        self._add_receiver()
        log.info(
            "mapping %s: receiving %s (%s, visibility %d s, up to %d concurrent batches)",
            self.name,
            queue.url,
            "FIFO" if queue.fifo else "standard",
            self._in_flight.seconds,
            self.maximum_concurrency,
        )

    def _check_limits(self, queue: QueueInfo) -> None:
        """Refuse what a FIFO queue does not support (non-retriable SourceError), as AWS does."""
        if not queue.fifo:
            if self.batch_size > MAX_MESSAGES and self.window == 0:
                # AWS refuses this; here a batch holds what the lane gathered while it was busy.
                log.warning(
                    "mapping %s: batch_size %d without maximum_batching_window_in_seconds: batches "
                    "larger than %d form only under a backlog (AWS requires a window above 10)",
                    self.name,
                    self.batch_size,
                    MAX_MESSAGES,
                )
            return
        # As on AWS; and a FIFO lane receives one batch at a time, which a window could only delay.
        if self.batch_size > FIFO_MAX_BATCH_SIZE:
            raise SourceError(
                f"queue {queue.name}: batch_size {self.batch_size} is too large for a FIFO queue "
                f"(at most {FIFO_MAX_BATCH_SIZE})",
                retriable=False,
            )
        if self.window > 0:
            raise SourceError(
                f"queue {queue.name}: maximum_batching_window_in_seconds is not supported for FIFO queues",
                retriable=False,
            )

    def _create_client(self) -> contextlib.AbstractAsyncContextManager[Any]:
        options = client_options(self.connection, "sqs")
        # Each receiver holds a connection for its long poll; deletes and extensions need their own.
        options["config"] = options["config"].merge(
            AioConfig(max_pool_connections=self.maximum_concurrency + CALL_CONCURRENCY + 2)
        )
        return get_session().create_client("sqs", **options)  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Stop receiving and hand back every message still in flight, so that a restart or another
        replica gets it at once; then close the client. Never raises. The receivers, the heartbeat
        and the backlog reader are stopped by the owner of the source's tasks, after this.

        Long polls in progress get :data:`CLOSE_GRACE` seconds to return (on a busy queue they
        return at once). SQS cannot be told to end one that is still waiting: it may yet take a
        message, which then reappears after one visibility timeout; and what this source hands back
        is kept invisible until those polls have ended, so that they cannot take it."""
        self._closing = True
        self._room_changed.set()  # receivers waiting for room see that they are done
        if self._polls:
            self._polls_ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._polls_ended.wait(), CLOSE_GRACE)
        orphans_until = max(self._polls.values(), default=0.0)
        messages = self._in_flight.pop_all()
        if messages and self._client is not None:
            visibility = max(0, math.ceil(orphans_until - time.monotonic()))
            try:
                await asyncio.wait_for(self._in_flight.change_visibility(messages, visibility), CLOSE_TIMEOUT)
            except (SourceError, TimeoutError) as exc:
                log.warning(
                    "mapping %s: %d in-flight message(s) not handed back (%s); they reappear after "
                    "their visibility timeout",
                    self.name,
                    len(messages),
                    exc,
                )
        if self._stack is not None:
            await close_quietly(self._stack, "an SQS client")
        self._stack = self._client = self._tasks = None
        self._receivers = self._reserved = 0
        self._polls.clear()
        self._error = None
        self._ready.clear()
        if self._lanes is not None:
            self._lanes.clear()

    @property
    def receivers(self) -> int:
        """ReceiveMessage loops running now (they follow the backlog)."""
        return self._receivers

    @property
    def in_flight(self) -> int:
        """Messages received and neither deleted nor handed back yet."""
        return len(self._in_flight)

    def lag(self) -> dict[str, int]:
        """Lagging: the messages waiting in the queue (ApproximateNumberOfMessages, read every
        :data:`BACKLOG_INTERVAL` seconds); empty until the first read."""
        if self._queue is None or self._backlog is None:
            return {}
        return {self._queue.name: self._backlog}

    async def _watch_backlog(self) -> None:
        assert self._queue is not None
        while True:
            try:
                response = await self._client.get_queue_attributes(
                    QueueUrl=self._queue.url, AttributeNames=["ApproximateNumberOfMessages"]
                )
                self._backlog = int(response["Attributes"]["ApproximateNumberOfMessages"])
            except AWS_ERRORS as exc:
                # The receivers report an unreachable queue; the metric just keeps its last value.
                log.debug("mapping %s: cannot read the queue's backlog: %s", self.name, error_text(exc))
            await asyncio.sleep(BACKLOG_INTERVAL)

    # --- receiving -------------------------------------------------------------------------------

    async def poll(self) -> list[Record]:
        """Records received since the last call, waiting up to half a second for some. Raises the
        receivers' latest error once (they keep retrying on their own)."""
        if self._client is None:
            raise SourceError("SQS source used before start()")
        if not self._ready and self._error is None:
            self._ready_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_changed.wait(), POLL_WAIT_SECONDS)
        error, self._error = self._error, None
        if error is not None:
            raise error
        records, self._ready = self._ready, []
        return records

    def _add_receiver(self) -> None:
        if self._tasks is None or self._closing:
            return
        self._receivers += 1
        self._tasks.spawn(self._receive_loop(), "sqs receiver")

    async def _receive_loop(self) -> None:
        backoff = Backoff(RECEIVE_BACKOFF_FIRST, RECEIVE_BACKOFF_MAX)
        queue = self._queue
        assert queue is not None
        while not self._closing:
            room = await self._reserve_room()
            if not room:
                return  # closing
            poll = object()
            self._polls[poll] = time.monotonic() + self.wait_time_seconds + 1.0
            try:
                response = await self._client.receive_message(
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=room,
                    WaitTimeSeconds=self.wait_time_seconds,
                    VisibilityTimeout=self._in_flight.seconds,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            except AWS_ERRORS as exc:
                self._poll_ended(poll)
                self._reserved -= room
                self._error = source_error("SQS ReceiveMessage failed", exc)
                self._ready_changed.set()
                delay = backoff.next()
                log.debug("mapping %s: receive failed (%s); retrying in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            self._poll_ended(poll)
            self._reserved -= room
            backoff.reset()
            messages = response.get("Messages", [])
            if messages:
                self._accept(messages, queue, time.monotonic())
            if len(messages) == MAX_MESSAGES and self._receivers < self.max_receivers:
                # A full receive means a backlog: one more receiver, as Lambda adds pollers.
                self._add_receiver()
            elif not messages and self._receivers > 1:
                # A whole long poll found nothing: one receiver fewer, down to one.
                self._receivers -= 1
                return

    def _poll_ended(self, poll: object) -> None:
        self._polls.pop(poll, None)
        if not self._polls:
            self._polls_ended.set()

    async def _reserve_room(self) -> int:
        """Wait until a receive of at least one message keeps in-flight messages within the limit;
        reserve and return how many it may ask for (0 once closing)."""
        while not self._closing:
            room = min(MAX_MESSAGES, self.max_in_flight - len(self._in_flight) - self._reserved)
            if room > 0:
                self._reserved += room
                return room
            self._room_changed.clear()
            await self._room_changed.wait()
        return 0

    def _accept(self, messages: list[dict[str, Any]], queue: QueueInfo, received_at: float) -> None:
        lanes = self._lanes
        assert lanes is not None
        if queue.fifo:
            for message in messages:
                group = message.get("Attributes", {}).get("MessageGroupId", "")
                record = to_record(message, queue, lanes.lane_for_group(group))
                self._in_flight.add(record, message["ReceiptHandle"], received_at)
                lanes.hold(record)
            self._ready += lanes.dispatch()
        else:
            lane = lanes.lane_for_receive(len(messages), received_at)
            for message in messages:
                record = to_record(message, queue, lane)
                self._in_flight.add(record, message["ReceiptHandle"], received_at)
                self._ready.append(record)
        self._ready_changed.set()

    # --- settling --------------------------------------------------------------------------------

    async def commit(self, records: Sequence[Record]) -> None:
        """Delete these messages (DeleteMessageBatch). Raises SourceError naming how many could not
        be deleted; those are delivered again after their visibility timeout."""
        messages = self._settle(records)
        if messages:
            await self._in_flight.delete(messages)

    async def release(self, records: Sequence[Record], delay: float) -> None:
        """Make these messages visible again after ``delay`` seconds (whole seconds, rounded up),
        when SQS will deliver them with ApproximateReceiveCount raised. On a FIFO queue, messages
        of the same groups that this source still holds back are handed back with them, since they
        must not be processed first. Raises SourceError; the messages then reappear when their
        current visibility timeout ends."""
        lanes = self._lanes
        if lanes is None:
            return
        # Held-back messages of these groups leave the lanes before a lane can be given more.
        behind = self._in_flight.pop(lanes.take_behind(records)) if lanes.fifo else []
        messages = self._settle(records) + behind
        if not messages:
            return
        visibility = min(MAX_VISIBILITY_SECONDS, max(0, math.ceil(delay)))
        if not lanes.fifo:
            await self._in_flight.change_visibility(messages, visibility)
            return
        # The first message of a group handed back waits out the delay and holds the group; the
        # later ones become visible at once and follow it in order (moto, unlike SQS, would even
        # deliver them before it).
        waits = lanes.waits_for_group([message.record for message in messages], visibility, time.monotonic())
        waiting = [message for message, wait in zip(messages, waits, strict=True) if wait]
        following = [message for message, wait in zip(messages, waits, strict=True) if not wait]
        if waiting:
            await self._in_flight.change_visibility(waiting, visibility)
        if following:
            await self._in_flight.change_visibility(following, 0)

    def _settle(self, records: Sequence[Record]) -> list[InFlightMessage]:
        """Stop answering for these records the engine had: no more extensions, room for new
        receives and, on a FIFO queue, the next batch for a lane whose batch has settled."""
        messages = self._in_flight.pop(records)
        if messages and self._lanes is not None:
            self._lanes.settled(message.record for message in messages)
            self._room_changed.set()
            if self._lanes.fifo:
                self._ready += self._lanes.dispatch()
                self._ready_changed.set()
        return messages
