"""File destination: failure records (and messages) as JSON lines, fsynced before they count as delivered."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from poller.config import Config
from poller.config import FileDestination as FileDestinationConfig
from poller.destinations.message import Message
from poller.engine.records import Record
from poller.errors import DestinationError
from poller.sources.protocol import EventFormat


class FileDestination:
    def __init__(self, name: str, settings: Any, config: Config) -> None:
        assert isinstance(settings, FileDestinationConfig)
        self.name = name
        self.path = Path(settings.path)

    async def send(self, failure: dict[str, Any], records: Sequence[Record], origin: EventFormat) -> None:
        await self._write(orjson.dumps(failure) + b"\n")

    async def publish(self, message: Message) -> None:
        """The document as one line; with attributes, inside ``{"attributes": ..., "body": ...}``."""
        if not message.attributes:
            await self._write(_one_line(message.body) + b"\n")
            return
        envelope = {"attributes": dict(message.attributes), "body": orjson.Fragment(_one_line(message.body))}
        await self._write(orjson.dumps(envelope) + b"\n")

    async def _write(self, line: bytes) -> None:
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            raise DestinationError(f"cannot write {self.path}: {exc}") from exc

    def _append(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())

    async def close(self) -> None:
        return None


def _one_line(body: bytes) -> bytes:
    """``body`` as JSON on one line (a body that is not JSON becomes a JSON string)."""
    try:
        return orjson.dumps(orjson.loads(body))
    except orjson.JSONDecodeError:
        return orjson.dumps(body.decode("utf-8", "replace"))
