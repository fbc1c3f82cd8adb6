"""The compose init step, `python -m poller.devtools.dev create`, against a real Kafka broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from support import unique_name

from poller.devtools import dev

pytestmark = pytest.mark.kafka


async def test_create_makes_the_topics_a_config_names(kafka_bootstrap: str, tmp_path: Path) -> None:
    source, dead_letters = unique_name("orders"), unique_name("orders-dlq")
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "connections": {"kafka": {"type": "kafka", "bootstrap_servers": kafka_bootstrap}},
                "functions": {"fn": {"handler": "handlers.echo:handler"}},
                "destinations": {"dlq": {"type": "kafka", "connection": "kafka", "topic": dead_letters}},
                "mappings": {
                    "m": {
                        "function_name": "fn",
                        "source": {"type": "kafka", "connection": "kafka", "topics": [source]},
                        "destination_config": {"on_failure": {"destination": "dlq"}},
                    }
                },
            }
        )
    )
    # main() runs its own event loop, as the compose init container does.
    assert await asyncio.to_thread(dev.main, ["create", "-c", str(config)]) == 0
    assert await asyncio.to_thread(dev.main, ["create", "-c", str(config)]) == 0, "idempotent"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        assert {source, dead_letters} <= set(await admin.list_topics())
    finally:
        await admin.close()


def test_create_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("mappings: {m: {nonsense: 1}}\n")
    assert dev.main(["create", "-c", str(config)]) == 2
