"""The real process on Kafka: `poller run` with a bad config. (``kill -9`` and SIGTERM mid-batch are
tested for every source in ``test_guarantees_process.py``.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from support import KAFKA_TEST_GROUP_SETTINGS, poller_log, start_poller

pytestmark = pytest.mark.kafka


def write_config(path: Path, bootstrap: str, topic: str, group: str, **mapping: Any) -> Path:
    config = {
        "connections": {"kafka": {"type": "kafka", "bootstrap_servers": bootstrap}},
        "functions": {"fn": {"handler": "recorder:collect", "timeout": 30}},
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
