"""The real process: `poller run` killed with -9 mid-batch, stopped with SIGTERM mid-batch, bad config."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from support import (
    KAFKA_TEST_GROUP_SETTINGS,
    committed_offsets,
    create_topic,
    kill_9_mid_batch,
    poller_log,
    produce,
    recorded_lines,
    sigterm_once,
    start_poller,
    started_batches,
    unique_name,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.kafka


def write_config(path: Path, bootstrap: str, topic: str, group: str, **mapping: Any) -> Path:
    config = {
        "connections": {"kafka": {"type": "kafka", "bootstrap_servers": bootstrap}},
        "functions": {"fn": {"handler": "recorder:sleep_in_handler", "timeout": 30}},
        "mappings": {
            "m": {
                "function_name": "fn",
                "source": {
                    "type": "kafka",
                    "connection": "kafka",
                    "topics": [topic],
                    "consumer_group_id": group,
                    **KAFKA_TEST_GROUP_SETTINGS,
                },
                **mapping,
            }
        },
        "admin": {"port": 0},
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def lines(path: Path) -> list[tuple[int, int]]:
    return [tuple(json.loads(line)) for line in recorded_lines(path)]  # type: ignore[misc]


async def test_kill_9_mid_batch_then_restart_loses_nothing(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic, group = unique_name("crash"), unique_name("group")
    await create_topic(kafka_bootstrap, topic, 2)
    await produce(kafka_bootstrap, topic, [(i % 2, None, f"v{i}", None) for i in range(600)])
    config = write_config(tmp_path / "poller.yaml", kafka_bootstrap, topic, group, batch_size=50)
    record_file = tmp_path / "handled.jsonl"
    first = start_poller(config, record_file, 0.1)
    # Kill while a batch is inside the handler: more batches started than finished.
    code = await kill_9_mid_batch(
        first,
        record_file,
        lambda: len(lines(record_file)),
        batch_size=50,
        after=150,
        message="first records handled",
    )
    assert code == -signal.SIGKILL
    before_restart = lines(record_file)
    assert len(before_restart) < 600
    second = start_poller(config, record_file, 0.0)
    try:
        everything = {(i % 2, i // 2) for i in range(600)}
        await wait_for(
            lambda: set(lines(record_file)) >= everything, timeout=90, message="all records handled"
        )

        async def all_committed() -> bool:
            return await committed_offsets(kafka_bootstrap, group, topic, [0, 1]) == {0: 300, 1: 300}

        await wait_for(all_committed, timeout=30, message="offsets committed after the restart")
    finally:
        second.send_signal(signal.SIGTERM)
        assert await wait_exit(second, 30) == 0
    handled = lines(record_file)
    assert set(handled) == {(i % 2, i // 2) for i in range(600)}, "no record lost"
    # Duplicates only from what was in flight or uncommitted when the first process died.
    assert len(handled) - 600 <= 2 * 50 + 100


async def test_sigterm_mid_batch_finishes_it_commits_and_exits_0(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic, group = unique_name("drain"), unique_name("group")
    await create_topic(kafka_bootstrap, topic, 1)
    await produce(kafka_bootstrap, topic, [(0, None, f"v{i}", None) for i in range(10)])
    config = write_config(
        tmp_path / "poller.yaml",
        kafka_bootstrap,
        topic,
        group,
        batch_size=10,
        maximum_batching_window_in_seconds=1,
    )
    record_file = tmp_path / "handled.jsonl"
    process = start_poller(config, record_file, 3.0)
    code = await sigterm_once(
        process, lambda: started_batches(record_file) == 1, within=60, message="the slow batch started"
    )
    stderr = poller_log(config)
    assert code == 0, stderr
    assert lines(record_file) == [(0, i) for i in range(10)], "the in-flight batch finished"
    assert await committed_offsets(kafka_bootstrap, group, topic, [0]) == {0: 10}
    assert "draining" in stderr


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        ({"batchsize": 10}, "unknown key 'batchsize'"),
        ({"batch_size": "many"}, "batch_size"),
    ],
)
async def test_run_with_bad_config_exits_2(
    tmp_path: Path, mutation: dict[str, Any], expected: str, kafka_bootstrap: str
) -> None:
    config = write_config(tmp_path / "bad.yaml", kafka_bootstrap, "t", "g", **mutation)
    process = start_poller(config, tmp_path / "unused", 0)
    code = await asyncio.to_thread(process.wait, 30)
    stderr = poller_log(config)
    assert code == 2
    assert expected in stderr
    assert "Traceback" not in stderr
