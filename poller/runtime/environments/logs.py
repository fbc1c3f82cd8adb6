"""What an environment prints, as poller log lines, bracketed by Lambda's START, END and REPORT lines.

Every line goes to the logger ``poller.function`` with the function's name and the request id of
the invocation in progress (the ``function`` and ``request_id`` fields of a JSON line), and with
the mapping, batch and trace ids of the batch that invoked it: the line is logged in a copy of the
invoking task's context, where :mod:`poller.observability.logs` finds them. Each invocation's own
text (its lines and Lambda's) is kept, so that the Invoke API's ``X-Amz-Log-Type: Tail`` can
return its last 4 KB.
"""

from __future__ import annotations

import contextvars
import logging
import math
from dataclasses import dataclass, field

FUNCTION_LOG = logging.getLogger("poller.function")
MAX_LINE_BYTES = 256 * 1024  # a longer line is cut into pieces of this size, as Lambda does
KEPT_LOG_BYTES = 64 * 1024  # of one invocation's text, the newest this many bytes are kept
TAIL_BYTES = 4 * 1024  # what X-Amz-Log-Type: Tail returns


@dataclass
class InvocationLog:
    """The log text of one invocation, the newest :data:`KEPT_LOG_BYTES` of it."""

    request_id: str
    lines: list[str] = field(default_factory=list)
    size: int = 0

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line) + 1
        while self.size > KEPT_LOG_BYTES and len(self.lines) > 1:
            self.size -= len(self.lines.pop(0)) + 1

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def tail(self, limit: int = TAIL_BYTES) -> str:
        """The last ``limit`` bytes of the text (cut at a character boundary)."""
        return self.text.encode()[-limit:].decode("utf-8", "ignore")


class EnvironmentOutput:
    """Turns the bytes one environment writes (stdout and stderr, in one pipe) into log lines."""

    def __init__(self, function: str, environment: str) -> None:
        self.function = function
        self.environment = environment
        self._partial = bytearray()
        self._current: InvocationLog | None = None
        self._context: contextvars.Context | None = None

    def attach(self) -> None:
        """Log the lines from now on in a copy of the calling task's context (its mapping, batch
        and trace ids): called by whoever waits for the environment's init or its invocation."""
        self._context = contextvars.copy_context()

    def begin(self, request_id: str) -> InvocationLog:
        """An invocation starts: its lines carry ``request_id`` and are kept in what this returns."""
        self.attach()
        self._current = InvocationLog(request_id)
        return self._current

    def end(self) -> None:
        """The invocation is over: later lines belong to no invocation."""
        self._current = None
        self._context = None

    def feed(self, data: bytes) -> None:
        """Bytes the environment wrote: log every complete line (a carriage return, which AWS's
        Python client puts between the lines of one error, stays inside its line)."""
        buffer = self._partial
        buffer += data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            self._emit(bytes(buffer[start:end]))
            start = end + 1
        del buffer[:start]
        while len(buffer) >= MAX_LINE_BYTES:
            self._emit(bytes(buffer[:MAX_LINE_BYTES]))
            del buffer[:MAX_LINE_BYTES]

    def flush(self) -> None:
        """Log what is left of an unfinished last line (the environment ended)."""
        if self._partial:
            self._emit(bytes(self._partial))
            self._partial.clear()

    def platform(self, line: str, level: int = logging.INFO) -> None:
        """A line of poller's own about the environment (START, END, REPORT, why it ended),
        logged and kept like the function's."""
        self._log(line, level)

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r").replace("\r", "\n")
        self._log(line, logging.INFO)

    def _log(self, line: str, level: int) -> None:
        current = self._current
        if current is not None:
            current.add(line)
        extra = {
            "function": self.function,
            "request_id": current.request_id if current is not None else None,
            "environment": self.environment,
        }
        if self._context is not None:
            self._context.run(FUNCTION_LOG.log, level, "%s", line, extra=extra)
        else:
            FUNCTION_LOG.log(level, "%s", line, extra=extra)


def start_line(request_id: str) -> str:
    return f"START RequestId: {request_id} Version: $LATEST"


def end_line(request_id: str) -> str:
    return f"END RequestId: {request_id}"


def report_line(
    request_id: str,
    *,
    duration: float,
    memory_size: int,
    max_memory_used: int,
    init_duration: float | None = None,
) -> str:
    """Lambda's REPORT line (durations in seconds here, in milliseconds in the line; memory in
    MB). Billed duration is rounded up to the millisecond, as Lambda bills it."""
    milliseconds = duration * 1000
    line = (
        f"REPORT RequestId: {request_id}\tDuration: {milliseconds:.2f} ms\t"
        f"Billed Duration: {max(1, math.ceil(milliseconds))} ms\tMemory Size: {memory_size} MB\t"
        f"Max Memory Used: {max_memory_used} MB"
    )
    if init_duration is not None:
        line += f"\tInit Duration: {init_duration * 1000:.2f} ms"
    return line
