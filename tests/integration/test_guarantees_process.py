"""The delivery guarantees of the real process, `poller run`, against all four sources (SPEC 6).

``kill -9`` in the middle of a batch loses nothing: a restarted process handles what the killed
one had not committed, and repeats at most what it held. SIGTERM in the middle of a batch lets the
batch finish and commit, and the process exits 0. The handler is ``guarantee_handlers:to_file``.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from harness import BrokerHarness
from support import (
    kill_9_mid_batch,
    poller_log,
    recorded_lines,
    sigterm_once,
    start_poller,
    started_batches,
    wait_exit,
    wait_for,
)

from poller.redaction import REVEAL


def write_config(broker: BrokerHarness, path: Path, **mapping: Any) -> Path:
    config = broker.config("to_file", function={"timeout": 30}, **mapping)
    # JSON is YAML; the secrets (a RabbitMQ URL's password) are written out as they are.
    document = config.model_dump(mode="json", exclude_unset=True, context=REVEAL)
    path.write_text(json.dumps(document, indent=2))
    return path


def handled(record_file: Path) -> list[str]:
    """The bodies the handler finished, in order ([lane, position, body] lines)."""
    return [json.loads(line)[2] for line in recorded_lines(record_file)]


async def unsettled_is(broker: BrokerHarness, count: int) -> bool:
    return await broker.unsettled() == count


BATCH = 10


async def test_kill_9_mid_batch_then_restart_loses_nothing(broker: BrokerHarness, tmp_path: Path) -> None:
    await broker.create(lanes=2)
    bodies = [f"record-{i}" for i in range(200)]
    await broker.produce(bodies)
    # Two batches at a time: one per partition or shard, or two of a queue.
    concurrency = {} if broker.ordered else {"scaling_config": {"maximum_concurrency": 2}}
    config = write_config(broker, tmp_path / "poller.yaml", batch_size=BATCH, **concurrency)
    record_file = tmp_path / "handled.jsonl"
    first = start_poller(config, record_file, 0.1)
    code = await kill_9_mid_batch(
        first,
        record_file,
        lambda: len(handled(record_file)),
        batch_size=BATCH,
        after=60,
        message="first records handled",
    )
    assert code == -signal.SIGKILL
    before = len(handled(record_file))
    assert len(set(handled(record_file))) < 200, "killed before the end"
    second = start_poller(config, record_file, 0.0)
    try:
        await wait_for(
            lambda: set(handled(record_file)) >= set(bodies), timeout=90, message="every record handled"
        )
        await wait_for(
            lambda: unsettled_is(broker, 0), timeout=60, interval=0.5, message="everything committed"
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert await wait_exit(second, 30) == 0, poller_log(config)
    seen = handled(record_file)
    assert set(seen) == set(bodies), "nothing lost"
    # Repeated only what the killed process had handled and not committed: a batch per partition,
    # shard or concurrent queue batch, with room for as much again.
    duplicates = len(seen) - len(bodies)
    assert duplicates <= 2 * 2 * BATCH + broker.stand_in_duplicates, f"{duplicates} records handled twice"
    print(f"\n{broker.kind}: killed after {before} records, {duplicates} handled again")
    assert await broker.unsettled() == 0


async def test_sigterm_mid_batch_finishes_it_commits_and_exits_0(
    broker: BrokerHarness, tmp_path: Path
) -> None:
    await broker.create()
    bodies = [f"record-{i}" for i in range(10)]
    await broker.produce(bodies)
    config = write_config(
        broker, tmp_path / "poller.yaml", batch_size=10, maximum_batching_window_in_seconds=1
    )
    record_file = tmp_path / "handled.jsonl"
    process = start_poller(config, record_file, 3.0)
    code = await sigterm_once(
        process, lambda: started_batches(record_file) >= 1, within=60, message="the slow batch started"
    )
    log = poller_log(config)
    assert code == 0, log
    assert "draining" in log
    assert started_batches(record_file, ".finished") == started_batches(record_file), "the batch finished"
    drained = handled(record_file)
    assert drained, "and its records are recorded"
    # What finished is committed; anything else is left for the next process, with new records.
    assert await broker.unsettled() == len(bodies) - len(drained)
    later = await broker.produce([f"record-{i}" for i in range(10, 15)])
    bodies += [record.body for record in later]
    second = start_poller(config, record_file, 0.0)
    try:
        await wait_for(lambda: set(handled(record_file)) == set(bodies), timeout=60, message="rest handled")
        await wait_for(
            lambda: unsettled_is(broker, 0), timeout=60, interval=0.5, message="everything committed"
        )
    finally:
        second.send_signal(signal.SIGTERM)
        assert await wait_exit(second, 30) == 0, poller_log(config)
    assert Counter(handled(record_file)) == Counter(bodies), (
        "each record once: the drained batch was committed"
    )
