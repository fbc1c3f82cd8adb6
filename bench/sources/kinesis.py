"""Kinesis on kinesalite (the harness's own, on 14567): raw aiobotocore readers and the poller.

The raw contender reads every shard from TRIM_HORIZON with GetRecords (the poller's ``Limit``:
``max(1000, 2 x batch size)``) and writes a checkpoint per GetRecords batch to SQLite (WAL,
synchronous=NORMAL, in a worker thread), as the poller's default lease store does; an empty read waits ``poll_interval_seconds`` (1 s, the
poller's default and the KCL's) before the next. FastStream has no Kinesis broker. Kinesis
records have no headers, so the latency suite's send time is the first 19 bytes of the data.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TextIO

from bench import brokers
from bench.progress import Progress
from bench.sources import SourceBench, Target, Workload
from bench.sources.aws import client, use_test_credentials

PUT_BATCH = 500  # PutRecords takes at most 500
FILL_CONCURRENCY = 4
IDLE_WAIT_SECONDS = 1.0


class KinesisBench(SourceBench):
    name = "kinesis"
    default_records = 20_000
    default_parallelism = 4  # shards

    def __init__(self) -> None:
        self.endpoint = ""

    @staticmethod
    def poller_module() -> str | None:
        return "poller.sources.kinesis"

    async def start(self, stack: AsyncExitStack) -> None:
        use_test_credentials()
        self.endpoint = await asyncio.to_thread(brokers.kinesalite, stack)

    def describe(self) -> str:
        return "kinesalite 3.3.3 (node, in memory)"

    async def create_empty(self, workload: Workload) -> Target:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        async with client("kinesis", self.endpoint) as kinesis:
            await kinesis.create_stream(StreamName=name, ShardCount=workload.parallelism)
            for _ in range(100):
                described = await kinesis.describe_stream_summary(StreamName=name)
                if described["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
                    break
                await asyncio.sleep(0.1)
        return Target(name, workload)

    async def prepare(self, workload: Workload) -> Target:
        target = await self.create_empty(workload)
        data = os.urandom(workload.size)
        async with client("kinesis", self.endpoint) as kinesis:
            gate = asyncio.Semaphore(FILL_CONCURRENCY)

            async def put(first: int) -> None:
                count = min(PUT_BATCH, workload.records - first)
                entries = [{"Data": data, "PartitionKey": f"key-{first + i}"} for i in range(count)]
                async with gate:
                    response = await kinesis.put_records(StreamName=target.name, Records=entries)
                if response.get("FailedRecordCount"):
                    raise RuntimeError(f"kinesalite refused {response['FailedRecordCount']} records")

            await asyncio.gather(*(put(first) for first in range(0, workload.records, PUT_BATCH)))
        return target

    async def cleanup(self, target: Target) -> None:
        async with client("kinesis", self.endpoint) as kinesis:
            await kinesis.delete_stream(StreamName=target.name)

    async def produce_paced(self, target: Target, rate: float, count: int) -> None:
        padding = os.urandom(max(0, target.workload.size - 19))
        async with client("kinesis", self.endpoint) as kinesis:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for number in range(count):
                delay = start + number / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                data = b"%019d" % time.time_ns() + padding
                await kinesis.put_record(StreamName=target.name, Data=data, PartitionKey=uuid.uuid4().hex)

    def poller_connection(self) -> dict[str, Any]:
        return {"type": "aws", "region": "us-east-1", "endpoint_url": self.endpoint}

    def poller_source(self, target: Target) -> dict[str, Any]:
        return {"type": "kinesis", "stream": target.name, "poll_interval_seconds": IDLE_WAIT_SECONDS}

    def poller_mapping_extra(self, target: Target) -> dict[str, Any]:
        path = brokers.STATE / "runs" / f"{target.name}-checkpoints.db"
        return {"checkpoints": {"type": "sqlite", "path": str(path)}}

    def spec(self, target: Target, contender: str) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "stream": target.name,
            "limit": min(10_000, max(1000, 2 * target.workload.batch_size)),
            "checkpoints": str(brokers.STATE / "runs" / f"{target.name}-raw-{contender}.db"),
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
            raise ValueError(f"kinesis has no contender {contender!r}")
        store = _Checkpoints(Path(spec["checkpoints"]))
        async with client("kinesis", spec["endpoint"]) as kinesis:
            shards = (await kinesis.list_shards(StreamName=spec["stream"]))["Shards"]
            readers = [
                asyncio.create_task(_read_shard(kinesis, spec, shard["ShardId"], store, progress, latency))
                for shard in shards
            ]
            try:
                await stop.wait()
            finally:
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                store.close()


async def _read_shard(
    kinesis: Any,
    spec: dict[str, Any],
    shard: str,
    store: _Checkpoints,
    progress: Progress,
    latency: TextIO | None,
) -> None:
    iterator = (
        await kinesis.get_shard_iterator(
            StreamName=spec["stream"], ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )
    )["ShardIterator"]
    while iterator:
        response = await kinesis.get_records(ShardIterator=iterator, Limit=spec["limit"])
        iterator = response.get("NextShardIterator")
        records = response["Records"]
        if not records:
            await asyncio.sleep(IDLE_WAIT_SECONDS)
            continue
        if latency is not None:
            now = time.time_ns()
            for record in records:
                sent = int(record["Data"][:19])
                latency.write(f"{sent} {(now - sent) / 1e9:.6f}\n")
        await asyncio.to_thread(store.write, shard, records[-1]["SequenceNumber"])
        progress.add(len(records))


class _Checkpoints:
    """One row per shard, as the poller's SQLite lease store keeps them."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS checkpoints (shard TEXT PRIMARY KEY, sequence TEXT)"
        )

    def write(self, shard: str, sequence: str) -> None:
        with self._connection:
            self._connection.execute("INSERT OR REPLACE INTO checkpoints VALUES (?, ?)", (shard, sequence))

    def close(self) -> None:
        self._connection.close()
