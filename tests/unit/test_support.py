"""The shared test helpers and the stand-in launcher do what the other tests rely on."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from support import (
    KAFKA_TEST_GROUP_SETTINGS,
    committed_offsets,
    consume_all,
    create_topic,
    produce,
    recorded_lines,
    unique_name,
    wait_for,
)

from poller.devtools.standins import LOOPBACK, port_open, start_kafka, stop_recorded

KAFKA_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def test_unique_names_are_valid_kafka_names_and_differ() -> None:
    names = {unique_name("orders"), unique_name("orders"), unique_name("weird/prefix with spaces")}
    assert len(names) == 3
    assert all(KAFKA_NAME.match(name) for name in names)
    assert unique_name("orders").startswith("orders-")


async def test_wait_for_returns_the_first_truthy_value_of_sync_and_async_predicates() -> None:
    calls = 0

    def third_time() -> int:
        nonlocal calls
        calls += 1
        return calls if calls >= 3 else 0

    async def ready() -> str:
        return "ready"

    assert await wait_for(third_time, timeout=5, interval=0.001) == 3
    assert await wait_for(ready, timeout=5) == "ready"


async def test_wait_for_fails_with_the_message_on_timeout() -> None:
    with pytest.raises(pytest.fail.Exception, match="never true"):
        await wait_for(lambda: False, timeout=0.05, interval=0.01, message="never true")


def test_group_settings_are_keys_of_the_kafka_source_config() -> None:
    from poller.config import KafkaSource

    assert set(KAFKA_TEST_GROUP_SETTINGS) <= set(KafkaSource.model_fields)


def test_start_kafka_starts_owns_and_stops_a_broker(tmp_path: Path) -> None:
    port = _free_port()
    stand_in = start_kafka(port, tmp_path)
    assert stand_in is not None
    try:
        assert port_open(LOOPBACK, port)
        assert (tmp_path / "tansu.pid").read_text().strip() == str(stand_in.process.pid)
        # Someone else's broker (here: our own) is left alone.
        assert start_kafka(port, tmp_path) is None
    finally:
        stand_in.stop()
    assert stand_in.process.returncode is not None
    assert not port_open(LOOPBACK, port)
    assert not (tmp_path / "tansu.pid").exists()
    stand_in.stop()


def test_stop_recorded_stops_what_the_pid_files_name(tmp_path: Path) -> None:
    port = _free_port()
    stand_in = start_kafka(port, tmp_path)
    assert stand_in is not None
    try:
        assert stop_recorded(tmp_path) == [f"tansu (pid {stand_in.process.pid})"]
        assert stand_in.process.wait(5) is not None
        assert not (tmp_path / "tansu.pid").exists()
    finally:
        stand_in.stop()


def test_stop_recorded_ignores_a_pid_that_is_not_a_stand_in(tmp_path: Path) -> None:
    # Our own pid stands in for an unrelated process that reused a stale pid.
    (tmp_path / "tansu.pid").write_text(f"{os.getpid()}\n")
    assert stop_recorded(tmp_path) == []
    assert not (tmp_path / "tansu.pid").exists()


@pytest.mark.kafka
async def test_topic_produce_and_consume_all_round_trip(kafka_bootstrap: str) -> None:
    topic = unique_name("support")
    await create_topic(kafka_bootstrap, topic, partitions=4)
    records = [(i % 4, f"key-{i}", f"value-{i}".encode(), [("n", str(i).encode())]) for i in range(20)]

    positions = await produce(kafka_bootstrap, topic, records)
    messages = await consume_all(kafka_bootstrap, topic, expected_count=20, timeout=30)

    assert sorted(positions) == [(p, o) for p in range(4) for o in range(5)]
    assert len(messages) == 20
    by_value = {message.value: message for message in messages}
    assert by_value[b"value-7"].partition == 3
    assert by_value[b"value-7"].key == b"key-7"
    assert list(by_value[b"value-7"].headers) == [("n", b"7")]


@pytest.mark.kafka
async def test_committed_offsets_are_none_for_an_unknown_group(kafka_bootstrap: str) -> None:
    topic = unique_name("support")
    await create_topic(kafka_bootstrap, topic, partitions=2)
    assert await committed_offsets(kafka_bootstrap, unique_name("nobody"), topic, 2) == {0: None, 1: None}


@pytest.mark.kafka
async def test_committed_offsets_reads_what_a_group_committed(kafka_bootstrap: str) -> None:
    topic = unique_name("support")
    group = unique_name("group")
    await create_topic(kafka_bootstrap, topic, partitions=2)
    await produce(kafka_bootstrap, topic, [(1, None, b"x", None)] * 3)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 1)])
        await consumer.commit({TopicPartition(topic, 1): 3})
    finally:
        await consumer.stop()

    assert await committed_offsets(kafka_bootstrap, group, topic, [0, 1]) == {0: None, 1: 3}


def test_recorded_lines_leave_a_line_still_being_written_for_later(tmp_path: Path) -> None:
    record_file = tmp_path / "handled.jsonl"
    assert recorded_lines(record_file) == []
    record_file.write_text('["shard-1", "1"]\n["shard-1", "2"]\n["shard-1", "3')
    assert recorded_lines(record_file) == ['["shard-1", "1"]', '["shard-1", "2"]']
    with record_file.open("a") as file:
        file.write('"]\n')
    assert recorded_lines(record_file)[-1] == '["shard-1", "3"]'
