"""Shared memory through which poller hands each event to its own Python runtime.

An event crosses from poller to its environment once per invocation, and over loopback TCP a
150 KB event costs poller's process more CPU in the kernel than serialising it does, and the
environment as much again to receive it (docs/benchmarks.md). So each environment of poller's
Python runtime gets a memory file (``memfd``) of its own, inherited as the descriptor named by
:data:`FD_VARIABLE`. Its runtime asks for events there (``Poller-Event-Memory: 1`` on ``GET
/next``); poller then writes the event into the file and answers ``/next`` as usual, with an empty
body and the event's length in the same header. One invocation at a time per environment, so one
event in the file at a time: poller writes the next only once the last was answered or its
environment is gone. Everything else of the Runtime API is unchanged, and a runtime that does not
ask (every other client) gets the event in the body.
"""

from __future__ import annotations

import mmap
import os

from poller.engine.records import MAX_PAYLOAD_BYTES

# The variable that names the descriptor in the environment; its runtime removes it before the
# function's code runs, and closes the descriptor once it has mapped the file.
FD_VARIABLE = "_POLLER_EVENT_MEMORY_FD"
# On ``GET /next``: "1", the runtime reads events from the file; on its answer: the event's length.
MEMORY_HEADER = "Poller-Event-Memory"
# Room for the largest event (Lambda's 6 MB payload limit); a larger one goes in the body.
SIZE = MAX_PAYLOAD_BYTES + 64 * 1024
# Pages of the file hold memory once written. Past this many bytes they are given back after the
# event that needed them, so an environment that once had a 6 MB event does not keep 6 MB.
KEPT_BYTES = 1024 * 1024


class EventMemory:
    """The memory file of one environment, mapped into poller. :meth:`create` returns None where
    the system has no ``memfd`` (then events travel in the body)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE)
        self._written = 0  # the largest event since the last trim

    @classmethod
    def create(cls) -> EventMemory | None:
        make = getattr(os, "memfd_create", None)
        if make is None:
            return None
        try:
            fd = make("poller-event", os.MFD_CLOEXEC)  # inherited only where it is passed on
        except OSError:
            return None
        try:
            os.ftruncate(fd, SIZE)
            return cls(fd)
        except (OSError, ValueError):
            os.close(fd)
            return None

    def holds(self, payload: bytes) -> bool:
        return len(payload) <= SIZE

    def write(self, payload: bytes) -> None:
        self._map[: len(payload)] = payload
        self._written = max(self._written, len(payload))

    def trim(self) -> None:
        """Give back the pages past :data:`KEPT_BYTES` if an event used them."""
        if self._written > KEPT_BYTES:
            self._map.madvise(mmap.MADV_REMOVE, KEPT_BYTES, SIZE - KEPT_BYTES)
        self._written = 0

    def close_descriptor(self) -> None:
        """Close poller's descriptor of the file once the environment has inherited it: the
        mapping keeps a duplicate of its own, and one descriptor per environment is enough."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        if not self._map.closed:
            self._map.close()
        self.close_descriptor()
