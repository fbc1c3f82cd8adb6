"""Tumbling windows (SPEC section 15): which window a record belongs to, what a window holds, and
what a window store keeps of it.

Pure, no I/O. A window is aligned to a multiple of its length since the epoch (UTC). Records of one
partition are assigned by their timestamp (Kinesis: ``approximateArrivalTimestamp``, Kafka: the
record timestamp), in partition order, and a window never closes before a record of a later one
arrives or its end has passed: so a late record, one whose timestamp falls in a window that is
already closed, joins the open window rather than reopening an old one (Kafka producers may set
timestamps out of order; Kinesis's arrival times are in order).
See https://docs.aws.amazon.com/lambda/latest/dg/services-kinesis-windows.html
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from poller.engine.records import Record

MAX_STATE_BYTES = 1024 * 1024  # a window's state beyond this ends the window early, as on AWS


@dataclass(frozen=True, slots=True)
class Window:
    """``[start, end)`` in epoch seconds."""

    start: float
    end: float

    @classmethod
    def of(cls, timestamp: float, length: int) -> Window:
        start = timestamp // length * length
        return cls(start, start + length)

    def describe(self) -> dict[str, str]:
        """The event's ``window``: ISO-8601 UTC, as AWS writes it."""
        return {"start": _iso(self.start), "end": _iso(self.end)}


@dataclass
class OpenWindow:
    """A window of one partition that has not had its final invocation yet.

    ``state`` is what the last invocation returned (``{}`` when the window opens); ``through`` the
    position of the last record folded into it, so that records read again after a restart are
    not counted twice; ``terminated_early`` that the state grew past :data:`MAX_STATE_BYTES`, which
    ends the window now (its final invocation says so)."""

    window: Window
    state: dict[str, Any] = field(default_factory=dict)
    through: Any = None
    terminated_early: bool = False

    def folded(self, record: Record) -> bool:
        """Whether the record's effect is in the state already (read again after a restart)."""
        return self.through is not None and record.position <= self.through


def runs_by_window(
    records: list[Record], length: int, current: Window | None
) -> list[tuple[Window, list[Record]]]:
    """Cut one partition's records, in order, into runs of one window each, oldest first. A record
    is never put into a window older than the one before it (or than ``current``, the open one)."""
    runs: list[tuple[Window, list[Record]]] = []
    window = current
    run: list[Record] = []
    for record in records:
        own = Window.of(record.timestamp, length)
        if window is None or own.start > window.start:
            if run:
                assert window is not None
                runs.append((window, run))
            window, run = own, []
        run.append(record)
    if run:
        assert window is not None
        runs.append((window, run))
    return runs


def state_of(result: Any) -> dict[str, Any] | None:
    """The ``state`` of a tumbling-window invocation's response, or None when the response has none
    (not an object, no ``state``, or a ``state`` that is not an object): then the invocation failed."""
    if not isinstance(result, dict):
        return None
    state = result.get("state")
    return state if isinstance(state, dict) else None


def state_size(state: dict[str, Any]) -> int:
    """The state's size as JSON, against :data:`MAX_STATE_BYTES`."""
    return len(orjson.dumps(state))


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def window_fields(window: OpenWindow) -> dict[str, Any]:
    """What every store keeps of a window besides its state (``through``: the last position folded
    in, as text)."""
    return {
        "start": window.window.start,
        "end": window.window.end,
        "through": None if window.through is None else str(window.through),
    }


def stored_window(start: float, end: float, through: str | None, state: bytes) -> OpenWindow:
    """A window as a store reads it back (``state``: its JSON)."""
    return OpenWindow(Window(start, end), orjson.loads(state), int(through) if through is not None else None)
