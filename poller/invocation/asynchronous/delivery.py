"""Sending a decided asynchronous event to its destinations: the invocation record to on_success or
on_failure, the raw event to the dead-letter destination.

Each target counts once its destination confirmed the message, and that is written to the store at
once, so a restart sends only what was not confirmed yet. A destination that is down (or that a
reload removed) keeps the event in the store, and the send is tried again with backoff: nothing is
lost. A message that a destination can never take (too large) is sent without the payloads when
it is an invocation record; a dead-lettered event that is too large is dropped with an error log,
as Lambda drops it (and counts ``DeadLetterErrors``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from poller.clock import Clock
from poller.destinations import Destination
from poller.destinations.message import Message, MessageTooLarge
from poller.engine.backoff import Backoff
from poller.errors import DestinationError
from poller.invocation.asynchronous.queue import EventStore, StoredEvent, Target
from poller.invocation.asynchronous.record import dead_letter_attributes, invocation_record, without_payloads
from poller.invocation.asynchronous.schedule import SUCCESS
from poller.observability.async_spans import AsyncTelemetry, trace_id_of

log = logging.getLogger(__name__)

DELIVERY_RETRY_FIRST, DELIVERY_RETRY_MAX = 1.0, 30.0
THROTTLE_ERROR = "TooManyRequestsException"  # the error of an attempt that was throttled
DEAD_LETTER = "dead_letter"


@dataclass
class DeliveryCounts:
    """Messages sent to destinations since start, by kind (on_success, on_failure, dead_letter)."""

    sent: dict[str, int] = field(default_factory=dict)
    failed: int = 0  # sends a destination did not confirm (each is tried again)
    dropped: int = 0  # messages no destination could ever take


def record_message(event: StoredEvent, function_arn: str) -> Message:
    """The invocation record of a decided event, as a message."""
    assert event.condition is not None, "a decided event"
    assert event.finished_at is not None, "a decided event"
    record = invocation_record(
        request_id=event.request_id,
        function_arn=function_arn,
        condition=event.condition,
        invoke_count=event.attempts,
        request_payload=event.payload,
        response_payload=event.last.response,
        function_error="Unhandled" if event.condition != SUCCESS else None,
        now=event.finished_at,
    )
    return Message(orjson.dumps(record), event.request_id, event.function)


def dead_letter_message(event: StoredEvent) -> Message:
    """The raw event, with AWS's dead-letter attributes."""
    message = event.last.error_message
    if message is None:
        message = f"{event.condition}: the event was not attempted in time"
    attributes = dead_letter_attributes(
        event.request_id, throttled=event.last.error_type == THROTTLE_ERROR, error_message=message
    )
    return Message(event.payload, f"{event.request_id}:dead-letter", event.function, attributes)


class Deliveries:
    """Sends decided events to their targets, through the destinations the running config names."""

    def __init__(
        self,
        store: EventStore,
        destination_of: Callable[[str], Destination | None],
        function_arn_of: Callable[[str], str],
        clock: Clock,
        telemetry: AsyncTelemetry,
        scheduled: Callable[[float], None] = lambda due: None,
    ) -> None:
        """``scheduled(due)`` hears of every send put off to ``due``."""
        self.store = store
        self.scheduled = scheduled
        self.destination_of = destination_of
        self.function_arn_of = function_arn_of
        self.clock = clock
        self.telemetry = telemetry
        self.counts = DeliveryCounts()

    async def deliver(self, event: StoredEvent) -> bool:
        """Send the event to every target it still has, in order, writing down each confirmed
        one; True when all confirmed (the event is then gone from the store), False when one
        did not (the event waits in the store for its next try). Raises EventQueueError when the
        store cannot be written (the event is then sent again later: at least once)."""
        remaining = list(event.pending)
        for target in event.pending:
            if not await self._send(event, target):
                failures = event.delivery_failures + 1
                delay = Backoff(DELIVERY_RETRY_FIRST, DELIVERY_RETRY_MAX).delay(failures)
                log.warning(
                    "async event %s of %s: destination %s did not take its %s message; trying again in %.1f s",
                    event.request_id,
                    event.function,
                    target.destination,
                    target.kind,
                    delay,
                    extra=event_ids(event),
                )
                due = self.clock.now() + delay
                await self.store.postpone_delivery(event.request_id, due_at=due, failures=failures)
                self.scheduled(due)
                return False
            remaining.remove(target)
            await self.store.delivered(event.request_id, remaining)
        return True

    async def _send(self, event: StoredEvent, target: Target) -> bool:
        destination = self.destination_of(target.destination)
        if destination is None:
            log.warning(
                "async event %s of %s: destination %s is not in the config (a reload removed it?)",
                event.request_id,
                event.function,
                target.destination,
                extra=event_ids(event),
            )
            self.counts.failed += 1
            return False
        if target.kind == DEAD_LETTER:
            message = dead_letter_message(event)
        else:
            message = record_message(event, self.function_arn_of(event.function))
        with self.telemetry.delivery(event.function, event.trace_parent, target.destination, target.kind):
            try:
                await self._publish(destination, message, event, target)
            except DestinationError as exc:
                log.debug("destination %s: %s", target.destination, exc)
                self.counts.failed += 1
                return False
        self.counts.sent[target.kind] = self.counts.sent.get(target.kind, 0) + 1
        return True

    async def _publish(
        self, destination: Destination, message: Message, event: StoredEvent, target: Target
    ) -> None:
        try:
            await destination.publish(message)
            return
        except MessageTooLarge as exc:
            if target.kind == DEAD_LETTER:
                self._drop(event, target, exc)
                return
            log.error(
                "async event %s of %s: destination %s refused the invocation record (%s); sending it "
                "without the payloads",
                event.request_id,
                event.function,
                target.destination,
                exc,
                extra=event_ids(event),
            )
        smaller = without_payloads(orjson.loads(message.body))
        try:
            await destination.publish(Message(orjson.dumps(smaller), message.message_id, message.group))
        except MessageTooLarge as exc:
            self._drop(event, target, exc)

    def _drop(self, event: StoredEvent, target: Target, error: MessageTooLarge) -> None:
        self.counts.dropped += 1
        log.error(
            "async event %s of %s: destination %s can never take its %s message (%s); dropped",
            event.request_id,
            event.function,
            target.destination,
            target.kind,
            error,
            extra=event_ids(event),
        )


def event_ids(event: StoredEvent) -> dict[str, str | None]:
    """What every log line about an event carries."""
    return {
        "function": event.function,
        "request_id": event.request_id,
        "trace_id": trace_id_of(event.trace_parent),
    }
