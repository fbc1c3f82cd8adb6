"""Tumbling windows on Kinesis (kinesalite) and Kafka (tansu), against the real brokers (SPEC 15):
state carried from invocation to invocation, exactly one final invocation per window and partition
as the window's last, final states that count exactly the window's records, nothing lost or counted
twice, and a restart in the middle of a window that resumes it with its state."""

from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kinesis_helpers import aws_connection, create_stream, delete_created_streams, put
from support import (
    KAFKA_TEST_GROUP_SETTINGS,
    create_topic,
    mapping_config,
    produce,
    recorded_lines,
    running,
    unique_name,
    wait_for,
)

from poller.config import Config

HANDLER = "window_handlers:count"


@dataclass
class Broker:
    """How the tests make a windowed mapping of one broker and write records to it."""

    name: str
    config: Callable[[Path, int], Awaitable[Config]]
    produce: Callable[[int, int], Awaitable[None]]  # (count, first key number)


@pytest.fixture(
    params=[
        pytest.param("kafka", marks=pytest.mark.kafka),
        pytest.param("kinesis", marks=pytest.mark.kinesis),
    ]
)
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Broker]:
    log = tmp_path / "windows.jsonl"
    function = {"environment": {"WINDOW_LOG": str(log)}}
    if request.param == "kafka":
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        topic = unique_name("windows")
        await create_topic(bootstrap, topic, partitions=2)
        group = unique_name("group")

        async def kafka_config(store: Path, length: int) -> Config:
            source = {
                "type": "kafka",
                "connection": "k",
                "topics": [topic],
                "consumer_group_id": group,
                **KAFKA_TEST_GROUP_SETTINGS,
            }
            return mapping_config(
                {"k": {"type": "kafka", "bootstrap_servers": bootstrap}},
                source,
                HANDLER,
                function=function,
                tumbling_window_in_seconds=length,
                maximum_batching_window_in_seconds=0.1,
                checkpoints={"type": "sqlite", "path": str(store)},
            )

        async def kafka_produce(count: int, first: int) -> None:
            await produce(
                bootstrap,
                topic,
                [(i % 2, None, json.dumps({"key": f"k{i % 3}"}), None) for i in range(first, first + count)],
            )

        yield Broker("kafka", kafka_config, kafka_produce)
    else:
        endpoint = request.getfixturevalue("kinesis_endpoint")
        stream = unique_name("windows")
        await create_stream(endpoint, stream, 2)

        async def kinesis_config(store: Path, length: int) -> Config:
            return mapping_config(
                {"aws": aws_connection(endpoint)},
                {"type": "kinesis", "connection": "aws", "stream": stream, "poll_interval_seconds": 0.1},
                HANDLER,
                function=function,
                tumbling_window_in_seconds=length,
                checkpoints={"type": "sqlite", "path": str(store)},
            )

        async def kinesis_produce(count: int, first: int) -> None:
            await put(
                endpoint,
                stream,
                [
                    (f"user-{i}", json.dumps({"key": f"k{i % 3}"}).encode())
                    for i in range(first, first + count)
                ],
            )

        yield Broker("kinesis", kinesis_config, kinesis_produce)
        await delete_created_streams()


def invocations(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in recorded_lines(tmp_path / "windows.jsonl")]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def until_window_starts(length: int, *, margin: float = 0.3) -> None:
    """Wait until the wall clock is ``margin`` seconds into the next window."""
    start = (time.time() // length + 1) * length + margin
    await wait_for(lambda: time.time() >= start, timeout=length + 1, interval=0.02, message="the next window")


def by_window(lines: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    windows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        windows[(line["partition"], line["window"]["start"])].append(line)
    return windows


def records_seen(lines: list[dict[str, Any]]) -> list[str]:
    return [identity for line in lines if not line["final"] for identity, _ in line["records"]]


async def test_every_window_gets_its_state_and_one_final_invocation_with_an_exact_count(
    broker: Broker, tmp_path: Path
) -> None:
    length = 2
    config = await broker.config(tmp_path / "windows.db", length)
    async with running(config):
        produced = 0
        for burst in (30, 20, 10):
            await until_window_starts(length)
            await broker.produce(burst, produced)
            produced += burst

        def all_closed() -> bool:
            windows = by_window(invocations(tmp_path))
            return len(records_seen(invocations(tmp_path))) == produced and all(
                lines[-1]["final"] for lines in windows.values()
            )

        await wait_for(all_closed, timeout=30, message="every window closed")
    lines = invocations(tmp_path)
    seen = records_seen(lines)
    assert sorted(seen) == sorted(set(seen)), "no record handled twice"
    assert len(seen) == produced, "none lost"
    windows = by_window(lines)
    assert len({start for _, start in windows}) >= 3
    for (partition, start), mine in windows.items():
        assert [line["final"] for line in mine] == [False] * (len(mine) - 1) + [True], (partition, start)
        assert mine[0]["state_in"] == {}, "a window opens with an empty state"
        for before, after in itertools.pairwise(mine):
            assert after["state_in"] == before["state_out"], (
                "each invocation gets the state the previous returned"
            )
        final = mine[-1]
        assert final["records"] == []
        assert not final["early"]
        inside = [stamp for line in mine for _, stamp in line["records"]]
        assert all(epoch(start) <= stamp < epoch(final["window"]["end"]) for stamp in inside)
        assert final["state_in"]["count"] == len(inside), (
            "the final state counts exactly the window's records"
        )
        assert final["arn"].startswith("arn:aws:")


async def test_a_restart_in_the_middle_of_a_window_resumes_it_with_its_state(
    broker: Broker, tmp_path: Path
) -> None:
    length = 8
    store = tmp_path / "windows.db"
    await until_window_starts(length)
    async with running(await broker.config(store, length)):
        await broker.produce(20, 0)
        await wait_for(
            lambda: len(records_seen(invocations(tmp_path))) == 20, timeout=10, message="first part"
        )
    assert not any(line["final"] for line in invocations(tmp_path)), "the window is still open"
    async with running(await broker.config(store, length)):
        await broker.produce(20, 20)
        await wait_for(
            lambda: sum(line["final"] for line in invocations(tmp_path)) == 2,
            timeout=length + 15,
            message="the window of each partition closed",
        )
    lines = invocations(tmp_path)
    seen = records_seen(lines)
    assert sorted(seen) == sorted(set(seen))
    assert len(seen) == 40
    finals = [line for line in lines if line["final"]]
    assert len({line["window"]["start"] for line in finals}) == 1, "one window, resumed"
    assert sum(line["state_in"]["count"] for line in finals) == 40
