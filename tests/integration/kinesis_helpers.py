"""Kinesis and lease-table helpers for the tests: streams on kinesalite, leases read back raw.

Leases are read with plain SQLite and DynamoDB queries rather than through poller's stores, so that
a test checks what is really stored (and opening a store would take the file over).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from support import mapping_config, wait_for

from poller.config import Config


@asynccontextmanager
async def kinesis_client(endpoint: str) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=endpoint
    ) as client:
        yield client


@asynccontextmanager
async def dynamodb_client(endpoint: str) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "dynamodb", region_name="us-east-1", endpoint_url=endpoint
    ) as client:
        yield client


# Streams created by the running test: kinesalite allows 100 shards an account, so they are
# deleted after each test (``delete_created_streams``).
_CREATED: list[tuple[str, str]] = []


async def create_stream(endpoint: str, name: str, shards: int) -> None:
    async with kinesis_client(endpoint) as client:
        await client.create_stream(StreamName=name, ShardCount=shards)
        _CREATED.append((endpoint, name))

        async def active() -> bool:
            summary = await client.describe_stream_summary(StreamName=name)
            return bool(summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE")

        await wait_for(active, timeout=30, message=f"stream {name} ACTIVE")


async def delete_created_streams() -> None:
    while _CREATED:
        endpoint, name = _CREATED.pop()
        async with kinesis_client(endpoint) as client:
            with contextlib.suppress(client.exceptions.ResourceNotFoundException):
                await client.delete_stream(StreamName=name, EnforceConsumerDeletion=True)


async def put(
    endpoint: str, stream: str, records: Sequence[tuple[str, bytes]], *, hash_key: str | None = None
) -> list[tuple[str, str]]:
    """Write (partition key, data) records in order, 500 a request; return their (shard, sequence).

    ``hash_key`` sends every record to the shard whose hash key range holds it.
    """
    written: list[tuple[str, str]] = []
    async with kinesis_client(endpoint) as client:
        for start in range(0, len(records), 500):
            chunk = records[start : start + 500]
            entries: list[dict[str, Any]] = [{"PartitionKey": key, "Data": data} for key, data in chunk]
            if hash_key is not None:
                for entry in entries:
                    entry["ExplicitHashKey"] = hash_key
            response = await client.put_records(StreamName=stream, Records=entries)
            assert response["FailedRecordCount"] == 0, response
            written += [(entry["ShardId"], entry["SequenceNumber"]) for entry in response["Records"]]
    return written


async def shards(endpoint: str, stream: str) -> list[dict[str, Any]]:
    async with kinesis_client(endpoint) as client:
        response = await client.list_shards(StreamName=stream)
        listed: list[dict[str, Any]] = response["Shards"]
        return listed


async def split(endpoint: str, stream: str, shard_id: str) -> None:
    """Split a shard in the middle of its hash key range."""
    shard = next(s for s in await shards(endpoint, stream) if s["ShardId"] == shard_id)
    low, high = (int(shard["HashKeyRange"][key]) for key in ("StartingHashKey", "EndingHashKey"))
    async with kinesis_client(endpoint) as client:
        await client.split_shard(
            StreamName=stream, ShardToSplit=shard_id, NewStartingHashKey=str((low + high) // 2)
        )


async def merge(endpoint: str, stream: str, shard_id: str, adjacent_shard_id: str) -> None:
    async with kinesis_client(endpoint) as client:
        await client.merge_shards(
            StreamName=stream, ShardToMerge=shard_id, AdjacentShardToMerge=adjacent_shard_id
        )


def sqlite_leases(path: Path, mapping: str, stream: str) -> dict[str, dict[str, Any]]:
    """The leases of one mapping and stream in a SQLite checkpoint file, by shard id."""
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(path)) as connection:
        created = connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'kinesis_leases'"
        ).fetchone()
        if created == (0,):  # the service is creating the file right now
            return {}
        rows = connection.execute(
            "SELECT shard_id, checkpoint, lease_owner, lease_counter, parent_shard_ids "
            "FROM kinesis_leases WHERE lease_group = ?",
            (f"{mapping}/{stream}",),
        ).fetchall()
    return {
        shard: {"checkpoint": checkpoint, "owner": owner, "counter": counter, "parents": json.loads(parents)}
        for shard, checkpoint, owner, counter, parents in rows
    }


async def dynamodb_leases(endpoint: str, table: str, mapping: str, stream: str) -> dict[str, dict[str, Any]]:
    """The items of one mapping and stream in a DynamoDB lease table, by shard id."""
    async with dynamodb_client(endpoint) as client:
        try:
            response = await client.query(
                TableName=table,
                KeyConditionExpression="leaseGroup = :group",
                ExpressionAttributeValues={":group": {"S": f"{mapping}/{stream}"}},
                ConsistentRead=True,
            )
        except client.exceptions.ResourceNotFoundException:
            return {}
    return {
        item["shardId"]["S"]: {
            "checkpoint": item["checkpoint"]["S"],
            "owner": item.get("leaseOwner", {}).get("S"),
            "pending": item.get("pendingOwner", {}).get("S"),
            "counter": int(item["leaseCounter"]["N"]),
        }
        for item in response["Items"]
    }


def aws_connection(kinesis_endpoint: str, moto_endpoint: str | None = None) -> dict[str, Any]:
    """One ``aws`` connection: Kinesis on kinesalite, the rest (DynamoDB) on moto."""
    endpoints = {"kinesis": kinesis_endpoint}
    if moto_endpoint is not None:
        endpoints["dynamodb"] = moto_endpoint
    return {"type": "aws", "region": "us-east-1", "endpoint_urls": endpoints}


def make_config(
    connection: dict[str, Any],
    stream: str,
    handler: str,
    *,
    destination: dict[str, Any] | None = None,
    function: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    **mapping: Any,
) -> Config:
    """A config with one Kinesis mapping ``m`` of function ``fn``; ``source`` adds source keys."""
    return mapping_config(
        {"aws": connection},
        {
            "type": "kinesis",
            "connection": "aws",
            "stream": stream,
            "poll_interval_seconds": 0.1,
            **(source or {}),
        },
        handler,
        dlq=destination,
        function=function,
        **mapping,
    )
