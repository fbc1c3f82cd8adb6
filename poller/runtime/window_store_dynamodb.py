"""Open tumbling windows in the DynamoDB lease table that a mapping's replicas share (its
``checkpoints`` setting; :mod:`poller.runtime.window_store` has the protocol and the SQLite store).
A state larger than an item may hold is compressed and, if it must be, split over several items.
"""

from __future__ import annotations

import logging
import time
import zlib
from contextlib import AsyncExitStack
from typing import Any

import orjson

from poller.config import AwsConnection
from poller.connections.aws import AWS_ERRORS, close_quietly, create_client, source_error
from poller.engine.windows import OpenWindow, stored_window, window_fields
from poller.errors import SourceError
from poller.sources.kinesis.leases.dynamodb import ensure_table

log = logging.getLogger(__name__)

# DynamoDB items hold at most 400 KB; a compressed state above this goes into several part items.
PART_BYTES = 350 * 1024


class DynamoDBWindowStore:
    """Windows as items of the lease table: ``leaseGroup`` = ``<group>#windows``, ``shardId`` = the
    partition. The state is zlib-compressed JSON; above :data:`PART_BYTES` it goes into part items
    (``<group>#window-parts``, ``<partition>#<version>#<n>``) written before the item that names
    their version, so a reader never sees half a state."""

    def __init__(self, connection: AwsConnection, table: str, group: str) -> None:
        self.connection = connection
        self.table = table
        self.group = group
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._parts: dict[str, tuple[str, int]] = {}  # partition -> (version, parts) as last written

    async def open(self) -> None:
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(create_client(self.connection, "dynamodb"))
            await ensure_table(self._client, self.table)
        except BaseException as exc:
            self._client = None
            await stack.aclose()
            if isinstance(exc, AWS_ERRORS):
                raise source_error(f"window table {self.table}", exc) from exc
            raise
        self._stack = stack

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        await close_quietly(stack, "the DynamoDB client")

    async def load(self, partition: str) -> OpenWindow | None:
        item = (await self._request("get_item", Key=self._key(partition), ConsistentRead=True)).get("Item")
        if item is None:
            return None
        parts = int(item.get("parts", {}).get("N", "0"))
        if parts:
            version = item["version"]["S"]
            state = b"".join([await self._part(partition, version, n) for n in range(parts)])
            self._parts[partition] = (version, parts)
        else:
            state = item["state"]["B"]
        through = item.get("through", {}).get("S")
        return stored_window(
            float(item["windowStart"]["N"]), float(item["windowEnd"]["N"]), through, zlib.decompress(state)
        )

    async def save(self, partition: str, window: OpenWindow) -> None:
        fields = window_fields(window)
        state = zlib.compress(orjson.dumps(window.state))
        item: dict[str, Any] = {
            **self._key(partition),
            "windowStart": {"N": repr(fields["start"])},
            "windowEnd": {"N": repr(fields["end"])},
        }
        if fields["through"] is not None:
            item["through"] = {"S": fields["through"]}
        if len(state) <= PART_BYTES:
            item["state"] = {"B": state}
        else:
            version = f"{time.time_ns():x}"
            chunks = [state[i : i + PART_BYTES] for i in range(0, len(state), PART_BYTES)]
            for n, chunk in enumerate(chunks):
                await self._request(
                    "put_item", Item={**self._part_key(partition, version, n), "data": {"B": chunk}}
                )
            item.update(version={"S": version}, parts={"N": str(len(chunks))})
        await self._request("put_item", Item=item)
        await self._forget_parts(partition)
        if "parts" in item:
            self._parts[partition] = (item["version"]["S"], len(chunks))

    async def drop(self, partition: str) -> None:
        await self._request("delete_item", Key=self._key(partition))
        await self._forget_parts(partition)

    async def _forget_parts(self, partition: str) -> None:
        """Delete the parts of the state written before (no item names them any more)."""
        version, parts = self._parts.pop(partition, ("", 0))
        for n in range(parts):
            try:
                await self._request("delete_item", Key=self._part_key(partition, version, n))
            except SourceError as exc:  # left behind: it only takes space
                log.warning("cannot delete an old part of the window state of %s: %s", partition, exc)

    async def _part(self, partition: str, version: str, n: int) -> bytes:
        item = await self._request("get_item", Key=self._part_key(partition, version, n), ConsistentRead=True)
        if "Item" not in item:
            raise SourceError(f"window table {self.table}: part {n} of the state of {partition} is missing")
        data: bytes = item["Item"]["data"]["B"]
        return data

    def _key(self, partition: str) -> dict[str, Any]:
        return {"leaseGroup": {"S": f"{self.group}#windows"}, "shardId": {"S": partition}}

    def _part_key(self, partition: str, version: str, n: int) -> dict[str, Any]:
        return {
            "leaseGroup": {"S": f"{self.group}#window-parts"},
            "shardId": {"S": f"{partition}#{version}#{n}"},
        }

    async def _request(self, operation: str, **arguments: Any) -> dict[str, Any]:
        if self._client is None:
            raise SourceError(f"window table {self.table} used before open()")
        try:
            response: dict[str, Any] = await getattr(self._client, operation)(
                TableName=self.table, **arguments
            )
        except AWS_ERRORS as exc:
            raise source_error(f"window table {self.table}", exc) from exc
        return response
