"""Shard leases and checkpoints of Kinesis mappings, in the style of the Kinesis Client Library.

One lease per shard holds the shard's checkpoint and, while a poller process reads the shard, its
owner and a counter. Every write that changes a lease is conditional on the counter (and on the
owner for the owner's own writes), so a process that lost a lease can neither checkpoint nor renew
it any more. The coordination itself (renewing, taking, balancing) lives in
:mod:`poller.sources.kinesis.leases.coordinator` and is the same for every store:

- ``sqlite`` (:mod:`poller.sources.kinesis.leases.sqlite`): a file on local disk, the default; one process uses it
  at a time, so it takes every lease it finds.
- ``dynamodb`` (:mod:`poller.sources.kinesis.leases.dynamodb`): a lease table shared by several ``poller run``
  processes, which split the shards between them.

See https://docs.aws.amazon.com/streams/latest/dev/kcl-concepts.html for the model.
"""

from __future__ import annotations

from poller.config import AwsConnection, Config, DynamoDBCheckpoints, SqliteCheckpoints
from poller.sources.kinesis.leases.dynamodb import DynamoDBLeaseStore
from poller.sources.kinesis.leases.lease import (
    AT_TIMESTAMP,
    LATEST,
    SHARD_END,
    STARTING_POSITIONS,
    TRIM_HORIZON,
    Lease,
    LeaseStore,
)
from poller.sources.kinesis.leases.sqlite import SqliteLeaseStore

__all__ = [
    "AT_TIMESTAMP",
    "LATEST",
    "SHARD_END",
    "STARTING_POSITIONS",
    "TRIM_HORIZON",
    "Lease",
    "LeaseStore",
    "build_lease_store",
    "lease_group",
]


def lease_group(mapping: str, stream: str) -> str:
    """The key under which one mapping's leases of one stream are kept: another mapping on the same
    stream, or this mapping pointed at another stream, starts from checkpoints of its own."""
    return f"{mapping}/{stream}"


def build_lease_store(
    settings: SqliteCheckpoints | DynamoDBCheckpoints,
    group: str,
    config: Config,
    *,
    lease_duration: float,
) -> LeaseStore:
    """The store a mapping's ``checkpoints`` setting names."""
    if isinstance(settings, SqliteCheckpoints):
        return SqliteLeaseStore(settings.path, group, lease_duration=lease_duration)
    connection = config.connection(settings.connection, AwsConnection)
    return DynamoDBLeaseStore(connection, settings.table, group, lease_duration=lease_duration)
