"""The real process on an SQS queue: stopped with SIGTERM, it hands back what it has not started.

(``kill -9`` and SIGTERM mid-batch are tested for every source in ``test_guarantees_process.py``.)
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from sqs_support import REGION, aws, create_queue, send
from support import (
    poller_log,
    recorded_lines,
    sigterm_once,
    sqs_queue_is_empty,
    start_poller,
    started_batches,
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.sqs


def write_config(path: Path, endpoint: str, queue: str, **mapping: Any) -> Path:
    config = {
        "connections": {"aws": {"type": "aws", "region": REGION, "endpoint_url": endpoint}},
        "functions": {"fn": {"handler": "guarantee_handlers:to_file", "timeout": 30}},
        "mappings": {
            "m": {
                "function_name": "fn",
                # Short long polls: they end within the grace that shutdown gives them.
                "source": {"type": "sqs", "connection": "aws", "queue": queue, "wait_time_seconds": 1},
                **mapping,
            }
        },
        "admin": {"port": 0},
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


def handled(record_file: Path) -> list[str]:
    """The bodies the handler finished ([lane, position, body] lines)."""
    return [json.loads(line)[2] for line in recorded_lines(record_file)]


async def test_sigterm_finishes_the_batch_and_hands_back_the_rest_at_once(
    moto_endpoint: str, tmp_path: Path
) -> None:
    async with aws(moto_endpoint, "sqs") as sqs:
        # A long visibility timeout: what comes back quickly was handed back, not timed out.
        url, _ = await create_queue(sqs, "drain", VisibilityTimeout="600")
        bodies = [f"drain-{i}" for i in range(30)]
        await send(sqs, url, bodies)
        config = write_config(
            tmp_path / "poller.yaml", moto_endpoint, url, scaling_config={"maximum_concurrency": 2}
        )
        record_file = tmp_path / "handled.jsonl"
        process = start_poller(config, record_file, 3.0)
        code = await sigterm_once(
            process, lambda: started_batches(record_file) >= 1, within=60, message="a slow batch started"
        )
        assert code == 0
        log = poller_log(config)
        assert "draining" in log
        assert handled(record_file)
        assert started_batches(record_file, ".finished") == started_batches(record_file), (
            "started batches finished"
        )
        # The rest is visible again at once for the next process, not after 600 s.
        second = start_poller(config, record_file, 0.0)
        try:
            await wait_for(
                lambda: set(handled(record_file)) >= set(bodies), timeout=30, message="rest handled"
            )
            await wait_for(lambda: sqs_queue_is_empty(sqs, url), timeout=30, message="queue empty")
        finally:
            second.send_signal(signal.SIGTERM)
            assert await wait_exit(second, 30) == 0
    seen = handled(record_file)
    assert set(seen) == set(bodies)
    # Each once, but for the rare message moto hands to two concurrent receives.
    assert len(seen) - len(bodies) <= 3
