"""The delivery guarantees of SPEC sections 5-7, each one test run against all four sources.

Every test counts records in and out through a broker harness (``harness/``): nothing is lost, and
a record is handled more than once only where at-least-once delivery allows it. The handlers are
``guarantee_handlers``; the engine's counters are read by ``harness.counters`` alone.

On-failure destinations: each source fails over to a destination of its own broker where poller has
one (Kafka topic, SQS queue, RabbitMQ queue) and Kinesis to a file. The destination-down test makes
each unavailable the way that broker fails in practice and can be undone within the test: the Kafka
destination's connection goes through a port that refuses connections until it starts forwarding
to the broker; the SQS queue and the RabbitMQ queue (unroutable meanwhile) are created only when the
destination is repaired; the file's directory is blocked by a plain file until it is removed. Native
destinations also let the harness check each one's framing (Kafka key, headers and ``x-poller-*``
headers, the SQS ``poller-condition`` attribute, RabbitMQ properties and headers).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

import guarantee_handlers as handlers
from guarantee_handlers import Seen
from harness import MAPPING, BrokerHarness, Sent, counters
from support import FakeClock, running, wait_for

from poller.engine.filters import FILTER_FIELDS


def calls(broker: BrokerHarness) -> list[list[Seen]]:
    return handlers.calls(broker.resource)


def handled(broker: BrokerHarness) -> list[Seen]:
    return [record for call in calls(broker) for record in call]


def succeeded(broker: BrokerHarness) -> list[str]:
    return [record.body for record in handlers.succeeded(broker.resource)]


async def unsettled_is(broker: BrokerHarness, count: int) -> bool:
    return await broker.unsettled() == count


def assert_failure_record(
    failure: dict[str, Any], broker: BrokerHarness, sent: Sent, attempts: list[Seen], *, retries: int
) -> None:
    """SPEC section 7, for the record ``sent`` that failed every one of its ``attempts``, the last
    ``retries`` of them retries."""
    assert failure["version"] == "1.0"
    assert failure["timestamp"].endswith("Z")
    assert failure["mapping"] == MAPPING
    context = failure["requestContext"]
    assert context["condition"] == "RetryAttemptsExhausted"
    assert context["functionArn"].endswith(":function:fn")
    assert context["requestId"]
    # Streams retry in process and count every invocation that held the record. Queues hand each
    # retry back to the broker, whose count of deliveries survives a restart: every invocation of
    # the last delivery (here only the record alone, if it was retried), plus the earlier deliveries.
    invocations = len(attempts) if broker.ordered or not retries else 1 + retries
    assert context["approximateInvokeCount"] == invocations
    assert failure["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    assert failure["errorInfo"]["errorType"] == "ValueError"
    assert failure["errorInfo"]["errorMessage"] == f"cannot handle {sent.body}"
    assert failure["errorInfo"]["stackTrace"]
    assert re.fullmatch(r"[0-9a-f]{32}", failure["traceId"])
    broker.check_source_info(failure["source"], sent)
    # The record exactly as the last attempt's event had it, in the source's own format.
    assert failure["records"] == [attempts[-1].record]
    broker.check_record(failure["records"][0], sent)


def attempts_of(broker: BrokerHarness, sent: Sent) -> list[Seen]:
    return [record for record in handled(broker) if record.body == sent.body]


def alone(broker: BrokerHarness, sent: Sent) -> list[dict[str, Any]]:
    """The record ``sent`` as each invocation that held nothing else had it."""
    return [call[0].record for call in calls(broker) if [r.body for r in call] == [sent.body]]


async def test_every_record_is_handled_once_in_order_and_committed(broker: BrokerHarness) -> None:
    await broker.create(lanes=4)
    bodies = [f"record-{i}" for i in range(200)]
    sent = await broker.produce(bodies)
    config = broker.config("collect", batch_size=10)
    async with running(config) as app:
        await wait_for(lambda: len(handled(broker)) >= 200, timeout=120, message="200 records handled")
        await wait_for(
            lambda: unsettled_is(broker, 0), timeout=60, interval=0.2, message="everything committed"
        )
        count = counters(app)
    assert await broker.unsettled() == 0, "and still, with the poller gone"
    assert await broker.dead_letters(0) == []
    seen = handled(broker)
    assert Counter(record.body for record in seen) == Counter(bodies), "each record exactly once"
    assert count.dead_lettered == count.failed == 0
    assert count.succeeded == 200
    assert count.invocations == len(calls(broker))
    assert max(len(call) for call in calls(broker)) <= 10, "batch_size"
    if broker.ordered:
        lanes = {record.lane for record in sent}
        assert len(lanes) == 4
        assert all(len({record.lane for record in call}) == 1 for call in calls(broker)), "batches per lane"
        for lane in lanes:
            order = [record.position for record in seen if record.lane == lane]
            assert order == [record.position for record in sent if record.lane == lane], f"{lane} in order"
            assert handlers.most_in_flight(broker.resource, lane) == 1, f"one batch of {lane} at a time"


RETRIES = 2


async def test_poison_record_is_isolated_by_bisect_and_dead_lettered_while_the_rest_commits(
    broker: BrokerHarness,
) -> None:
    await broker.create()
    bodies = ["poison-37" if i == 37 else f"record-{i}" for i in range(100)]
    sent = await broker.produce(bodies)
    poison = sent[37]
    config = broker.config(
        "collect",
        batch_size=100,
        maximum_batching_window_in_seconds=1,
        bisect_batch_on_function_error=True,
        # Queues hand retries back to the broker, which waits in real time: about 1 s, then 2 s.
        maximum_retry_attempts=RETRIES,
    )
    async with running(config, FakeClock()) as app:
        failures = await broker.dead_letters(1)
        await wait_for(
            lambda: unsettled_is(broker, 0), timeout=60, interval=0.2, message="committed past the poison"
        )
        count = counters(app)
    assert len(failures) == 1, "only the poison record reached the destination"
    assert await broker.dead_letters(0) == []
    attempts = attempts_of(broker, poison)
    assert_failure_record(failures[0], broker, poison, attempts, retries=RETRIES)
    for attempt in attempts:
        broker.check_record(attempt.record, poison)
    # Isolated, then tried alone once and retried RETRIES times.
    broker.check_redeliveries(alone(broker, poison))
    assert len(alone(broker, poison)) == 1 + RETRIES
    assert Counter(succeeded(broker)) == Counter(set(bodies) - {poison.body}), "the rest succeeded once"
    assert count.dead_lettered == 1
    assert count.invocations == len(calls(broker))
    # Logarithmic, not linear: the first batch, two halves per split, the retries; and one more
    # batch in case the batching window closed before all 100 records had arrived.
    assert count.invocations <= 1 + 2 * math.ceil(math.log2(100)) + RETRIES + 1
    assert await broker.unsettled() == 0


async def test_partial_batch_response_retries_only_what_it_must(broker: BrokerHarness) -> None:
    await broker.create()
    bodies = [f"flaky-{i}" if i in (7, 12) else f"record-{i}" for i in range(20)]
    sent = await broker.produce(bodies)
    config = broker.config(
        "report_flaky_once",  # reports each "flaky" record failed the first time
        function_response_types=["ReportBatchItemFailures"],
        batch_size=20,
        maximum_batching_window_in_seconds=1,
    )
    async with running(config, FakeClock()) as app:
        await wait_for(lambda: set(succeeded(broker)) == set(bodies), timeout=60, message="all succeeded")
        await wait_for(
            lambda: unsettled_is(broker, 0), timeout=60, interval=0.2, message="everything committed"
        )
        count = counters(app)
    assert await broker.dead_letters(0) == []
    assert count.dead_lettered == 0
    if broker.ordered:
        # Streams: the checkpoint stops just before the lowest failed record and the retry starts
        # there, records after it included (as on AWS).
        first, second = calls(broker)
        assert [record.position for record in first] == [record.position for record in sent]
        assert [record.position for record in second] == [record.position for record in sent[7:]]
    else:
        # Queues: the others were deleted or acked; only the reported messages came again.
        seen = Counter(record.body for record in handled(broker))
        assert seen == Counter(bodies) + Counter(["flaky-7", "flaky-12"])
    assert await broker.unsettled() == 0


async def test_destination_down_holds_the_source_until_the_destination_confirms(
    broker: BrokerHarness,
) -> None:
    await broker.create(destination_up=False)
    # The poison record comes last: bisecting a batch tries its halves in order, so a queue holds
    # back nothing but the record the destination has not taken.
    bodies = [f"record-{i}" for i in range(9)] + ["poison-9"]
    sent = await broker.produce(bodies)
    poison = sent[9]
    config = broker.config(
        "collect",
        batch_size=10,
        maximum_batching_window_in_seconds=1,
        bisect_batch_on_function_error=True,
        maximum_retry_attempts=0,
    )
    clock = FakeClock()
    async with running(config, clock) as app:
        await wait_for(lambda: alone(broker, poison), timeout=60, message="the poison record isolated")
        given_up = clock.slept
        # The destination is retried with a backoff of 1, 2, 4, 8 s (on the fake clock).
        await wait_for(lambda: clock.slept >= given_up + 7, timeout=60, message="three failed sends")
        await wait_for(
            lambda: unsettled_is(broker, 1), timeout=60, interval=0.2, message="all but the poison committed"
        )
        held = 1
        if broker.ordered:
            # A partition or shard does not advance past it: what comes after it waits.
            later = await broker.produce(["record-10", "record-11", "record-12"])
            bodies += [record.body for record in later]
            held += len(later)
        await wait_for(lambda: clock.slept >= given_up + 15, timeout=60, message="a fourth failed send")
        assert await broker.unsettled() == held, "nothing passed the record the destination has not taken"
        assert counters(app).dead_lettered == 0
        await broker.repair_destination()
        failures = await broker.dead_letters(1)
        await wait_for(
            lambda: unsettled_is(broker, 0), timeout=60, interval=0.2, message="committed once it confirmed"
        )
        count = counters(app)
    assert len(failures) == 1
    assert await broker.dead_letters(0) == []
    assert_failure_record(failures[0], broker, poison, attempts_of(broker, poison), retries=0)
    assert count.dead_lettered == 1
    assert Counter(succeeded(broker)) == Counter(set(bodies) - {poison.body})
    assert await broker.unsettled() == 0


async def test_records_that_match_no_filter_are_committed_uninvoked_and_the_rest_arrive_unchanged(
    broker: BrokerHarness,
) -> None:
    """SPEC section 14: the pattern sees the source's data field decoded and parsed; the handler
    gets the matching records exactly as without a filter; the others are committed, deleted or
    acked without an invocation, inside a batch and as whole batches."""
    await broker.create()
    kinds = ["order" if i % 3 == 0 else "refund" for i in range(30)] + ["refund"] * 10
    bodies = [json.dumps({"kind": kind, "i": i}) for i, kind in enumerate(kinds)]
    sent = await broker.produce(bodies)
    field = FILTER_FIELDS[broker.kind].name  # body, value or data
    pattern = json.dumps({field: {"kind": ["order"]}})
    config = broker.config("collect", batch_size=10, filter_criteria={"filter": [{"pattern": pattern}]})
    async with running(config) as app:
        await wait_for(
            lambda: unsettled_is(broker, 0), timeout=60, interval=0.2, message="every record committed"
        )
        count = counters(app)
    orders = [record for record in sent if '"order"' in record.body]
    seen = handled(broker)
    assert sorted(record.body for record in seen) == sorted(record.body for record in orders)
    for record in orders:
        [attempt] = attempts_of(broker, record)
        broker.check_record(attempt.record, record)  # the same bytes and metadata as unfiltered
    assert count.filtered == len(sent) - len(orders)
    assert count.succeeded == len(orders)
    assert await broker.dead_letters(0) == []
