"""SQS source (aiobotocore): Lambda's SQS trigger on the engine's lanes.

- Long-polling receivers (``wait_time_seconds``, 20 by default) run as background tasks owned by
  the source and feed :meth:`poll` through a bounded buffer; their number follows the backlog, from
  one up to ``scaling_config.maximum_concurrency`` (a full receive adds one, an empty long poll
  retires one).
- A message is *in flight* from its receipt until it is deleted (:meth:`commit`) or handed back
  (:meth:`release`). Meanwhile a heartbeat keeps extending its visibility timeout
  (:mod:`poller.sources.sqs.in_flight`), so a handler slower than the queue's visibility timeout
  causes no second delivery, and a crash lets it reappear after one timeout. At most ``2 x maximum_concurrency x batch_size`` messages are in
  flight: that bounds memory and the heartbeat's work.
- ``release`` sets the visibility timeout to the backoff delay: the retry waits in SQS, and its
  count is ``ApproximateReceiveCount`` (``Record.receive_count``), which survives a restart.
- Lanes bound concurrency. A standard queue spreads its messages over ``maximum_concurrency`` lanes,
  filling the least busy one; a FIFO queue maps each MessageGroupId to one lane and hands a lane its
  next messages only once its previous batch has settled, so each group is processed in order and a
  group whose message was released cannot overtake it (``Record.group``).

The event and the queue lookup are in :mod:`poller.sources.sqs.event`.
Scaling: https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, NoCredentialsError

from poller.config import AwsConnection, Mapping
from poller.config import SqsSource as SqsSourceConfig
from poller.connections.aws import client_options
from poller.engine.records import MAX_PAYLOAD_BYTES, Record
from poller.errors import SourceError
from poller.sources.protocol import LaneListener
from poller.sources.sqs.event import (
    AWS_ERRORS,
    QueueInfo,
    SqsEventFormat,
    error_text,
    resolve_queue,
    to_record,
)
from poller.sources.sqs.in_flight import CALL_CONCURRENCY, MAX_VISIBILITY_SECONDS, Lease, Leases

log = logging.getLogger(__name__)

MAX_MESSAGES = 10  # ReceiveMessage returns at most 10
POLL_WAIT_SECONDS = 0.5
FIFO_MAX_BATCH_SIZE = 10
DEFAULT_MAXIMUM_CONCURRENCY = 10
RECEIVE_BACKOFF_FIRST = 1.0
RECEIVE_BACKOFF_MAX = 30.0
CLOSE_TIMEOUT = 5.0
BACKLOG_INTERVAL = 10.0  # seconds between reads of ApproximateNumberOfMessages, for lag()
# On close, how long long polls in progress may take to return: once cancelled, a poll keeps
# running inside SQS until its wait ends and takes messages that nobody will process.
CLOSE_GRACE = 2.0

# Errors that waiting does not cure: the service stops at start instead of retrying forever.
_FATAL_CODES = frozenset(
    {
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "AccessDenied",
        "AccessDeniedException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAddress",
        "InvalidParameterValue",
    }
)


def _source_error(action: str, exc: BaseException, *, at_start: bool = False) -> SourceError:
    fatal = at_start and (
        isinstance(exc, NoCredentialsError)
        or (isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in _FATAL_CODES)
    )
    return SourceError(f"SQS {action} failed: {error_text(exc)}", retriable=not fatal)


class SqsSource:
    """Receives one queue for one mapping; see the module docstring for the design."""

    ordered: ClassVar[bool] = False

    def __init__(self, name: str, mapping: Mapping, connection: Any) -> None:
        assert isinstance(connection, AwsConnection)
        assert isinstance(mapping.source, SqsSourceConfig)
        self.name = name
        self.mapping = mapping
        self.config: SqsSourceConfig = mapping.source
        self.connection: AwsConnection = connection
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
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._queue: QueueInfo | None = None
        self._leases = Leases(name)
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
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
        self._lanes: list[str] = []
        self._outstanding: dict[str, int] = {}  # per lane: dispatched records not yet settled
        self._fifo = False
        self._held: dict[str, deque[Record]] = {}  # FIFO: per lane, received but not dispatched
        self._group_waits: dict[str, float] = {}  # FIFO: group -> when its handed-back message returns
        self._filling: str | None = None  # standard queues: the lane being filled, since when, how far
        self._filling_since = 0.0
        self._filled = 0

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, listener: LaneListener) -> None:
        """Find the queue and start receiving. Raises SourceError: a missing queue, refused
        credentials and limits FIFO queues do not support are not retriable."""
        stack = contextlib.AsyncExitStack()
        try:
            try:
                client = await stack.enter_async_context(self._create_client())
                queue = await resolve_queue(client, self.config.queue)
            except AWS_ERRORS as exc:
                raise _source_error(f"lookup of queue {self.config.queue!r}", exc, at_start=True) from exc
            except ValueError as exc:
                raise SourceError(str(exc), retriable=False) from exc
            self._check_limits(queue)
        except BaseException:
            # Cancelled or failed: the client must not outlive this call.
            await _close_quietly(stack)
            raise
        self._stack = stack
        self._bind(client, queue)
        self._supervisor = asyncio.create_task(self._run(), name=f"{self.name}:sqs")
        log.info(
            "mapping %s: receiving %s (%s, visibility %d s, up to %d concurrent batches)",
            self.name,
            queue.url,
            "FIFO" if queue.fifo else "standard",
            self._leases.seconds,
            self.maximum_concurrency,
        )

    def _bind(self, client: Any, queue: QueueInfo) -> None:
        """Adopt a client and a resolved queue, with no receivers yet (start() goes on to start
        them; unit tests drive the source from here with a fake client)."""
        self._client, self._queue = client, queue
        self._closing = False
        self.format.queue = queue
        self._leases.bind(client, queue.url, queue.visibility_timeout)
        self._lanes = [f"{queue.name}#{index}" for index in range(self.maximum_concurrency)]
        self._outstanding = dict.fromkeys(self._lanes, 0)
        self._fifo = queue.fifo
        self._held = {lane: deque() for lane in self._lanes} if queue.fifo else {}
        self._group_waits.clear()

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
        # Each receiver holds a connection for its long poll; deletes and renewals need their own.
        options["config"] = options["config"].merge(
            AioConfig(max_pool_connections=self.maximum_concurrency + CALL_CONCURRENCY + 2)
        )
        return get_session().create_client("sqs", **options)  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Stop receiving and hand back every message still in flight, so that a restart or another
        replica gets it at once; then close the client. Never raises.

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
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            # wait() rather than await: it neither raises the task's end nor hides our own cancellation.
            await asyncio.wait([supervisor])
            if not supervisor.cancelled() and supervisor.exception() is not None:
                log.debug("mapping %s: SQS receivers ended with %r", self.name, supervisor.exception())
        self._tasks = None
        self._receivers = self._reserved = 0
        self._polls.clear()
        self._error = None
        leases = self._leases.pop_all()
        if leases and self._client is not None:
            visibility = max(0, math.ceil(orphans_until - time.monotonic()))
            try:
                await asyncio.wait_for(self._leases.change_visibility(leases, visibility), CLOSE_TIMEOUT)
            except (SourceError, TimeoutError) as exc:
                log.warning(
                    "mapping %s: %d in-flight message(s) not handed back (%s); they reappear after "
                    "their visibility timeout",
                    self.name,
                    len(leases),
                    exc,
                )
        if self._stack is not None:
            await _close_quietly(self._stack)
        self._stack = self._client = None
        self._ready.clear()
        for held in self._held.values():
            held.clear()

    async def _run(self) -> None:
        """The receivers and the heartbeat, in one task group that :meth:`close` cancels."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            tasks.create_task(self._leases.heartbeat(), name=f"{self.name}:sqs-heartbeat")
            tasks.create_task(self._watch_backlog(), name=f"{self.name}:sqs-backlog")
            self._add_receiver()

    @property
    def receivers(self) -> int:
        """ReceiveMessage loops running now (they follow the backlog)."""
        return self._receivers

    @property
    def in_flight(self) -> int:
        """Messages received and neither deleted nor handed back yet."""
        return len(self._leases)

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

    # --- polling ---------------------------------------------------------------------------------

    async def poll(self) -> list[Record]:
        """Records received since the last call, waiting up to half a second for some. Raises the
        receivers' latest error once (they keep retrying on their own)."""
        self._raise_problems()
        if not self._ready:
            self._ready_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready_changed.wait(), POLL_WAIT_SECONDS)
            self._raise_problems()
        records, self._ready = self._ready, []
        return records

    def _raise_problems(self) -> None:
        supervisor = self._supervisor
        if supervisor is None:
            raise SourceError("SQS source used before start()")
        if supervisor.done():
            failure = None if supervisor.cancelled() else supervisor.exception()
            # Only a bug ends the receivers; say so rather than poll an empty buffer forever.
            raise SourceError(f"SQS receivers stopped: {failure!r}", retriable=False) from failure
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _add_receiver(self) -> None:
        if self._tasks is None or self._closing:
            return
        self._receivers += 1
        self._tasks.create_task(self._receive_loop(), name=f"{self.name}:sqs-receiver")

    async def _receive_loop(self) -> None:
        delay = RECEIVE_BACKOFF_FIRST
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
                    VisibilityTimeout=self._leases.seconds,
                    MessageSystemAttributeNames=["All"],
                    MessageAttributeNames=["All"],
                )
            except AWS_ERRORS as exc:
                self._poll_ended(poll)
                self._reserved -= room
                self._error = _source_error("ReceiveMessage", exc)
                self._ready_changed.set()
                log.debug("mapping %s: receive failed (%s); retrying in %.0f s", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(RECEIVE_BACKOFF_MAX, delay * 2)
                continue
            self._poll_ended(poll)
            self._reserved -= room
            delay = RECEIVE_BACKOFF_FIRST
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
            room = min(MAX_MESSAGES, self.max_in_flight - len(self._leases) - self._reserved)
            if room > 0:
                self._reserved += room
                return room
            self._room_changed.clear()
            await self._room_changed.wait()
        return 0

    def _accept(self, messages: list[dict[str, Any]], queue: QueueInfo, received_at: float) -> None:
        if queue.fifo:
            for message in messages:
                group = message.get("Attributes", {}).get("MessageGroupId", "")
                lane = self._lanes[zlib.crc32(group.encode()) % len(self._lanes)]
                record = to_record(message, queue, lane)
                self._leases.add(record, message["ReceiptHandle"], received_at, dispatched=False)
                self._held[lane].append(record)
            self._dispatch_fifo()
            return
        lane = self._pick_lane(len(messages), received_at)
        for message in messages:
            record = to_record(message, queue, lane)
            self._leases.add(record, message["ReceiptHandle"], received_at, dispatched=True)
            self._ready.append(record)
        self._outstanding[lane] += len(messages)
        self._ready_changed.set()

    def _pick_lane(self, count: int, now: float) -> str:
        """Standard queues: keep filling one lane up to a batch within the batching window (so
        receives aggregate into batches larger than 10), then move to the least busy lane."""
        if (
            self._filling is None
            or self._filled >= self.batch_size
            or now - self._filling_since >= self.window
        ):
            self._filling = min(self._lanes, key=self._outstanding.__getitem__)
            self._filling_since = now
            self._filled = 0
        self._filled += count
        return self._filling

    def _dispatch_fifo(self) -> None:
        """Give each idle FIFO lane its next batch: at most batch_size records and one payload,
        so that the lane's batch is exactly what was dispatched."""
        dispatched = False
        for lane, held in self._held.items():
            if not held or self._outstanding[lane]:
                continue
            size = 0
            count = 0
            while held and count < self.batch_size:
                record = held[0]
                if count and size + record.size > MAX_PAYLOAD_BYTES:
                    break
                held.popleft()
                self._leases.dispatched(record)
                self._ready.append(record)
                size += record.size
                count += 1
            self._outstanding[lane] = count
            dispatched = True
        if dispatched:
            self._ready_changed.set()

    # --- settling --------------------------------------------------------------------------------

    async def commit(self, records: Sequence[Record]) -> None:
        """Delete these messages (DeleteMessageBatch). Raises SourceError naming how many could not
        be deleted; those are delivered again after their visibility timeout."""
        leases = self._settle(records)
        if leases:
            await self._leases.delete(leases)

    async def release(self, records: Sequence[Record], delay: float) -> None:
        """Make these messages visible again after ``delay`` seconds (whole seconds, rounded up),
        when SQS will deliver them with ApproximateReceiveCount raised. On a FIFO queue, messages
        of the same groups that this source still holds back are handed back with them, since they
        must not be processed first. Raises SourceError; the messages then reappear when their
        current visibility timeout ends."""
        # Held-back messages of these groups leave the lanes before a lane can be given more.
        behind = self._held_behind(records) if self._fifo else []
        leases = self._settle([*records, *behind])
        if not leases:
            return
        visibility = min(MAX_VISIBILITY_SECONDS, max(0, math.ceil(delay)))
        if not self._fifo:
            await self._leases.change_visibility(leases, visibility)
            return
        # A FIFO group delivers nothing while one of its messages is invisible: the first message of
        # a group handed back waits out the delay and holds the group; the later ones become visible
        # at once and follow it in order (moto, unlike SQS, would even deliver them before it).
        now = time.monotonic()
        self._group_waits = {group: until for group, until in self._group_waits.items() if until > now}
        waiting: list[Lease] = []
        following: list[Lease] = []
        for lease in leases:
            group = lease.record.group or ""
            if group in self._group_waits:
                following.append(lease)
            else:
                waiting.append(lease)
                self._group_waits[group] = now + visibility
        if waiting:
            await self._leases.change_visibility(waiting, visibility)
        if following:
            await self._leases.change_visibility(following, 0)

    def _held_behind(self, records: Sequence[Record]) -> list[Record]:
        groups = {record.group for record in records if record.group is not None}
        behind: list[Record] = []
        for held in self._held.values():
            if any(record.group in groups for record in held):
                behind += [record for record in held if record.group in groups]
                kept = [record for record in held if record.group not in groups]
                held.clear()
                held.extend(kept)
        return behind

    def _settle(self, records: Sequence[Record]) -> list[Lease]:
        """Stop answering for these records: no more renewals, room for new receives, and (FIFO)
        the next batch for a lane whose batch has settled."""
        leases = self._leases.pop(records)
        for lease in leases:
            if lease.dispatched:
                self._outstanding[lease.record.lane] -= 1
        if leases:
            self._room_changed.set()
            if self._fifo:
                self._dispatch_fifo()
        return leases


async def _close_quietly(stack: contextlib.AsyncExitStack) -> None:
    try:
        await stack.aclose()
    except Exception as exc:
        log.debug("error while closing an SQS client: %s", exc)
