"""Two real `poller run` processes sharing a stream through a DynamoDB lease table; one is killed."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kinesis_helpers import aws_connection, create_stream, delete_created_streams, dynamodb_leases, put
from support import recorded_lines, spawn_poller, unique_name, wait_for

pytestmark = pytest.mark.kinesis

BATCH_SIZE = 20


@pytest.fixture(autouse=True)
async def _delete_streams() -> AsyncIterator[None]:
    yield
    await delete_created_streams()


def write_config(path: Path, connection: dict[str, Any], stream: str, table: str) -> Path:
    config = {
        "connections": {"aws": connection},
        "functions": {"fn": {"handler": "kinesis_recorder:to_file", "timeout": 30}},
        "mappings": {
            "m": {
                "function_name": "fn",
                "source": {
                    "type": "kinesis",
                    "connection": "aws",
                    "stream": stream,
                    "poll_interval_seconds": 0.2,
                },
                "batch_size": BATCH_SIZE,
                "checkpoints": {
                    "type": "dynamodb",
                    "connection": "aws",
                    "table": table,
                    "lease_duration_seconds": 3,
                },
            }
        },
        "admin": {"port": 0},
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def start_poller(config: Path, record_file: Path) -> subprocess.Popen[bytes]:
    # The two processes share a config, so each logs (as text) beside its own record file.
    return spawn_poller(
        config,
        {"RECORDER_FILE": str(record_file), "HANDLER_SLEEP": "0.2"},
        log=record_file.with_suffix(".log"),
        options=["--log-format", "text"],
    )


def lines(path: Path) -> list[tuple[str, str]]:
    return [tuple(json.loads(line)[:2]) for line in recorded_lines(path)]  # type: ignore[misc]


def owners(leases: dict[str, dict[str, Any]]) -> Counter[str]:
    return Counter(lease["owner"] for lease in leases.values() if lease["checkpoint"] != "SHARD_END")


def pid_of(owner: str | None) -> int:
    # Owners are "<host>:<pid>:<random>".
    return int((owner or "::").split(":")[1] or 0)


async def test_two_processes_split_the_shards_and_one_takes_over_after_kill_9(
    kinesis_endpoint: str, moto_endpoint: str, tmp_path: Path
) -> None:
    stream, table = unique_name("replicas"), unique_name("leases")
    await create_stream(kinesis_endpoint, stream, 4)
    written = await put(kinesis_endpoint, stream, [(f"k{i}", str(i).encode()) for i in range(4000)])
    config = write_config(
        tmp_path / "poller.yaml", aws_connection(kinesis_endpoint, moto_endpoint), stream, table
    )
    first_file, second_file = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first = start_poller(config, first_file)
    second: subprocess.Popen[bytes] | None = None
    try:
        await wait_for(
            lambda: len(lines(first_file)) >= 2 * BATCH_SIZE, timeout=60, message="first consuming"
        )
        second = start_poller(config, second_file)

        async def split_evenly() -> dict[str, dict[str, Any]] | None:
            leases = await dynamodb_leases(moto_endpoint, table, "m", stream)
            counts = owners(leases)
            pending = any(lease["pending"] for lease in leases.values())
            pids = {pid_of(owner) for owner in counts}
            even = pids == {first.pid, second.pid} and set(counts.values()) == {2} and not pending
            return leases if even else None

        leases = await wait_for(split_evenly, timeout=60, message="two shards each")
        await wait_for(lambda: lines(second_file), timeout=30, message="the second process working")
        killed_shards = {shard for shard, lease in leases.items() if pid_of(lease["owner"]) == first.pid}
        handled_by_first = len(lines(first_file))
        assert handled_by_first < 4000, "killed before the end"
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL

        async def all_taken_over() -> bool:
            leases = await dynamodb_leases(moto_endpoint, table, "m", stream)
            return {pid_of(owner) for owner in owners(leases)} == {second.pid}

        await wait_for(all_taken_over, timeout=30, message="the survivor holds every lease")
        everything = {(shard, sequence) for shard, sequence in written}
        await wait_for(
            lambda: set(lines(first_file)) | set(lines(second_file)) >= everything,
            timeout=90,
            message="every record handled",
        )
        await wait_for(
            lambda: checkpoints_at_end(moto_endpoint, table, stream, written),
            timeout=30,
            message="checkpointed",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)
    by_first, by_second = lines(first_file), lines(second_file)
    log = (tmp_path / "second.log").read_text()
    assert "took over the expired lease" in log
    assert set(by_first) | set(by_second) == everything, "nothing lost"
    counts = Counter(by_first + by_second)
    duplicates = {record for record, count in counts.items() if count > 1}
    assert max(counts.values()) <= 2
    # Only records of the killed process's shards were repeated, and per shard at most the batch it
    # had handled but not checkpointed (the checkpoint follows each batch): the survivor resumed
    # from the checkpoint, and the balancing handoffs themselves repeated nothing.
    assert {shard for shard, _ in duplicates} <= killed_shards
    per_shard: dict[str, int] = defaultdict(int)
    for shard, _ in duplicates:
        per_shard[shard] += 1
    assert all(count <= BATCH_SIZE for count in per_shard.values()), per_shard
    first_on = {shard: [seq for s, seq in by_first if s == shard] for shard in killed_shards}
    for shard, sequence in duplicates:
        assert sequence in first_on[shard][-BATCH_SIZE:], "a repeat comes from the first's last batch"
    print(
        f"first handled {len(by_first)}, second {len(by_second)}, repeated {len(duplicates)}: {dict(per_shard)}"
    )


async def checkpoints_at_end(endpoint: str, table: str, stream: str, written: list[tuple[str, str]]) -> bool:
    last = {shard: sequence for shard, sequence in written}
    leases = await dynamodb_leases(endpoint, table, "m", stream)
    return {shard: lease["checkpoint"] for shard, lease in leases.items()} == last
