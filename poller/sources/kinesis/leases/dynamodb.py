"""The shared lease store: a DynamoDB table, one item per shard, as the Kinesis Client Library keeps.

Several ``poller run`` processes with the same mapping point at the same table and split the
shards between them (:mod:`poller.sources.kinesis.leases.coordinator`). Items are keyed by ``leaseGroup`` (the
mapping and stream, see :func:`poller.sources.kinesis.leases.lease_group`) and ``shardId``, so one table can serve
several mappings. Attributes: ``checkpoint``, ``leaseOwner``, ``leaseCounter``, ``pendingOwner``,
``parentShardIds`` and ``leaseExpiresAt`` (epoch seconds, for people and dashboards only: expiry is
decided by watching the counter, so clocks need not agree). Every change is a conditional write.
The table is created (on-demand capacity) when it is missing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from contextlib import AsyncExitStack
from typing import Any

from botocore.exceptions import ClientError

from poller.config import AwsConnection
from poller.connections.aws import AWS_ERRORS, close_quietly, create_client, error_code, source_error
from poller.errors import SourceError
from poller.sources.kinesis.leases.lease import Lease

log = logging.getLogger(__name__)

_KEY_SCHEMA = [
    {"AttributeName": "leaseGroup", "KeyType": "HASH"},
    {"AttributeName": "shardId", "KeyType": "RANGE"},
]
_NAMES = {
    "#group": "leaseGroup",
    "#shard": "shardId",
    "#owner": "leaseOwner",
    "#counter": "leaseCounter",
    "#pending": "pendingOwner",
    "#checkpoint": "checkpoint",
    "#expires": "leaseExpiresAt",
}
_PLACEHOLDER = re.compile(r"[#:]\w+")
_TABLE_ACTIVE_TIMEOUT = 60.0
_OWNED = "#owner = :owner AND #counter = :counter"


class DynamoDBLeaseStore:
    """Leases of one lease group in a DynamoDB table (see the module docstring)."""

    def __init__(self, connection: AwsConnection, table: str, group: str, *, lease_duration: float) -> None:
        self.connection = connection
        self.table = table
        self.group = group
        self.lease_duration = lease_duration
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    async def open(self) -> None:
        stack = AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(create_client(self.connection, "dynamodb"))
            self._stack = stack
            await ensure_table(self._client, self.table)
        except BaseException as exc:
            self._stack = self._client = None
            await stack.aclose()
            if isinstance(exc, AWS_ERRORS):  # creating the client (no region, ...)
                raise source_error(f"lease table {self.table}", exc) from exc
            raise

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        await close_quietly(stack, "the DynamoDB client")

    async def list_leases(self) -> list[Lease]:
        leases: list[Lease] = []
        request: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#group = :group",
            "ExpressionAttributeNames": {"#group": "leaseGroup"},
            "ExpressionAttributeValues": {":group": {"S": self.group}},
            "ConsistentRead": True,
        }
        while True:
            response = await self._request("query", **request)
            leases += [_lease(item) for item in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                return leases
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    async def create(self, lease: Lease) -> bool:
        item = {
            "leaseGroup": {"S": self.group},
            "shardId": {"S": lease.shard_id},
            "parentShardIds": {"L": [{"S": parent} for parent in lease.parent_shard_ids]},
            "checkpoint": {"S": lease.checkpoint},
            "leaseCounter": {"N": "0"},
        }
        try:
            await self._require().put_item(
                TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(shardId)"
            )
        except AWS_ERRORS as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise source_error(f"lease table {self.table}", exc) from exc
        return True

    async def take(self, lease: Lease, owner: str) -> Lease | None:
        return await self._update(
            lease,
            "SET #owner = :new_owner, #counter = #counter + :one, #expires = :expires REMOVE #pending",
            "#counter = :counter",
            {":new_owner": {"S": owner}},
        )

    async def renew(self, lease: Lease) -> Lease | None:
        return await self._update(lease, "SET #counter = #counter + :one, #expires = :expires", _OWNED)

    async def checkpoint(self, lease: Lease, checkpoint: str, *, free: bool = False) -> Lease | None:
        update = "SET #checkpoint = :checkpoint, #counter = #counter + :one"
        update += " REMOVE #owner, #pending, #expires" if free else ", #expires = :expires"
        return await self._update(lease, update, _OWNED, {":checkpoint": {"S": checkpoint}})

    async def request_handoff(self, lease: Lease, owner: str) -> Lease | None:
        return await self._update(
            lease,
            "SET #pending = :new_owner",
            f"{_OWNED} AND attribute_not_exists(#pending)",
            {":new_owner": {"S": owner}},
        )

    async def hand_over(self, lease: Lease) -> Lease | None:
        return await self._update(
            lease,
            "SET #owner = #pending, #counter = #counter + :one, #expires = :expires REMOVE #pending",
            f"{_OWNED} AND attribute_exists(#pending)",
        )

    async def free(self, lease: Lease) -> Lease | None:
        return await self._update(
            lease, "SET #counter = #counter + :one REMOVE #owner, #pending, #expires", _OWNED
        )

    async def _update(
        self, lease: Lease, update: str, condition: str, values: dict[str, Any] | None = None
    ) -> Lease | None:
        available = {
            ":owner": {"S": lease.owner or ""},
            ":counter": {"N": str(lease.counter)},
            ":one": {"N": "1"},
            ":expires": {"N": f"{time.time() + self.lease_duration:.3f}"},
            **(values or {}),
        }
        # DynamoDB refuses names and values that the expressions do not use.
        used = set(_PLACEHOLDER.findall(update + " " + condition))
        try:
            response = await self._require().update_item(
                TableName=self.table,
                Key={"leaseGroup": {"S": self.group}, "shardId": {"S": lease.shard_id}},
                UpdateExpression=update,
                ConditionExpression=f"attribute_exists(#shard) AND {condition}",
                ExpressionAttributeNames={k: v for k, v in _NAMES.items() if k in used or k == "#shard"},
                ExpressionAttributeValues={k: v for k, v in available.items() if k in used},
                ReturnValues="ALL_NEW",
            )
        except AWS_ERRORS as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return None
            raise source_error(f"lease table {self.table}", exc) from exc
        return _lease(response["Attributes"])

    async def _request(self, operation: str, **arguments: Any) -> dict[str, Any]:
        try:
            response: dict[str, Any] = await getattr(self._require(), operation)(**arguments)
        except AWS_ERRORS as exc:
            raise source_error(f"lease table {self.table}", exc) from exc
        return response

    def _require(self) -> Any:
        if self._client is None:
            raise SourceError(f"lease table {self.table} used before open()")
        return self._client


async def ensure_table(client: Any, table: str) -> None:
    """Create the lease table if it is missing (another replica may be creating it at the same
    time) and wait until it is ACTIVE; refuse a table of another key schema. Raises SourceError."""
    try:
        description = await _describe(client, table)
        if description is None:
            log.info("creating the lease table %s", table)
            try:
                created = await client.create_table(
                    TableName=table,
                    KeySchema=_KEY_SCHEMA,
                    AttributeDefinitions=[
                        {"AttributeName": "leaseGroup", "AttributeType": "S"},
                        {"AttributeName": "shardId", "AttributeType": "S"},
                    ],
                    BillingMode="PAY_PER_REQUEST",
                )
                description = created["TableDescription"]
            except ClientError as exc:
                if error_code(exc) != "ResourceInUseException":  # another replica was faster
                    raise
        deadline = time.monotonic() + _TABLE_ACTIVE_TIMEOUT
        while description is None or description["TableStatus"] != "ACTIVE":
            if time.monotonic() > deadline:
                raise SourceError(f"lease table {table} did not become ACTIVE")
            await asyncio.sleep(0.5)
            description = await _describe(client, table)
    except AWS_ERRORS as exc:
        raise source_error(f"lease table {table}", exc, fatal_codes=frozenset()) from exc
    if sorted(description["KeySchema"], key=lambda k: k["KeyType"]) != _KEY_SCHEMA:
        raise SourceError(
            f"lease table {table} exists with another key schema; poller needs leaseGroup "
            "(hash) and shardId (range): name a table of its own",
            retriable=False,
        )


async def _describe(client: Any, table: str) -> dict[str, Any] | None:
    try:
        response = await client.describe_table(TableName=table)
    except ClientError as exc:
        if error_code(exc) == "ResourceNotFoundException":
            return None
        raise
    description: dict[str, Any] = response["Table"]
    return description


def _lease(item: dict[str, Any]) -> Lease:
    def text(name: str) -> str | None:
        value = item.get(name)
        return str(value["S"]) if value and "S" in value else None

    return Lease(
        shard_id=item["shardId"]["S"],
        parent_shard_ids=tuple(entry["S"] for entry in item.get("parentShardIds", {}).get("L", [])),
        checkpoint=text("checkpoint") or "",
        owner=text("leaseOwner"),
        counter=int(item.get("leaseCounter", {}).get("N", "0")),
        pending_owner=text("pendingOwner"),
    )
