"""One shard read in order with GetShardIterator and GetRecords (the polling, non-fan-out API).

A :class:`ShardReader` holds at most one GetRecords response: it fetches again only once the source
took the buffered records and none of the shard's lanes is paused, so memory stays bounded however
far behind the shard is. Everything that can go wrong on one shard is handled here, without
stalling the other shards: an expired iterator is renewed from the last record read, throttling
(``ProvisionedThroughputExceededException``) and other errors are backed off per shard.
https://docs.aws.amazon.com/streams/latest/dev/troubleshooting-consumers.html
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from poller.connections.aws import AWS_ERRORS, error_code
from poller.engine.backoff import Backoff
from poller.engine.records import Record
from poller.sources.kinesis.leases import AT_TIMESTAMP

log = logging.getLogger(__name__)

# Errors after which a moment's wait helps; with the same iterator unless it became unusable.
_THROTTLED = {"ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"}
_ITERATOR_UNUSABLE = {"ExpiredIteratorException", "InvalidArgumentException"}


class ShardReader:
    """Reads one shard from ``checkpoint`` (a sequence number, or TRIM_HORIZON / LATEST /
    AT_TIMESTAMP) until its end, if it has one. :meth:`run` returns when a closed shard was read to
    its end (``ended``); ``last_read`` is then the last sequence number it read, if any."""

    def __init__(
        self,
        client: Any,
        *,
        stream: str,
        shard_id: str,
        checkpoint: str,
        timestamp: datetime | None,
        limit: int,
        idle_interval: float,
        convert: Callable[[str, Sequence[dict[str, Any]]], list[Record]],
        notify: Callable[[], None],
        name: str = "",
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.shard_id = shard_id
        self.checkpoint = checkpoint
        self.timestamp = timestamp
        self.limit = limit
        self.idle_interval = idle_interval
        self.convert = convert
        self.notify = notify
        self.name = name
        # Per shard, so that throttled shards do not retry in step.
        self.backoff = backoff or Backoff(first=0.5, maximum=30.0)
        self.last_read: str | None = None
        self.millis_behind: int | None = None  # MillisBehindLatest of the last response
        self.ended = False
        self.failure: str | None = None  # the last error other than throttling, None once a call works
        self._buffer: list[Record] = []
        self._paused: set[str] = set()
        self._may_fetch = asyncio.Event()
        self._may_fetch.set()

    # --- for the source --------------------------------------------------------------------------

    @property
    def has_records(self) -> bool:
        return bool(self._buffer)

    def take(self) -> list[Record]:
        """The records read and not taken yet, in shard order."""
        records, self._buffer = self._buffer, []
        self._update()
        return records

    def pause(self, lane: str) -> None:
        self._paused.add(lane)
        self._update()

    def resume(self, lane: str) -> None:
        self._paused.discard(lane)
        self._update()

    def _update(self) -> None:
        if self._buffer or self._paused:
            self._may_fetch.clear()
        else:
            self._may_fetch.set()

    # --- reading ---------------------------------------------------------------------------------

    async def run(self) -> None:
        iterator: str | None = None
        while True:
            await self._may_fetch.wait()
            try:
                if iterator is None:
                    iterator = await self._iterator()
                response = await self.client.get_records(ShardIterator=iterator, Limit=self.limit)
            except AWS_ERRORS as exc:
                code = error_code(exc)
                if code == "ExpiredIteratorException":
                    # Iterators live five minutes; a paused shard can outlive one. Not a failure.
                    log.info("mapping %s: iterator of %s expired; renewing it", self.name, self.shard_id)
                    iterator = None
                    continue
                if code in _ITERATOR_UNUSABLE:
                    iterator = None
                throttled = code in _THROTTLED
                if not throttled:
                    self.failure = f"reading {self.shard_id}: {exc}"
                delay = self.backoff.next()
                log.log(
                    logging.INFO if throttled else logging.WARNING,
                    "mapping %s: %s on %s; trying again in %.1f s",
                    self.name,
                    "throttled" if throttled else f"error {exc}",
                    self.shard_id,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            self.failure = None
            records = response.get("Records") or []
            self.millis_behind = response.get("MillisBehindLatest")
            if records:
                self.last_read = records[-1]["SequenceNumber"]
                self._buffer = self.convert(self.shard_id, records)
                self._update()
                self.notify()
            iterator = response.get("NextShardIterator")
            if iterator is None:
                # A closed shard read to its end (after a split or merge): never read again.
                self.ended = True
                self.millis_behind = 0
                return
            if not records:
                await asyncio.sleep(self.idle_interval)

    async def _iterator(self) -> str:
        """An iterator just after the last record read, else at the checkpoint."""
        request: dict[str, Any] = {"StreamName": self.stream, "ShardId": self.shard_id}
        after = self.last_read or (self.checkpoint if self.checkpoint.isdigit() else None)
        if after is not None:
            request.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=after)
        elif self.checkpoint == AT_TIMESTAMP:
            request.update(ShardIteratorType=AT_TIMESTAMP, Timestamp=self.timestamp)
        else:
            request.update(ShardIteratorType=self.checkpoint)
        response = await self.client.get_shard_iterator(**request)
        iterator: str = response["ShardIterator"]
        return iterator
