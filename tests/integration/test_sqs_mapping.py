"""The SQS event source mapping and the SQS, SNS and S3 destinations against the moto server.

moto's SQS differs from SQS in three ways these tests work around (``reference/brokers.md``): each
call costs time in proportion to the queue's depth, so messages are sent in waves that keep it
shallow; concurrent ReceiveMessage calls may hand out the same message twice, so tests that count
deliveries exactly run a single receiver (``max_receivers = 1``) and only the throughput test runs
several; and its FIFO group lock can let later messages of a group overtake an earlier one that
was handed back, which the FIFO test avoids (see ``UnhurriedRetries``).

The guarantees every source shares (bisect and dead letters to an SQS queue, partial batch
responses, a destination outage) are tested once for all four in ``test_guarantees.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import recording
import sqs_handlers
from harness import counters
from sqs_support import ATTRIBUTES, EVENT_ATTRIBUTES, REGION, aws, create_queue, receive_all, send
from support import mapping_config, serving, sqs_queue_is_empty, unique_name, wait_for

from poller.app import App
from poller.config import Config
from poller.engine.backoff import Backoff
from poller.errors import SourceError
from poller.sources.sqs.source import SqsSource

pytestmark = pytest.mark.sqs


@pytest.fixture
async def sqs(moto_endpoint: str) -> AsyncIterator[Any]:
    async with aws(moto_endpoint, "sqs") as client:
        yield client


def make_config(
    endpoint: str,
    queue: str,
    handler: str,
    *,
    destination: dict[str, Any] | None = None,
    function: dict[str, Any] | None = None,
    wait_time_seconds: int = 1,
    **mapping: Any,
) -> Config:
    """One mapping ``m`` of ``queue`` to ``handler``. Long polls of one second let a stopping app's
    last poll end within the grace that close() gives it (see SqsSource.close)."""
    if destination is not None and destination["type"] != "file":
        destination = {"connection": "aws", **destination}
    return mapping_config(
        {"aws": {"type": "aws", "region": REGION, "endpoint_url": endpoint}},
        {"type": "sqs", "connection": "aws", "queue": queue, "wait_time_seconds": wait_time_seconds},
        handler,
        dlq=destination,
        function=function,
        **mapping,
    )


def source_of(app: App) -> SqsSource:
    source = app.runners["m"].source
    assert isinstance(source, SqsSource)
    return source


# Hand-backs of at least two seconds, for the FIFO test: a FIFO message handed back with visibility
# 0 in the same millisecond stays "pending" in moto (its visibility check is strict) until a receive
# looks at it; a long poll that found nothing waits up to a second without looking. If the group's
# earlier message, handed back for a second, becomes visible before that look, moto skips it (its
# group still has a pending message), then clears the later ones and delivers them first. SQS itself
# never lets a group's later messages pass an earlier one that is in flight; a hand-back longer than
# moto's one-second wait makes sure a receive has looked in between. With equal jitter, a first
# delay of 4 s waits at least 2.
UNHURRIED = Backoff(first=4.0, maximum=60.0)


@asynccontextmanager
async def running(
    config: Config, *, receivers: int | None = 1, unhurried_retries: bool = False
) -> AsyncIterator[App]:
    """Run the app; ``receivers`` caps concurrent ReceiveMessage calls (None: the product default),
    and ``unhurried_retries`` hands messages back for at least two seconds (``UNHURRIED``)."""
    app = App(config, drain_timeout=10)
    source = source_of(app)
    if receivers is not None:
        source.max_receivers = receivers
    if unhurried_retries:
        processor = app.runners["m"].processor
        processor.policy = replace(processor.policy, schedule=UNHURRIED)
    async with serving(app):
        yield app


def bodies_succeeded(queue: str) -> list[str]:
    return [record["body"] for record in sqs_handlers.succeeded(queue)]


async def test_two_thousand_messages_in_waves_with_five_concurrent_batches(
    sqs: Any, moto_endpoint: str
) -> None:
    url, name = await create_queue(sqs, "waves")
    config = make_config(
        moto_endpoint,
        url,
        "sqs_handlers:collect",
        function={"environment": {"DELAY": "0.05"}},  # a little work per batch, so that batches overlap
        scaling_config={"maximum_concurrency": 5},
    )
    everything = [f"m{i}" for i in range(2000)]
    started = time.monotonic()
    most_receivers = 0

    def caught_up(sent: int) -> Callable[[], bool]:
        return lambda: sent - len(set(bodies_succeeded(name))) <= 50

    async with running(config, receivers=None) as app:
        source = source_of(app)
        for wave in range(0, 2000, 100):
            # At most ~150 messages wait in the queue: moto's cost per call grows with its depth.
            await wait_for(caught_up(wave), timeout=60, message="wave handled")
            await send(sqs, url, everything[wave : wave + 100])
            most_receivers = max(most_receivers, source.receivers)
        await wait_for(lambda: len(set(bodies_succeeded(name))) == 2000, timeout=60, message="all handled")
        elapsed = time.monotonic() - started
        await wait_for(lambda: sqs_queue_is_empty(sqs, url), timeout=30, message="queue empty")
        # With the backlog gone, empty long polls retire the extra receivers.
        await wait_for(lambda: source.receivers == 1, timeout=30, message="receivers scaled back to one")
        stats = app.runners["m"].status.counts
        assert stats.dead_lettered == 0
        assert source.in_flight == 0
        assert set(source.lag()) == {name}, "the backlog metric names the queue"
    handled = bodies_succeeded(name)
    assert set(handled) == set(everything)
    duplicates = len(handled) - 2000
    # moto may hand one message to two concurrent receives; anything more would be ours.
    assert duplicates <= 40, f"{duplicates} duplicate deliveries"
    most_running = sqs_handlers.most_running(name)
    assert 2 <= most_running <= 5, "more than one batch at a time, at most five"
    assert 2 <= most_receivers <= 5
    assert max(len(call) for call in sqs_handlers.calls(name)) <= 10
    print(
        f"\n2000 messages in {elapsed:.1f} s; {duplicates} duplicates; "
        f"{most_running} batches at once; {most_receivers} receivers at most"
    )


async def _failure_documents(
    kind: str, endpoint: str, target: dict[str, Any], count: int
) -> list[dict[str, Any]]:
    if kind == "s3":
        async with aws(endpoint, "s3") as s3:

            async def listed() -> list[dict[str, Any]]:
                response = await s3.list_objects_v2(Bucket=target["bucket"], Prefix="failures/")
                return list(response.get("Contents", []))

            objects = await wait_for(listed, timeout=30, message="failure object written")
            documents = []
            for entry in objects:
                assert re.fullmatch(
                    r"failures/aws/lambda/m/[^/]+/\d{4}/\d{2}/\d{2}/\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2}-[0-9a-f-]{36}",
                    entry["Key"],
                ), entry["Key"]
                body = await (await s3.get_object(Bucket=target["bucket"], Key=entry["Key"]))["Body"].read()
                documents.append(json.loads(body))
            return documents
    async with aws(endpoint, "sqs") as client:
        messages = await receive_all(client, target["url"], count)
    for message in messages:
        assert message["MessageAttributes"]["poller-condition"]["StringValue"] == "RetryAttemptsExhausted"
    return [json.loads(message["Body"]) for message in messages]


async def _destination(kind: str, endpoint: str, sqs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The destination config of a kind, and where its documents can be read (an SNS topic
    delivers to a queue that subscribes to it)."""
    if kind == "s3":
        bucket = unique_name("failures")[:63]
        async with aws(endpoint, "s3") as s3:
            await s3.create_bucket(Bucket=bucket)
        return {"type": "s3", "bucket": bucket, "prefix": "failures"}, {"bucket": bucket}
    url, _ = await create_queue(sqs, "dlq")
    async with aws(endpoint, "sns") as sns:
        topic = (await sns.create_topic(Name=unique_name("failures")))["TopicArn"]
        arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"][
            "QueueArn"
        ]
        await sns.subscribe(
            TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"}
        )
    return {"type": "sns", "topic_arn": topic}, {"url": url}


@pytest.mark.parametrize("kind", ["sns", "s3"])
async def test_failure_record_reaches_an_sns_or_s3_destination(
    sqs: Any, moto_endpoint: str, kind: str
) -> None:
    url, name = await create_queue(sqs, "poison")
    destination, target = await _destination(kind, moto_endpoint, sqs)
    [message_id] = await send(sqs, url, ["poison!"], attributes=ATTRIBUTES)
    config = make_config(
        moto_endpoint, url, "sqs_handlers:collect", destination=destination, maximum_retry_attempts=0
    )
    async with running(config) as app:
        await wait_for(lambda: sqs_queue_is_empty(sqs, url), timeout=30, message="queue empty")
        documents = await _failure_documents(kind, moto_endpoint, target, 1)
        assert counters(app).dead_lettered == 1
    [failure] = documents
    assert failure["version"] == "1.0"
    assert failure["mapping"] == "m"
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["requestContext"]["functionArn"].endswith(":function:fn")
    assert failure["responseContext"]["functionError"] == "Unhandled"
    assert failure["errorInfo"]["errorType"] == "ValueError"
    assert failure["errorInfo"]["errorMessage"] == f"poison message {message_id}"
    assert failure["errorInfo"]["stackTrace"]
    assert len(failure["traceId"]) == 32
    assert failure["source"]["type"] == "sqs"
    assert failure["source"]["messageIds"] == [message_id]
    assert failure["source"]["queueArn"].endswith(":" + name)
    [record] = failure["records"]
    assert record["messageId"] == message_id
    assert record["body"] == "poison!"
    assert record["eventSource"] == "aws:sqs"
    assert record["awsRegion"] == REGION
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"] == EVENT_ATTRIBUTES
    assert len(record["md5OfMessageAttributes"]) == 32


async def test_maximum_retry_attempts_hold_across_a_restart(
    sqs: Any, moto_endpoint: str, tmp_path: Path
) -> None:
    url, name = await create_queue(sqs, "restart")
    [message_id] = await send(sqs, url, ["doomed"])
    dead_letters = tmp_path / "failed.jsonl"
    config = make_config(
        moto_endpoint,
        url,
        "sqs_handlers:always_fail",
        destination={"type": "file", "path": str(dead_letters)},
        maximum_retry_attempts=2,
    )
    async with running(config):
        await wait_for(lambda: len(sqs_handlers.calls(name)) == 2, timeout=30, message="two attempts")
    # The second attempt's message waits in SQS for its backoff; a new process takes over from there.
    assert len(sqs_handlers.calls(name)) == 2
    assert not dead_letters.exists()
    async with running(config):
        await wait_for(dead_letters.exists, timeout=30, message="dead-lettered by the second process")
        await wait_for(
            lambda: sqs_queue_is_empty(sqs, url), timeout=30, message="deleted after the destination"
        )
    counts = [int(call[0]["attributes"]["ApproximateReceiveCount"]) for call in sqs_handlers.calls(name)]
    # One first attempt and two retries, counted by SQS. The third delivery may count one more:
    # the first app's last long poll can receive the message while it closes, and hand it back.
    assert counts[:2] == [1, 2]
    assert counts[2] in (3, 4)
    assert len(counts) == 3
    [failure] = [json.loads(line) for line in dead_letters.read_text().splitlines()]
    assert failure["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert failure["source"]["messageIds"] == [message_id]
    assert failure["records"][0]["attributes"]["ApproximateReceiveCount"] == str(counts[2])


async def test_handler_slower_than_the_visibility_timeout_gets_the_message_once(
    sqs: Any, moto_endpoint: str
) -> None:
    url, name = await create_queue(sqs, "slow", VisibilityTimeout="2")
    await send(sqs, url, ["slow"])
    config = make_config(
        moto_endpoint,
        url,
        "sqs_handlers:slow",
        function={"timeout": 10, "environment": {"DELAY": "6.0"}},  # three visibility timeouts
    )
    async with running(config) as app:
        await wait_for(lambda: bodies_succeeded(name), timeout=30, message="handled")
        await wait_for(lambda: sqs_queue_is_empty(sqs, url), timeout=10, message="deleted")
        assert app.runners["m"].status.counts.invocations == 1
    [[record]] = sqs_handlers.calls(name)
    assert record["attributes"]["ApproximateReceiveCount"] == "1"


async def test_fifo_groups_keep_their_order_under_failures_and_retries(sqs: Any, moto_endpoint: str) -> None:
    url, name = await create_queue(sqs, "orders.fifo", VisibilityTimeout="5")
    groups = ["alpha", "beta", "gamma"]
    bodies = [f"{group}-{i}" for i in range(8) for group in groups]  # groups interleaved
    # A group's third message fails on its first delivery, another's sixth on its first two: bisect
    # isolates them, and the later messages of those groups must wait for their redelivery.
    await send(sqs, url, bodies, group=lambda body: body.split("-")[0])
    config = make_config(
        moto_endpoint,
        url,
        "sqs_handlers:in_order",
        function={"environment": {"FAIL_BELOW_RECEIVE": json.dumps({"alpha-2": 2, "beta-5": 3})}},
        bisect_batch_on_function_error=True,
        scaling_config={"maximum_concurrency": 3},
    )
    async with running(config, unhurried_retries=True) as app:
        await wait_for(lambda: len(bodies_succeeded(name)) >= len(bodies), timeout=60, message="all handled")
        await wait_for(lambda: sqs_queue_is_empty(sqs, url), timeout=30, message="queue empty")
        assert app.runners["m"].status.counts.dead_lettered == 0
    succeeded = sqs_handlers.succeeded(name)
    # Every invocation, with each message's receive count: what to look at when the order breaks.
    calls = [
        [(r["body"], r["attributes"]["ApproximateReceiveCount"]) for r in call]
        for call in sqs_handlers.calls(name)
    ]
    for group in groups:
        order = [int(r["body"].split("-")[1]) for r in succeeded if r["body"].startswith(group + "-")]
        assert order == list(range(8)), f"group {group} processed as {order}; invocations: {calls}"
    receive_counts = {r["body"]: r["attributes"]["ApproximateReceiveCount"] for r in succeeded}
    assert receive_counts["alpha-2"] == "2"
    assert receive_counts["beta-5"] == "3"
    assert all(r["attributes"]["MessageGroupId"] == r["body"].split("-")[0] for r in succeeded)


async def test_powertools_batch_processor_works_unchanged(sqs: Any, moto_endpoint: str) -> None:
    url, name = await create_queue(sqs, "powertools")
    bodies = [json.dumps({"order": i, "fail": i in (2, 7)}) for i in range(10)]
    ids = await send(sqs, url, bodies, attributes={"tenant": ATTRIBUTES["tenant"]})
    config = make_config(
        moto_endpoint, url, "sqs_handlers:powertools", function_response_types=["ReportBatchItemFailures"]
    )
    async with running(config) as app:
        await wait_for(lambda: sqs_queue_is_empty(sqs, url), timeout=30, message="queue empty")
        stats = app.runners["m"].status.counts
        assert stats.dead_lettered == 0
    seen = [entry for call in recording.entries("powertools:" + name) for entry in call]
    attempts = Counter(entry["messageId"] for entry in seen)
    assert attempts == {message_id: 2 if i in (2, 7) else 1 for i, message_id in enumerate(ids)}
    retried = [entry for entry in seen if entry["receiveCount"] == "2"]
    assert sorted(entry["body"]["order"] for entry in retried) == [2, 7]
    assert all(entry["tenant"] == "acme" and entry["region"] == REGION for entry in seen)


async def test_failure_record_too_large_for_the_queue_overflows_to_s3(sqs: Any, moto_endpoint: str) -> None:
    url, _ = await create_queue(sqs, "large")
    dlq_url, dlq = await create_queue(sqs, "large-dlq", MaximumMessageSize="262144")
    bucket = unique_name("overflow")[:63]
    async with aws(moto_endpoint, "s3") as s3:
        await s3.create_bucket(Bucket=bucket)
        big = "x" * 300_000  # fits the source queue (1 MiB), not the destination (256 KiB)
        await send(sqs, url, [big])
        config = make_config(
            moto_endpoint,
            url,
            "sqs_handlers:always_fail",
            destination={"type": "sqs", "queue": dlq, "overflow_bucket": bucket},
            maximum_retry_attempts=0,
        )
        async with running(config):
            [message] = await receive_all(sqs, dlq_url, 1)
        pointer = json.loads(message["Body"])
        assert pointer["records"] == []
        assert "262144 bytes" in pointer["recordsOmitted"]
        location = pointer["recordsLocation"]
        assert location["bucket"] == bucket
        assert location["key"].startswith("aws/lambda/m/")
        stored = json.loads(await (await s3.get_object(Bucket=bucket, Key=location["key"]))["Body"].read())
    assert stored["records"][0]["body"] == big
    assert stored["requestContext"] == pointer["requestContext"]


async def test_unknown_queue_stops_the_service_at_start(moto_endpoint: str) -> None:
    config = make_config(moto_endpoint, unique_name("missing"), "sqs_handlers:collect")
    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(App(config, drain_timeout=5).run(), 30)
    assert raised.group_contains(SourceError, match="NonExistentQueue")


async def test_fifo_queue_refuses_batches_larger_than_ten(sqs: Any, moto_endpoint: str) -> None:
    _, name = await create_queue(sqs, "big.fifo")
    arn = f"arn:aws:sqs:{REGION}:123456789012:{name}"  # moto's account; the queue given as an ARN
    config = make_config(
        moto_endpoint, arn, "sqs_handlers:collect", batch_size=20, maximum_batching_window_in_seconds=1
    )
    with pytest.raises(ExceptionGroup) as raised:
        await asyncio.wait_for(App(config, drain_timeout=5).run(), 30)
    assert raised.group_contains(SourceError, match="too large for a FIFO queue")


async def test_dev_create_makes_the_queues_topics_and_buckets_a_config_names(
    sqs: Any, moto_endpoint: str, tmp_path: Path
) -> None:
    from poller.devtools import dev

    source, dlq, fifo = unique_name("src")[:60], unique_name("dlq")[:60], unique_name("f")[:60] + ".fifo"
    topic, bucket, overflow = unique_name("topic"), unique_name("bucket")[:63], unique_name("overflow")[:63]
    config = make_config(moto_endpoint, source, "handlers.echo:handler").model_dump(mode="json")
    config["destinations"] = {
        "dlq": {"type": "sqs", "connection": "aws", "queue": dlq, "overflow_bucket": overflow},
        "fifo": {"type": "sqs", "connection": "aws", "queue": f"arn:aws:sqs:{REGION}:123456789012:{fifo}"},
        "topic": {
            "type": "sns",
            "connection": "aws",
            "topic_arn": f"arn:aws:sns:{REGION}:123456789012:{topic}",
        },
        "archive": {"type": "s3", "connection": "aws", "bucket": bucket},
    }
    path = tmp_path / "dev.yaml"
    path.write_text(json.dumps(config))
    # main() runs its own event loop, as the compose init container does.
    assert await asyncio.to_thread(dev.main, ["create", "-c", str(path)]) == 0
    assert await asyncio.to_thread(dev.main, ["create", "-c", str(path)]) == 0, "idempotent"
    for name in (source, dlq, fifo):
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        response = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["FifoQueue"])
        # SQS names FifoQueue for FIFO queues only.
        fifo_queue = response.get("Attributes", {}).get("FifoQueue", "false")
        assert fifo_queue == ("true" if name == fifo else "false")
    async with aws(moto_endpoint, "sns") as sns:
        topics = [entry["TopicArn"] for entry in (await sns.list_topics())["Topics"]]
    assert any(arn.endswith(":" + topic) for arn in topics)
    async with aws(moto_endpoint, "s3") as s3:
        buckets = {entry["Name"] for entry in (await s3.list_buckets())["Buckets"]}
    assert {bucket, overflow} <= buckets
