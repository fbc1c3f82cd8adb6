"""A contender's process: ``python -m bench.consume SOURCE CONTENDER SPEC_JSON``.

Runs one of a source bench's own consumers (``raw``, ``faststream``) until SIGTERM, reporting
progress through the file named by ``BENCH_PROGRESS``. It uses the same event loop as ``poller
run`` (:func:`poller.app.loop_factory`: uvloop when installed), so that the comparison is between consumers, not event loops.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from contextlib import nullcontext
from typing import TextIO

import orjson

from bench.progress import Progress
from bench.sources import load
from poller.app import loop_factory


async def _main(source: str, contender: str, spec: dict[str, object], latency: TextIO | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    progress = Progress.from_env()
    if progress is None:
        raise SystemExit("BENCH_PROGRESS is not set")
    await load(source).consume(contender, spec, progress, latency, stop)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    source, contender, raw_spec = argv
    spec = orjson.loads(raw_spec)
    path = spec.get("latency_file")
    with (
        open(path, "a", buffering=1) if path else nullcontext() as latency,
        asyncio.Runner(loop_factory=loop_factory()) as runner,
    ):
        runner.run(_main(source, contender, spec, latency))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
