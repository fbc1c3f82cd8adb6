"""How the test handlers tell the tests what they saw, wherever they run.

Functions run in execution environments by default: processes of their own, whose memory the test
cannot read. So the handlers append JSON lines to files in the directory ``$CALLS_DIR`` (which the
test session sets, and poller and its environments inherit), one file per key: a topic, queue or
stream name, as each test uses resources of its own. Bytes that a handler saw are written as
``{"__base64__": "<base64>"}`` and read back as bytes (not ``{"bytes": ...}``, which AWS's RabbitMQ
event itself uses for header values).

Lines are appended under an exclusive lock (``flock``), so that several environments writing at
once never interleave, and :func:`first_time` can decide "only the first time" across processes.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

VARIABLE = "CALLS_DIR"
BYTES = "__base64__"


def directory() -> Path:
    return Path(os.environ[VARIABLE])


def path_of(key: str) -> Path:
    """The file of ``key`` (``/`` and ``:`` would make paths of RabbitMQ's ``queue::/vhost``)."""
    return directory() / (key.replace("/", "%2F").replace(":", "%3A") + ".jsonl")


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {BYTES: base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {BYTES}:
            return base64.b64decode(value[BYTES])
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


@contextmanager
def _locked(key: str) -> Iterator[IO[str]]:
    with open(path_of(key), "a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield file
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def append(key: str, entry: Any) -> None:
    """Add ``entry`` (JSON, bytes allowed) as one line of ``key``'s file."""
    line = json.dumps(_encode(entry)) + "\n"
    with _locked(key) as file:
        file.write(line)


def entries(key: str) -> list[Any]:
    """Every entry of ``key`` so far, in the order they were appended (none if there is no file)."""
    path = path_of(key)
    if not path.exists():
        return []
    text = path.read_text()
    # A line still being written (no newline yet) is left for the next look.
    return [_decode(json.loads(line)) for line in text[: text.rfind("\n") + 1].splitlines() if line]


def first_time(key: str, token: str) -> bool:
    """Whether ``token`` is new to ``key`` (noting it as seen): true once, in whichever process asks
    first."""
    with _locked(key) as file:
        file.seek(0)
        if token + "\n" in set(file.readlines()):
            return False
        file.write(token + "\n")
        return True


def most_at_once(spans: Iterable[tuple[float, float]]) -> int:
    """The most (start, end) spans open at the same time (``time.monotonic()`` is the same clock in
    every process of the machine)."""
    spans = list(spans)
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = running = 0
    for _, change in events:  # an end sorts before a start at the same instant
        running += change
        most = max(most, running)
    return most
