"""The SQS messages a source has received and not yet settled, and the calls that settle them.

Every received message is *in flight*: invisible to other consumers for the visibility time (the
queue's visibility timeout, at least :data:`MIN_VISIBILITY_SECONDS`). :meth:`InFlight.heartbeat`
extends it once half of it has passed, so a message stays invisible however long its handler runs;
a message is settled by deleting it (success, or after the on-failure destination took it) or by
setting its visibility timeout to when it should be delivered again (a retry). An extension never
overwrites a hand-back: both hold one lock.

Batch calls take ten messages each and run a few at a time; their per-entry failures are counted
and reported in one SourceError (the messages concerned are then delivered again by SQS).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from poller.connections.aws import AWS_ERRORS, error_text
from poller.engine.backoff import Backoff
from poller.engine.records import Record
from poller.errors import SourceError

log = logging.getLogger(__name__)

MAX_ENTRIES = 10  # DeleteMessageBatch and ChangeMessageVisibilityBatch take at most 10 entries
MAX_VISIBILITY_SECONDS = 43200  # SQS's limit: 12 hours
# A shorter visibility leaves the heartbeat no time to extend it before SQS delivers the message again.
MIN_VISIBILITY_SECONDS = 2
DELETE_ATTEMPTS = 3
DELETE_RETRY_FIRST, DELETE_RETRY_MAX = 0.2, 1.0  # seconds between delete attempts
CALL_CONCURRENCY = 8  # batch calls at a time, per source


@dataclass(eq=False)
class InFlightMessage:
    """A received message that its source still answers for (held, buffered or in the engine)."""

    record: Record
    receipt_handle: str
    expires: float  # time.monotonic() at which SQS makes it visible again unless extended
    renewable: bool = True  # false once SQS refused a change (the handle is no longer valid)


@dataclass
class _Failures:
    """Entries that failed in a set of batch calls, and the first few reasons."""

    count: int = 0
    reasons: list[str] = field(default_factory=list)

    def add(self, count: int, reason: str) -> None:
        self.count += count
        if len(self.reasons) < 3:
            self.reasons.append(reason)

    def raise_if_any(self, what: str, consequence: str) -> None:
        if self.count:
            reasons = "; ".join(self.reasons)
            raise SourceError(f"SQS could not {what} {self.count} message(s), {consequence}: {reasons}")


class InFlight:
    """The messages in flight of one source, keyed by Record (records are compared by identity)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds = MIN_VISIBILITY_SECONDS
        self._client: Any = None
        self._queue_url = ""
        self._messages: dict[Record, InFlightMessage] = {}
        self._lock = asyncio.Lock()
        self._calls = asyncio.Semaphore(CALL_CONCURRENCY)

    def bind(self, client: Any, queue_url: str, visibility_timeout: int) -> None:
        """Use this client and queue, keeping messages invisible for the queue's visibility timeout."""
        self._client, self._queue_url = client, queue_url
        self.seconds = min(MAX_VISIBILITY_SECONDS, max(MIN_VISIBILITY_SECONDS, visibility_timeout))

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, record: Record, receipt_handle: str, received_at: float) -> None:
        self._messages[record] = InFlightMessage(record, receipt_handle, received_at + self.seconds)

    def pop(self, records: Sequence[Record]) -> list[InFlightMessage]:
        """Stop answering for these records (no more extensions) and return them; records settled
        before (or never received) are skipped."""
        return [
            message
            for message in (self._messages.pop(record, None) for record in records)
            if message is not None
        ]

    def pop_all(self) -> list[InFlightMessage]:
        messages = list(self._messages.values())
        self._messages.clear()
        return messages

    async def delete(self, messages: list[InFlightMessage]) -> None:
        """DeleteMessageBatch; entries that fail for a server fault are retried. Raises SourceError
        naming how many could not be deleted (SQS delivers those again)."""
        failures = _Failures()
        await asyncio.gather(*(self._delete(chunk, failures) for chunk in _chunks(messages)))
        failures.raise_if_any("delete", "which will be delivered again")

    async def _delete(self, messages: list[InFlightMessage], failures: _Failures) -> None:
        pending = dict(enumerate(messages))
        backoff = Backoff(first=DELETE_RETRY_FIRST, maximum=DELETE_RETRY_MAX)
        for attempt in range(1, DELETE_ATTEMPTS + 1):
            entries = [
                {"Id": str(i), "ReceiptHandle": message.receipt_handle} for i, message in pending.items()
            ]
            try:
                async with self._calls:
                    response = await self._client.delete_message_batch(
                        QueueUrl=self._queue_url, Entries=entries
                    )
            except AWS_ERRORS as exc:
                if attempt == DELETE_ATTEMPTS:
                    failures.add(len(pending), error_text(exc))
                    return
                await asyncio.sleep(backoff.next())
                continue
            retry: dict[int, InFlightMessage] = {}
            for failed in response.get("Failed", []):
                message = pending[int(failed["Id"])]
                if failed.get("SenderFault") or attempt == DELETE_ATTEMPTS:
                    # An invalid handle: deleted already, or its visibility timeout ran out and the message was
                    # delivered again (that delivery settles it).
                    failures.add(
                        1,
                        f"message {message.record.position}: {failed.get('Code')}: {failed.get('Message', '')}",
                    )
                else:
                    retry[int(failed["Id"])] = message
            if not retry:
                return
            pending = retry
            await asyncio.sleep(backoff.next())

    async def change_visibility(self, messages: list[InFlightMessage], seconds: int) -> None:
        """Make these messages visible again in ``seconds`` (ChangeMessageVisibilityBatch). Raises
        SourceError naming how many were refused (they reappear when their visibility timeout ends)."""
        failures = _Failures()
        async with self._lock:
            await asyncio.gather(
                *(self._set_visibility(chunk, seconds, failures) for chunk in _chunks(messages))
            )
        failures.raise_if_any("change the visibility of", "which reappear when their visibility timeout ends")

    async def _set_visibility(
        self, messages: list[InFlightMessage], seconds: int, failures: _Failures
    ) -> list[InFlightMessage]:
        """One ChangeMessageVisibilityBatch; returns the messages it was applied to."""
        entries = [
            {"Id": str(i), "ReceiptHandle": message.receipt_handle, "VisibilityTimeout": seconds}
            for i, message in enumerate(messages)
        ]
        try:
            async with self._calls:
                response = await self._client.change_message_visibility_batch(
                    QueueUrl=self._queue_url, Entries=entries
                )
        except AWS_ERRORS as exc:
            failures.add(len(messages), error_text(exc))
            return []
        for failed in response.get("Failed", []):
            message = messages[int(failed["Id"])]
            message.renewable = False
            failures.add(
                1, f"message {message.record.position}: {failed.get('Code')}: {failed.get('Message', '')}"
            )
        return [messages[int(ok["Id"])] for ok in response.get("Successful", [])]

    async def heartbeat(self) -> None:
        """Extend the visibility of messages once half of it has passed; runs until cancelled."""
        tick = min(5.0, max(0.25, self.seconds / 4))
        while True:
            await asyncio.sleep(tick)
            await self.renew_due()

    async def renew_due(self) -> None:
        half = self.seconds / 2
        now = time.monotonic()
        if not any(message.renewable and message.expires - now < half for message in self._messages.values()):
            return
        failures = _Failures()
        async with self._lock:
            # Chosen under the lock: a message settled meanwhile is not extended after it was handed back.
            now = time.monotonic()
            due = [
                message
                for message in self._messages.values()
                if message.renewable and message.expires - now < half
            ]
            renewed = await asyncio.gather(
                *(self._set_visibility(chunk, self.seconds, failures) for chunk in _chunks(due))
            )
        for message in (message for chunk in renewed for message in chunk):
            message.expires = now + self.seconds
        if failures.count:
            log.warning(
                "mapping %s: could not extend the visibility of %d in-flight message(s), which may be "
                "delivered again: %s",
                self.name,
                failures.count,
                "; ".join(failures.reasons),
            )


def _chunks(messages: list[InFlightMessage]) -> list[list[InFlightMessage]]:
    return [messages[i : i + MAX_ENTRIES] for i in range(0, len(messages), MAX_ENTRIES)]
