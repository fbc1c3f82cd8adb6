"""Logging: one JSON object per line on stderr, or plain text for people (SPEC section 8).

Every line logged while a mapping's tasks run carries the mapping's name, and every line logged
while a batch is being processed carries its batch and trace ids, whichever module logs it (the
runner, a source, a destination): they are kept in context variables, which asyncio copies into
each task a mapping starts, and added to each line by :class:`ContextFilter`. No line carries a
secret: :class:`~poller.redaction.RedactingFilter` masks them in the message and the traceback.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson

from poller.redaction import RedactingFilter

# Fields of every line about a mapping or a batch (also accepted through ``extra=``); a function's
# own output adds its function, the request id of its invocation and the environment that printed it.
CONTEXT_FIELDS = ("mapping", "batch_id", "trace_id", "function", "request_id", "environment")

_mapping: contextvars.ContextVar[str | None] = contextvars.ContextVar("poller_mapping", default=None)
_batch: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar("poller_batch", default=None)


def set_mapping_context(mapping: str) -> None:
    """Name the mapping in every line logged from now on in this task and the tasks it starts
    (call it first thing in the mapping's own task)."""
    _mapping.set(mapping)


@contextmanager
def batch_context(batch_id: int, trace_id: str) -> Iterator[None]:
    """Add a batch's ids to every line logged inside the block (in this task)."""
    token = _batch.set((batch_id, trace_id))
    try:
        yield
    finally:
        _batch.reset(token)


class ContextFilter(logging.Filter):
    """Adds the mapping and batch of the current context to a record that does not name them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "mapping", None) is None:
            record.mapping = _mapping.get()
        batch = _batch.get()
        if batch is not None:
            if getattr(record, "batch_id", None) is None:
                record.batch_id = batch[0]
            if getattr(record, "trace_id", None) is None:
                record.trace_id = batch[1] or None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""  # the ISO time of _second, to the second

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info or record.exc_text:
            # exc_text: the traceback as RedactingFilter left it (redacted), else rendered here.
            line["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return orjson.dumps(line, default=str).decode()

    def _time(self, created: float) -> str:
        """``created`` as ISO 8601 in UTC, to the millisecond, as datetime's isoformat writes it;
        but the date and time of day are made once a second: datetime took half of the time
        a line's formatting took, and a busy mapping logs thousands of lines a second."""
        second = math.floor(created)
        microseconds = round((created - second) * 1e6)  # rounded as datetime.fromtimestamp rounds
        if microseconds >= 1_000_000:
            second, microseconds = second + 1, microseconds - 1_000_000
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{microseconds // 1000:03d}+00:00"


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        trace_id = getattr(record, "trace_id", None)
        return f"{text} [trace {trace_id}]" if trace_id else text


class StreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that, on a thread running an event loop, writes the lines logged during one
    turn of the loop together, right after it: a busy mapping logs thousands of lines a second
    (an environment's START, END and REPORT for every invocation), and a write for each was a
    fifth of what they cost. Elsewhere, and on :meth:`flush` (at exit), it writes at once."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is due on

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._pending.append(line)
        if loop is None:
            self._write()
        elif self._flush_on is not loop:
            # Not "when the first line comes": a loop that stopped before its flush ran leaves
            # its lines to the next loop's.
            self._flush_on = loop
            loop.call_soon(self._write)

    def flush(self) -> None:
        """Write what is pending and flush the stream; the stream's errors are the caller's, as
        with logging's StreamHandler (``logging.shutdown`` ignores those of a closed stream)."""
        self._write(quiet=False)

    def _write(self, *, quiet: bool = True) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            text, self._pending = "".join(self._pending), []
            try:
                if text:
                    self.stream.write(text)
                super().flush()
            except Exception:
                if not quiet:
                    raise
                # For lines logged, as logging does when a write fails: say so (and what they
                # said) on stderr, never raise.
                self.handleError(logging.makeLogRecord({"msg": text}))


def configure_logging(log_format: Literal["json", "text"] = "json", level: str = "INFO") -> None:
    # Neither format shows where a line was logged from, nor the thread or process that logged
    # it: the logging HOWTO's "Optimization" switches leave them out of every record (an
    # environment logs three lines per invocation, START, END and REPORT, a busy mapping
    # thousands a second).
    logging._srcfile = None  # the documented way to skip findCaller
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    # Last: whatever a line says, a client library's URL or a password, leaves without secrets.
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries log every reconnect attempt at ERROR; our own lines say what matters.
    for noisy in ("aiokafka", "aio_pika", "aiormq", "botocore", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if level.upper() != "DEBUG" else logging.DEBUG)
