"""The Kinesis harness: a stream on kinesalite, checkpoints in a SQLite file, failures to a file.

poller has no Kinesis destination, and a file keeps these tests to the one stand-in. While the
destination is down, a plain file stands where the destination's directory should be, so the
destination cannot create it; repairing it removes that file.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from kinesis_helpers import aws_connection, create_stream, delete_created_streams, put, shards, sqlite_leases
from support import unique_name, wait_for

from .base import MAPPING, BrokerHarness, Sent


class KinesisHarness(BrokerHarness):
    kind = "kinesis"
    ordered = True

    def __init__(self, endpoint: str, tmp_path: Path) -> None:
        self.endpoint = endpoint
        self.checkpoints = tmp_path / "checkpoints.db"
        self.dead_letter_file = tmp_path / "dead-letters" / "failed.jsonl"
        self._keys: dict[tuple[str, int], str] = {}  # (shard, sequence number) -> partition key
        self._read = 0  # failure records dead_letters returned so far

    async def create(self, lanes: int = 1, *, destination_up: bool = True) -> None:
        self.lanes = lanes
        self.resource = unique_name("guarantee")
        await create_stream(self.endpoint, self.resource, lanes)
        self._hash_keys = [
            s["HashKeyRange"]["StartingHashKey"] for s in await shards(self.endpoint, self.resource)
        ]
        if not destination_up:
            self.dead_letter_file.parent.write_text("not a directory")

    async def repair_destination(self) -> None:
        self.dead_letter_file.parent.unlink()

    async def close(self) -> None:
        await delete_created_streams()

    def connections(self) -> dict[str, Any]:
        return {"aws": aws_connection(self.endpoint)}

    def source(self) -> dict[str, Any]:
        return {"type": "kinesis", "connection": "aws", "stream": self.resource, "poll_interval_seconds": 0.1}

    def destination(self) -> dict[str, Any]:
        return {"type": "file", "path": str(self.dead_letter_file)}

    def mapping_defaults(self) -> dict[str, Any]:
        return {"checkpoints": {"type": "sqlite", "path": str(self.checkpoints)}}

    async def produce(self, bodies: list[str]) -> list[Sent]:
        sent: dict[int, Sent] = {}
        for lane, hash_key in enumerate(self._hash_keys):
            indexes = range(lane, len(bodies), self.lanes)
            records = [(f"key-{i}", bodies[i].encode()) for i in indexes]
            written = await put(self.endpoint, self.resource, records, hash_key=hash_key)
            for i, (shard, sequence) in zip(indexes, written, strict=True):
                self._keys[shard, int(sequence)] = f"key-{i}"
                sent[i] = Sent(shard, int(sequence), bodies[i])
        return [sent[i] for i in range(len(bodies))]

    async def unsettled(self) -> int:
        leases = sqlite_leases(self.checkpoints, MAPPING, self.resource)
        checkpoints = {shard: lease["checkpoint"] for shard, lease in leases.items()}
        return sum(1 for shard, sequence in self._keys if not _covers(checkpoints.get(shard), sequence))

    async def dead_letters(self, count: int) -> list[dict[str, Any]]:
        def lines() -> list[str]:
            file = self.dead_letter_file
            return file.read_text().splitlines() if file.is_file() else []

        if count:
            await wait_for(
                lambda: len(lines()) >= self._read + count, timeout=60, message=f"{count} failure records"
            )
        new = lines()[self._read :]
        self._read += len(new)
        return [json.loads(line) for line in new]

    def check_source_info(self, info: dict[str, Any], sent: Sent) -> None:
        sequence = str(sent.position)
        arrival = info["approximateArrivalOfFirstRecord"]
        assert info == {
            "type": "kinesis",
            "shardId": sent.lane,
            "startSequenceNumber": sequence,
            "endSequenceNumber": sequence,
            "approximateArrivalOfFirstRecord": arrival,
            "approximateArrivalOfLastRecord": arrival,
            "batchSize": 1,
            "streamArn": f"arn:aws:kinesis:us-east-1:000000000000:stream/{self.resource}",
        }
        assert arrival.endswith("Z")

    def check_record(self, record: dict[str, Any], sent: Sent) -> None:
        sequence = str(sent.position)
        assert record["eventID"] == f"{sent.lane}:{sequence}"
        assert record["eventSource"] == "aws:kinesis"
        assert record["kinesis"]["sequenceNumber"] == sequence
        assert record["kinesis"]["partitionKey"] == self._keys[sent.lane, int(sequence)]
        assert base64.b64decode(record["kinesis"]["data"]) == sent.body.encode()


def _covers(checkpoint: str | None, sequence: int) -> bool:
    """Whether a shard's checkpoint is at or past ``sequence``."""
    if checkpoint == "SHARD_END":
        return True
    return checkpoint is not None and checkpoint.isdigit() and int(checkpoint) >= sequence
