"""Helpers shared by the unit and integration tests (import as ``from support import ...``).

Kafka helpers talk to whatever broker the ``kafka_bootstrap`` fixture gives: the tansu stand-in by
default. They work around tansu's quirks (slow group formation, see below) so that the tests
themselves assert Kafka semantics only.

The integration tests of every source run the service the same ways, so that scaffolding lives here
too: in this process (``mapping_config``, ``running``, ``FakeClock``), or as a real ``poller run``
child process (``start_poller``, ``kill_9_mid_batch``, ``sigterm_once``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, overload

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from poller.app import App
from poller.clock import Clock
from poller.config import Config, Function
from poller.runtime.function import FunctionRuntime
from poller.tasks import BackgroundTasks

T = TypeVar("T")

# tansu takes 5 s to form a group and up to 18 s to re-form it with the default timeouts; these make
# it 1 s. Tests put them into Kafka mapping source configs. Real Kafka rejects a session timeout
# below 6 s by default, so they belong to tests against the stand-in, never to product defaults.
KAFKA_TEST_GROUP_SETTINGS: dict[str, int] = {
    "session_timeout_ms": 1000,
    "heartbeat_interval_ms": 200,
    "rebalance_timeout_ms": 1000,
}

# (partition, key, value, headers); partition None lets the producer's partitioner choose.
KafkaRecord: TypeAlias = tuple[
    int | None, bytes | str | None, bytes | str | None, Sequence[tuple[str, bytes]] | None
]

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9._-]+")


def unique_name(prefix: str = "test") -> str:
    """A fresh name that is valid as a Kafka topic, a group id, an SQS queue or a RabbitMQ queue."""
    cleaned = _INVALID_NAME_CHARS.sub("-", prefix).strip("-.") or "test"
    return f"{cleaned[:64]}-{uuid.uuid4().hex}"


@contextmanager
def logging_to(handler: logging.Handler, name: str) -> Iterator[logging.Logger]:
    """The logger ``name`` at INFO with ``handler`` as its only way out, for the block."""
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def open_files(pattern: str) -> list[str]:
    """What this process's open descriptors refer to, where that matches the regular expression
    ``pattern`` (as ``/proc/self/fd`` shows it: a path, or ``/memfd:NAME (deleted)``)."""
    found = []
    for descriptor in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:  # the descriptor that listed the directory
            continue
        if re.match(pattern, target):
            found.append(target)
    return sorted(found)


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 30.0,  # noqa: ASYNC109 (a polling deadline that fails the test with a message)
    interval: float = 0.05,
    message: str = "condition was not met",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that.

    Fails the test with ``message`` after ``timeout`` seconds. Exceptions from the predicate
    propagate at once: a broken check should not look like a slow one.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"{message} (waited {timeout:g} s)")
        await asyncio.sleep(interval)


async def create_topic(
    bootstrap: str,
    name: str,
    partitions: int = 1,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 (passed on to wait_for)
) -> None:
    """Create ``name`` and return once metadata lists all of its partitions with a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        )
        for topic, code, error_message in _topic_errors(response):
            if code != 0:
                pytest.fail(f"creating topic {topic} failed: error {code} {error_message}")

        async def partitions_visible() -> bool:
            described = await admin.describe_topics([name])
            return any(
                entry["topic"] == name
                and entry["error_code"] == 0
                and len([p for p in entry["partitions"] if p["leader"] >= 0]) == partitions
                for entry in described
            )

        await wait_for(
            partitions_visible, timeout=timeout, message=f"topic {name} has no {partitions} partitions"
        )
    finally:
        await admin.close()


def _topic_errors(response: Any) -> list[tuple[str, int, str | None]]:
    # CreateTopics v0 has no error message, later versions do.
    return [(entry[0], entry[1], entry[2] if len(entry) > 2 else None) for entry in response.topic_errors]


async def produce(bootstrap: str, topic: str, records: Iterable[KafkaRecord]) -> list[tuple[int, int]]:
    """Send each record and wait for its acknowledgement; return their (partition, offset).

    One record per request on purpose: tansu reports a wrong high watermark when several records
    share a batch, and tests that read end offsets would see it.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    positions: list[tuple[int, int]] = []
    try:
        for partition, key, value, headers in records:
            metadata = await producer.send_and_wait(
                topic,
                value=_as_bytes(value),
                key=_as_bytes(key),
                partition=partition,
                headers=list(headers or ()),
            )
            positions.append((int(metadata.partition), int(metadata.offset)))
    finally:
        await producer.stop()
    return positions


def _as_bytes(data: bytes | str | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data


async def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int | Iterable[int]
) -> dict[int, int | None]:
    """The offsets ``group`` has committed for ``topic``; None where it committed nothing.

    ``partitions`` is a partition count or the partition numbers. A consumer's ``committed()``
    is used because the admin client's list_consumer_group_offsets is broken on tansu. The consumer
    never joins the group, so it does not disturb the group's members.
    """
    numbers = range(partitions) if isinstance(partitions, int) else list(partitions)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        result: dict[int, int | None] = {}
        for number in numbers:
            offset = await consumer.committed(TopicPartition(topic, number))
            result[number] = None if offset is None else int(offset)
        return result
    finally:
        await consumer.stop()


async def consume_all(
    bootstrap: str,
    topic: str,
    expected_count: int,
    timeout: float = 30.0,  # noqa: ASYNC109 (the test fails with a count, not a bare TimeoutError)
) -> list[Any]:
    """Read ``topic`` from the beginning without a group until ``expected_count`` records arrived.

    Returns aiokafka ``ConsumerRecord`` objects ordered by (partition, offset), possibly more than
    expected if more were there; fails the test if fewer arrive within ``timeout`` seconds.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[Any] = []
    try:
        deadline = time.monotonic() + timeout
        while len(received) < expected_count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(
                    f"topic {topic}: {len(received)} of {expected_count} records arrived in {timeout:g} s"
                )
            batches = await consumer.getmany(timeout_ms=int(min(remaining, 0.5) * 1000) + 1)
            for messages in batches.values():
                received.extend(messages)
    finally:
        await consumer.stop()
    received.sort(key=lambda message: (message.partition, message.offset))
    return received


# --- SQS -----------------------------------------------------------------------------------------


async def sqs_queue_is_empty(sqs: Any, url: str) -> bool:
    """Whether the SQS queue at ``url`` holds no message, visible or in flight (``sqs``: a client)."""
    attributes = (
        await sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return bool(
        attributes["ApproximateNumberOfMessages"]
        == "0"
        == attributes["ApproximateNumberOfMessagesNotVisible"]
    )


# --- the service in this process -----------------------------------------------------------------


class FakeClock(Clock):
    """Wall time plus whatever the engine slept: backoff and record age without waiting.

    Only the engine's own sleeps are skipped (each still yields to the loop for 10 ms); retries
    handed to a broker, such as RabbitMQ's delay queues, wait there in real time.
    """

    def __init__(self) -> None:
        self.slept = 0.0

    def now(self) -> float:
        return time.time() + self.slept

    async def sleep(self, seconds: float) -> None:
        self.slept += seconds
        await asyncio.sleep(0.01)


def mapping_config(
    connections: dict[str, Any],
    source: dict[str, Any],
    handler: str,
    /,
    *,
    dlq: dict[str, Any] | None = None,
    function: dict[str, Any] | None = None,
    **mapping: Any,
) -> Config:
    """A config with one function ``fn`` running ``handler`` and one mapping ``m`` from ``source``.

    ``dlq`` becomes destination ``dlq``, the mapping's on-failure destination; ``function`` and
    ``mapping`` add keys to the function and the mapping. Each source's tests wrap this in their
    own ``make_config``, which builds the connections, the source and the destination.
    """
    destinations = {}
    if dlq is not None:
        destinations["dlq"] = dlq
        mapping["destination_config"] = {"on_failure": {"destination": "dlq"}}
    return Config.model_validate(
        {
            "connections": connections,
            "functions": {"fn": {"handler": handler, **(function or {})}},
            "destinations": destinations,
            "mappings": {"m": {"function_name": "fn", "source": source, **mapping}},
            "admin": {"port": 0},
        }
    )


@asynccontextmanager
async def serving(app: App) -> AsyncIterator[App]:
    """Run ``app`` until the block ends, then stop it and wait for it to drain.

    The block starts once the admin endpoints are up. A failure at start is raised here rather than
    left for the block to run into.
    """
    task = asyncio.create_task(app.run())
    try:
        await wait_for(lambda: app.admin.port or task.done(), message="admin endpoints up")
        if task.done():
            task.result()  # a failure at start: raise it here
        yield app
    finally:
        app.stop()
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def running(config: Config, clock: Clock | None = None, **options: Any) -> AsyncIterator[App]:
    """The service on ``config``, in this process, until the block ends (then drained).

    ``options`` go to ``App``, e.g. ``telemetry``.
    """
    async with serving(App(config, clock=clock, drain_timeout=10, **options)) as app:
        yield app


# --- the service as a `poller run` child process ------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
# The handler modules the test configs name (recorder, rmq_handlers, ...) live here.
INTEGRATION = REPO / "tests" / "integration"


def spawn_poller(
    config: Path, env: Mapping[str, str], *, log: Path | None = None, options: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start ``python -m poller [options] run -c config`` from the repository root.

    The test handlers are importable (``PYTHONPATH``), ``env`` is added to this process's
    environment, and stdout and stderr are appended to ``log``: by default the config's path with
    the suffix ``.log`` (read it with ``poller_log``).
    """
    log = config.with_suffix(".log") if log is None else log
    with open(log, "ab") as file:
        return subprocess.Popen(
            [sys.executable, "-m", "poller", *options, "run", "-c", str(config)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(INTEGRATION), str(REPO)]), **env},
            stdout=file,
            stderr=file,
        )


def start_poller(config: Path, record_file: Path, handler_sleep: float) -> subprocess.Popen[bytes]:
    """``spawn_poller`` for the subprocess tests' handlers: they sleep ``handler_sleep`` seconds in
    each batch and record what they handled in ``record_file`` (``RECORDER_FILE``)."""
    return spawn_poller(config, {"RECORDER_FILE": str(record_file), "HANDLER_SLEEP": str(handler_sleep)})


def poller_log(config: Path) -> str:
    """What the process ``spawn_poller`` started on ``config`` wrote to stdout and stderr."""
    return config.with_suffix(".log").read_text()


def recorded_lines(record_file: Path) -> list[str]:
    """The complete lines that a subprocess handler has appended to ``record_file`` so far: a line
    still being written (no newline yet) is left for the next look."""
    if not record_file.exists():
        return []
    text = record_file.read_text()
    return [line for line in text[: text.rfind("\n") + 1].splitlines() if line]


def started_batches(record_file: Path, suffix: str = ".started") -> int:
    """How many batches the subprocess handlers began: they add a line to ``record_file`` + ``suffix``
    as a batch starts (and, some, to ``.finished`` as it ends)."""
    return len(recorded_lines(Path(str(record_file) + suffix)))


async def wait_exit(process: subprocess.Popen[bytes], within: float) -> int:
    """The exit code of ``process``, polled without blocking the loop; fails after ``within`` s."""
    await wait_for(lambda: process.poll() is not None, timeout=within, message="poller exited")
    return process.returncode


async def kill_9_mid_batch(
    process: subprocess.Popen[bytes],
    record_file: Path,
    handled: Callable[[], int],
    *,
    batch_size: int,
    after: int,
    message: str,
) -> int:
    """SIGKILL ``process`` while a batch is inside the handler, and return its exit code.

    Waits until ``handled()`` (records handled so far) reaches ``after`` (failing with ``message``),
    then until more batches of ``batch_size`` have started than finished. The process never
    outlives a failed wait.
    """
    try:
        await wait_for(lambda: handled() >= after, timeout=60, message=message)
        await wait_for(
            lambda: started_batches(record_file) * batch_size > handled(),
            timeout=10,
            message="mid-batch",
        )
        process.send_signal(signal.SIGKILL)
        return await wait_exit(process, 10)
    finally:
        if process.poll() is None:
            process.kill()


async def sigterm_once(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], *, within: float, message: str
) -> int:
    """SIGTERM ``process`` once ``ready()`` holds, and return its exit code (it has 30 s to drain).

    ``ready()`` may take ``within`` seconds to hold (else the test fails with ``message``). The
    process never outlives a failed wait.
    """
    try:
        await wait_for(ready, timeout=within, message=message)
        process.send_signal(signal.SIGTERM)
        return await wait_exit(process, 30)
    finally:
        if process.poll() is None:
            process.kill()


@asynccontextmanager
async def started_function(name: str, settings: Mapping[str, Any]) -> AsyncIterator[FunctionRuntime]:
    """The function ``settings`` describe, started (its provisioned environments initialised)
    and closed, with every environment stopped, at the end of the block."""
    function = FunctionRuntime(name, Function.model_validate(settings))
    async with asyncio.TaskGroup() as group:
        tasks = BackgroundTasks(group, f"function {name}")
        try:
            await function.start(tasks)
            yield function
        finally:
            await function.close()
            await tasks.close()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"
