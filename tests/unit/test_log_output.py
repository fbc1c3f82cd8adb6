"""How log lines leave poller: JSON lines whose time is datetime's, written once per turn of the
event loop on its thread and at once elsewhere, none lost at a flush."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
from support import logging_to

from poller.observability.logs import JsonFormatter, StreamHandler


class CountingStream(io.StringIO):
    """Counts the writes it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, CountingStream, StreamHandler]]:
    stream = CountingStream()
    handler = StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    with logging_to(handler, "poller.test.output") as logger:
        yield logger, stream, handler


def messages(stream: io.StringIO) -> list[str]:
    return [orjson.loads(line)["message"] for line in stream.getvalue().splitlines()]


async def test_the_lines_of_one_turn_of_the_loop_are_written_together_at_its_end(
    logged: tuple[logging.Logger, CountingStream, StreamHandler],
) -> None:
    logger, stream, _ = logged
    for number in range(3):
        logger.info("line %d", number)
    assert stream.writes == 0, "not yet: the turn is not over"
    await asyncio.sleep(0)
    assert messages(stream) == ["line 0", "line 1", "line 2"]
    assert stream.writes == 1
    logger.info("line 3")
    await asyncio.sleep(0)
    assert messages(stream)[-1] == "line 3"
    assert stream.writes == 2


async def test_a_line_from_a_thread_without_a_loop_is_written_at_once_after_those_before_it(
    logged: tuple[logging.Logger, CountingStream, StreamHandler],
) -> None:
    logger, stream, _ = logged
    logger.info("from the loop")
    thread = threading.Thread(target=logger.info, args=("from a thread",))
    thread.start()
    thread.join()
    assert messages(stream) == ["from the loop", "from a thread"], "written by the thread, in order"
    await asyncio.sleep(0)
    assert messages(stream) == ["from the loop", "from a thread"], "and not twice"


def test_the_lines_of_a_loop_that_stopped_before_their_write_are_written_by_the_next_loop(
    logged: tuple[logging.Logger, CountingStream, StreamHandler],
) -> None:
    logger, stream, _ = logged
    first = asyncio.new_event_loop()

    def log_and_stop() -> None:
        logger.info("in the first loop")
        first.stop()  # the loop ends with this turn: the write due after it never runs

    first.call_soon(log_and_stop)
    first.run_forever()
    first.close()
    assert messages(stream) == []

    async def log_again() -> None:
        logger.info("in the second loop")
        await asyncio.sleep(0)

    asyncio.run(log_again())
    assert messages(stream) == ["in the first loop", "in the second loop"]


def test_without_a_running_loop_every_line_is_written_at_once(
    logged: tuple[logging.Logger, CountingStream, StreamHandler],
) -> None:
    logger, stream, _ = logged
    logger.info("one")
    assert messages(stream) == ["one"]
    logger.info("two")
    assert messages(stream) == ["one", "two"]
    assert stream.writes == 2


async def test_flush_writes_what_the_turn_has_logged_so_far(
    logged: tuple[logging.Logger, CountingStream, StreamHandler],
) -> None:
    logger, stream, handler = logged
    logger.info("before an exit")
    handler.flush()  # what logging.shutdown does at exit, and poller before os._exit
    assert messages(stream) == ["before an exit"]


def test_a_line_that_cannot_be_written_is_reported_not_raised(
    logged: tuple[logging.Logger, CountingStream, StreamHandler],
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger, stream, _ = logged
    stream.close()
    logger.info("into a closed stream")  # logging's own handleError reports it on stderr
    report = capsys.readouterr().err
    assert "--- Logging error ---" in report
    assert "into a closed stream" in report.partition("Message: ")[2], "with the line it lost"


def test_flush_raises_what_the_stream_raises_as_logging_s_handler_does(
    logged: tuple[logging.Logger, CountingStream, StreamHandler],
) -> None:
    _, _, handler = logged
    with open(os.devnull, "w") as closed:  # a file's flush, unlike a StringIO's, fails once closed
        pass
    handler.stream = closed
    with pytest.raises(ValueError, match="closed file"):
        handler.flush()  # logging.shutdown ignores this one; a line logged reports it


@pytest.mark.parametrize(
    "created",
    [
        0.0,
        1_764_000_000.0,
        1_764_000_000.123,
        1_764_000_000.9995,  # rounds up to the next millisecond, as datetime rounds it
        1_764_000_000.9999996,  # rounds up into the next second
        704_119_461.2479995,
        1_764_000_059.999,
        4_102_444_799.999,  # 2099-12-31T23:59:59.999
    ],
)
def test_the_time_of_a_json_line_is_what_datetime_makes_of_it(created: float) -> None:
    formatter = JsonFormatter()
    record = logging.makeLogRecord({"msg": "x", "created": created})
    expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    assert orjson.loads(formatter.format(record))["time"] == expected
    record_a_second_later = logging.makeLogRecord({"msg": "x", "created": created + 1})
    later = datetime.fromtimestamp(created + 1, UTC).isoformat(timespec="milliseconds")
    assert orjson.loads(formatter.format(record_a_second_later))["time"] == later
    assert orjson.loads(formatter.format(record))["time"] == expected, "and back"
