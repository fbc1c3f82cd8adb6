"""Operating a running poller (SPEC section 16), against Kafka (tansu): reloading the config file
(a new mapping starts, an unchanged one keeps handling records without a pause, a broken file is
refused), disabling and enabling a mapping at run time, the admin token, and ``poller status``."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import (
    KAFKA_TEST_GROUP_SETTINGS,
    committed_offsets,
    create_topic,
    poller_log,
    produce,
    recorded_lines,
    serving,
    spawn_poller,
    unique_name,
    wait_exit,
    wait_for,
)

from poller.app import App
from poller.cli import main as cli
from poller.config import load_config

pytestmark = pytest.mark.kafka

HERE = Path(__file__).parent


def mapping(name: str, topic: str, **extra: Any) -> str:
    settings = {
        "function_name": "fn",
        "source": {
            "type": "kafka",
            "connection": "k",
            "topics": [topic],
            "consumer_group_id": f"{topic}-group",
            **KAFKA_TEST_GROUP_SETTINGS,
        },
        "batch_size": 10,
        "maximum_batching_window_in_seconds": 0.1,
        **extra,
    }
    return f"  {name}: {json.dumps(settings)}\n"


def config_text(
    bootstrap: str,
    log: Path,
    mappings: str,
    *,
    admin: str = "{port: 0}",
    sleep: float = 0,
    function: dict[str, Any] | None = None,
) -> str:
    settings = {
        "handler": "operations_handlers:record",
        "environment": {"OPS_LOG": str(log), "OPS_SLEEP": str(sleep)},
        **(function or {}),
    }
    return (
        textwrap.dedent(
            f"""\
        connections:
          k: {{type: kafka, bootstrap_servers: "{bootstrap}"}}
        functions:
          fn: {json.dumps(settings)}
        admin: {admin}
        mappings:
        """
        )
        + mappings
    )


def handled(log: Path) -> list[tuple[str, int, int, float]]:
    return [tuple(json.loads(line)) for line in recorded_lines(log)]  # type: ignore[misc]


@asynccontextmanager
async def app_on(path: Path) -> AsyncIterator[App]:
    async with serving(App(load_config(path), drain_timeout=10, config_path=path)) as app:
        yield app


async def keep_producing(bootstrap: str, topic: str, stop: asyncio.Event) -> int:
    """One record every 50 ms until ``stop``; returns how many."""
    count = 0
    while not stop.is_set():
        await produce(bootstrap, topic, [(0, None, f"r{count}", None)])
        count += 1
        await asyncio.sleep(0.05)
    return count


async def test_a_reload_starts_a_new_mapping_keeps_the_unchanged_one_running_and_refuses_a_broken_file(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    first, second = unique_name("ops-a"), unique_name("ops-b")
    await create_topic(kafka_bootstrap, first)
    await create_topic(kafka_bootstrap, second)
    log, path = tmp_path / "handled.jsonl", tmp_path / "poller.yaml"
    path.write_text(config_text(kafka_bootstrap, log, mapping("a", first)))
    async with app_on(path) as app:
        await wait_for(lambda: app.runners["a"].status.ready, timeout=30, message="a polling")
        runner, source = app.runners["a"], app.runners["a"].source
        stop = asyncio.Event()
        producing = asyncio.create_task(keep_producing(kafka_bootstrap, first, stop))
        await wait_for(lambda: len(handled(log)) >= 10, timeout=30, message="a handles records")
        path.write_text(config_text(kafka_bootstrap, log, mapping("a", first) + mapping("b", second)))
        app.request_reload()
        await wait_for(
            lambda: "b" in app.runners and app.runners["b"].status.ready, timeout=30, message="b started"
        )
        await produce(kafka_bootstrap, second, [(0, None, "b0", None)])
        await wait_for(
            lambda: any(topic == second for topic, *_ in handled(log)), timeout=30, message="b handles"
        )
        path.write_text("mappings: [this is not a mapping\n")
        assert not await app.reload(), "a broken file is refused"
        assert set(app.runners) == {"a", "b"}
        before = len([r for r in handled(log) if r[0] == first])
        await wait_for(
            lambda: len([r for r in handled(log) if r[0] == first]) > before + 5,
            timeout=30,
            message="a goes on",
        )
        stop.set()
        produced = await producing
        await wait_for(
            lambda: len({r[2] for r in handled(log) if r[0] == first}) == produced,
            timeout=30,
            message="all of a",
        )
        assert app.runners["a"] is runner, "a was not restarted"
        assert runner.source is source, "nor reconnected"
    times = sorted(when for topic, _, _, when in handled(log) if topic == first)
    gap = max(later - earlier for earlier, later in itertools.pairwise(times))
    # One record every 50 ms, a poll at least every 0.5 s and a batching window of 0.1 s.
    assert gap < 1.5, f"a paused for {gap:.2f} s during the reload"


async def test_a_reload_that_changes_a_function_swaps_it_under_the_running_mapping(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("ops-fn")
    await create_topic(kafka_bootstrap, topic)
    before, after, path = tmp_path / "before.jsonl", tmp_path / "after.jsonl", tmp_path / "poller.yaml"
    runtime = {"runtime": f"python{sys.version_info.major}.{sys.version_info.minor}", "code": str(HERE)}
    path.write_text(config_text(kafka_bootstrap, before, mapping("m", topic), sleep=1.0, function=runtime))
    async with app_on(path) as app:
        runner, old = app.runners["m"], app.functions["fn"]
        assert old.pool is not None
        await produce(kafka_bootstrap, topic, [(0, None, f"r{i}", None) for i in range(10)])
        await wait_for(lambda: len(handled(before)) == 10, timeout=60, message="a batch in the handler")
        assert old.pool.busy == 1
        # A function whose provisioned environment cannot start is refused; the running one stays.
        broken = {**runtime, "provisioned_concurrent_executions": 1, "handler": "operations_handlers:gone"}
        path.write_text(config_text(kafka_bootstrap, after, mapping("m", topic), function=broken))
        assert not await app.reload()
        assert app.functions["fn"] is old
        path.write_text(config_text(kafka_bootstrap, after, mapping("m", topic), function=runtime))
        assert await app.reload()
        assert app.runners["m"] is runner, "the mapping keeps running"
        assert app.functions["fn"] is not old
        assert runner.function is app.functions["fn"]
        await produce(kafka_bootstrap, topic, [(0, None, f"r{i}", None) for i in range(10, 20)])
        await wait_for(lambda: len(handled(after)) == 10, timeout=60, message="the new function handles")
        # The batch in flight finished on the old function, whose environments then stopped.
        assert len(handled(before)) == 10
        await wait_for(lambda: not old.pool.environments(), timeout=30, message="old environments stopped")
        await wait_for(lambda: runner.status.counts.succeeded == 20, timeout=30, message="all succeeded")


async def test_a_disabled_mapping_finishes_its_batch_handles_nothing_then_catches_up(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("ops-switch")
    await create_topic(kafka_bootstrap, topic)
    log, path = tmp_path / "handled.jsonl", tmp_path / "poller.yaml"
    path.write_text(config_text(kafka_bootstrap, log, mapping("m", topic), sleep=1.0))
    async with app_on(path) as app, aiohttp.ClientSession(f"http://127.0.0.1:{app.admin.port}") as http:
        await produce(kafka_bootstrap, topic, [(0, None, f"r{i}", None) for i in range(10)])
        await wait_for(lambda: len(handled(log)) == 10, timeout=30, message="a batch in the handler")
        async with http.post("/mappings/m/disable") as response:
            assert response.status == 202
            assert (await response.json())["state"] == "Disabling"
        await wait_for(lambda: app.runners["m"].status.state == "Disabled", timeout=30, message="disabled")
        offsets = await committed_offsets(kafka_bootstrap, f"{topic}-group", topic, 1)
        assert offsets == {0: 10}, "the batch in flight finished and was committed before it stopped"
        await produce(kafka_bootstrap, topic, [(0, None, f"r{i}", None) for i in range(10, 20)])
        async with http.get("/readyz") as response:
            assert response.status == 200, "a disabled mapping does not make the poller unready"
        # Disabled is set once the runner's task has ended: nothing polls the topic any more.
        assert len(handled(log)) == 10, "nothing handled while disabled"
        async with http.post("/mappings/m/enable") as response:
            assert response.status == 202
            assert (await response.json())["state"] == "Enabling"
        await wait_for(lambda: len(handled(log)) == 20, timeout=60, message="caught up")
        # The counts go on across the restart of the mapping.
        await wait_for(lambda: app.runners["m"].status.counts.succeeded == 20, timeout=30, message="counts")


async def test_the_admin_token_guards_everything_but_the_probes(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique_name("ops-auth")
    await create_topic(kafka_bootstrap, topic)
    log, path = tmp_path / "handled.jsonl", tmp_path / "poller.yaml"
    path.write_text(
        config_text(kafka_bootstrap, log, mapping("m", topic), admin="{port: 0, token: s3cret-t0ken}")
    )
    async with app_on(path) as app, aiohttp.ClientSession(f"http://127.0.0.1:{app.admin.port}") as http:
        for endpoint in ("/mappings", "/metrics"):
            async with http.get(endpoint) as response:
                assert response.status == 401
            async with http.get(endpoint, headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401
            async with http.get(endpoint, headers={"Authorization": "Bearer s3cret-t0ken"}) as response:
                assert response.status == 200
        async with http.post("/mappings/m/disable") as response:
            assert response.status == 401
        async with http.get("/healthz") as response:
            assert response.status == 200
        await wait_for(lambda: app.runners["m"].status.ready, timeout=30, message="ready")
        async with http.get("/readyz") as response:
            assert response.status == 200
        url = f"http://127.0.0.1:{app.admin.port}"
        assert await asyncio.to_thread(cli, ["status", "--url", url]) == 1
        assert "admin token" in capsys.readouterr().err
        assert await asyncio.to_thread(cli, ["status", "--url", url, "--token", "s3cret-t0ken"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["MAPPING", "STATE", "READY"]
    assert table[1].split()[:3] == ["m", "Enabled", "yes"]


async def test_sighup_reloads_a_running_process(kafka_bootstrap: str, tmp_path: Path) -> None:
    first, second = unique_name("ops-hup-a"), unique_name("ops-hup-b")
    await create_topic(kafka_bootstrap, first)
    await create_topic(kafka_bootstrap, second)
    log, path = tmp_path / "handled.jsonl", tmp_path / "poller.yaml"
    path.write_text(config_text(kafka_bootstrap, log, mapping("a", first)))
    process = spawn_poller(path, {})
    try:
        await produce(kafka_bootstrap, first, [(0, None, "a0", None)])
        await wait_for(lambda: handled(log), timeout=60, message="a handles")
        path.write_text(config_text(kafka_bootstrap, log, mapping("a", first) + mapping("b", second)))
        process.send_signal(signal.SIGHUP)
        await produce(kafka_bootstrap, second, [(0, None, "b0", None)])
        await wait_for(lambda: any(r[0] == second for r in handled(log)), timeout=60, message="b handles")
        process.send_signal(signal.SIGTERM)
        assert await wait_exit(process, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()


async def test_a_second_sigterm_during_the_drain_exits_at_once_and_says_so(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topic = unique_name("ops-term-twice")
    await create_topic(kafka_bootstrap, topic)
    log, path = tmp_path / "handled.jsonl", tmp_path / "poller.yaml"
    path.write_text(config_text(kafka_bootstrap, log, mapping("a", topic), sleep=60))
    process = spawn_poller(path, {})
    try:
        await produce(kafka_bootstrap, topic, [(0, None, "slow", None)])
        await wait_for(lambda: "START RequestId" in poller_log(path), timeout=60, message="invoked")
        process.send_signal(signal.SIGTERM)
        # Each line reaches the log as soon as the loop's turn that logged it is over.
        await wait_for(lambda: "draining" in poller_log(path), timeout=10, message="draining said")
        process.send_signal(signal.SIGTERM)
        assert await wait_exit(process, 10) == 1, "not after the handler's 60 s"
        assert "received SIGTERM again: exiting now" in poller_log(path)
        assert len(handled(log)) == 1, "the handler had begun its 60 s when poller exited"
    finally:
        if process.poll() is None:
            process.kill()
