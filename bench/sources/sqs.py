"""SQS on LocalStack (host mode, the harness's own on 14566): raw aiobotocore loops and the poller.

moto's SQS costs O(queue depth) per call, so it cannot hold a
backlog; LocalStack's stays flat, but it is still the bottleneck at under 1,000 messages/s on
these 2 cores. Records/s then says little about the consumer, so the report compares CPU seconds
per 10,000 messages (``broker_bound``). When LocalStack cannot be set up, the bench falls back to
moto with a backlog of 500, for CPU per message only.

Both contenders run ``parallelism`` receive loops (the poller: ``scaling_config.
maximum_concurrency`` receivers, which it adds as receives come back full) of ReceiveMessage
(10, long poll) and DeleteMessageBatch. FastStream has no SQS broker.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any, TextIO

from bench import brokers
from bench.handlers import SENT_AT
from bench.progress import Progress
from bench.sources import SourceBench, Target, Workload
from bench.sources.aws import client, use_test_credentials
from poller.devtools.standins import start_moto

MOTO_PORT = 14599
FILL_CONCURRENCY = 8
WAIT_SECONDS = 20  # the poller's default long poll, for both


class SqsBench(SourceBench):
    name = "sqs"
    default_records = 5_000
    default_batch_size = 10  # AWS's default for SQS
    scaling_records = 3_000
    broker_bound = True

    def __init__(self) -> None:
        self.endpoint = ""
        self.broker = ""

    @staticmethod
    def poller_module() -> str | None:
        return "poller.sources.sqs"

    def scaling_batch_sizes(self, wanted: list[int]) -> list[int]:
        # A ReceiveMessage returns at most 10: larger batches only differ by the batching window.
        return [size for size in wanted if size <= 10]

    async def start(self, stack: AsyncExitStack) -> None:
        use_test_credentials()
        endpoint = await asyncio.to_thread(brokers.localstack, stack)
        if endpoint is not None:
            self.endpoint, self.broker = (
                endpoint,
                f"LocalStack {brokers.LOCALSTACK_VERSION} (host mode, hypercorn)",
            )
            return
        stand_in = await asyncio.to_thread(start_moto, MOTO_PORT, brokers.BROKER_STATE)
        if stand_in is not None:
            stack.callback(stand_in.stop)
        self.endpoint, self.broker = f"http://127.0.0.1:{MOTO_PORT}", "moto (LocalStack unavailable)"
        # moto slows with depth: keep the backlog shallow; only CPU per message means anything.
        type(self).default_records = 500
        type(self).scaling_records = 300

    def describe(self) -> str:
        return self.broker

    async def create_empty(self, workload: Workload) -> Target:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        async with client("sqs", self.endpoint) as sqs:
            created = await sqs.create_queue(QueueName=name)
        return Target(name, workload, {"url": created["QueueUrl"]})

    async def prepare(self, workload: Workload) -> Target:
        target = await self.create_empty(workload)
        body = os.urandom(workload.size // 2).hex()  # message bodies are text
        entries = [{"Id": str(i), "MessageBody": body} for i in range(10)]
        batches = -(-workload.records // 10)
        async with client("sqs", self.endpoint) as sqs:
            gate = asyncio.Semaphore(FILL_CONCURRENCY)

            async def send(number: int) -> None:
                count = min(10, workload.records - number * 10)
                async with gate:
                    await sqs.send_message_batch(QueueUrl=target.extra["url"], Entries=entries[:count])

            await asyncio.gather(*(send(n) for n in range(batches)))
        return target

    async def cleanup(self, target: Target) -> None:
        async with client("sqs", self.endpoint) as sqs:
            await sqs.delete_queue(QueueUrl=target.extra["url"])

    async def produce_paced(self, target: Target, rate: float, count: int) -> None:
        body = os.urandom(target.workload.size // 2).hex()
        async with client("sqs", self.endpoint) as sqs:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for number in range(count):
                delay = start + number / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await sqs.send_message(
                    QueueUrl=target.extra["url"],
                    MessageBody=body,
                    MessageAttributes={SENT_AT: {"DataType": "String", "StringValue": str(time.time_ns())}},
                )

    def poller_connection(self) -> dict[str, Any]:
        return {"type": "aws", "region": "us-east-1", "endpoint_url": self.endpoint}

    def poller_source(self, target: Target) -> dict[str, Any]:
        return {"type": "sqs", "queue": target.name, "wait_time_seconds": WAIT_SECONDS}

    def poller_mapping_extra(self, target: Target) -> dict[str, Any]:
        return {"scaling_config": {"maximum_concurrency": target.workload.parallelism}}

    def spec(self, target: Target, contender: str) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "url": target.extra["url"],
            "loops": target.workload.parallelism,
            "batch_size": min(10, target.workload.batch_size),
        }

    @classmethod
    async def consume(
        cls,
        contender: str,
        spec: dict[str, Any],
        progress: Progress,
        latency: TextIO | None,
        stop: asyncio.Event,
    ) -> None:
        if contender != "raw":
            raise ValueError(f"sqs has no contender {contender!r}")
        async with client("sqs", spec["endpoint"]) as sqs:
            loops = [
                asyncio.create_task(_receive_loop(sqs, spec, progress, latency)) for _ in range(spec["loops"])
            ]
            try:
                await stop.wait()
            finally:
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)


async def _receive_loop(sqs: Any, spec: dict[str, Any], progress: Progress, latency: TextIO | None) -> None:
    """The minimum: receive up to a batch, delete what came, repeat."""
    url = spec["url"]
    while True:
        response = await sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=spec["batch_size"],
            WaitTimeSeconds=WAIT_SECONDS,
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages", [])
        if not messages:
            continue
        if latency is not None:
            now = time.time_ns()
            for message in messages:
                sent = int(message["MessageAttributes"][SENT_AT]["StringValue"])
                latency.write(f"{sent} {(now - sent) / 1e9:.6f}\n")
        await sqs.delete_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
        )
        progress.add(len(messages))
