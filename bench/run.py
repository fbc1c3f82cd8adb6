"""Run one contender over one target in a process of its own and measure it.

The poller runs as ``poller run -c CONFIG`` (the real command line, a generated config, the
``bench.handlers`` no-op handler): contender ``poller`` with the default runtime (the handler in
execution environments, SPEC section 12), ``poller-inline`` with ``runtime: inline``; the others as
``python -m bench.consume``. The harness watches
the progress file until every record was handed to user code, reads the process's peak RSS, then
stops it with SIGTERM as an operator would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import progress
from bench.sources import SourceBench, Target

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
STEADY_FROM, STEADY_TO = 0.10, 0.90  # the steady part of a run, as fractions of its records
POLL_SECONDS = 0.05
STOP_GRACE_SECONDS = 30.0
# BENCH_PROFILE=DIR: sample every contender process with py-spy into DIR/<run>.txt (raw folded
# stacks, summarised by `python -m bench.profile`). Sampling costs the process a few per cent, so
# the numbers of a profiled run are not the ones to report.
PROFILE_ENV = "BENCH_PROFILE"
PROFILE_RATE = 250  # samples per second


@dataclass
class Measurement:
    source: str
    contender: str
    records: int
    batch_size: int
    parallelism: int
    rate: float | None = None  # records/s over the steady part
    cpu_per_10k: float | None = None  # CPU seconds of the consumer process per 10,000 records
    peak_rss_mb: float | None = None
    seconds: float = 0.0  # process start to the last record, start-up included
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The poller contenders and the function runtime each runs (None: the default, environments).
POLLER_RUNTIMES: dict[str, str | None] = {
    "poller": None,
    "poller-inline": "inline",
    "poller-filtered": None,
}
# poller-filtered (Kafka): poller with a filter that keeps the values of one kind in ten
# (bench.sources.kafka.fill_values), its handler counting every record consumed.
FILTERED = "poller-filtered"
FILTER_PATTERN = '{"value": {"kind": ["order"]}}'
FILTERED_HANDLER = "bench.handlers:consumed"


def poller_config(
    bench: SourceBench, target: Target, handler: str, runtime: str | None = None
) -> dict[str, Any]:
    workload = target.workload
    mapping: dict[str, Any] = {
        "function_name": "bench",
        "source": {**bench.poller_source(target), "connection": "bench"},
        "batch_size": workload.batch_size,
        "starting_position": "TRIM_HORIZON",
        **bench.poller_mapping_extra(target),
    }
    if workload.window is not None:
        mapping["maximum_batching_window_in_seconds"] = workload.window
    return {
        "connections": {"bench": bench.poller_connection()},
        "functions": {
            "bench": {"handler": handler, "timeout": 60, **({"runtime": runtime} if runtime else {})}
        },
        "mappings": {"bench": mapping},
        "admin": {"host": "127.0.0.1", "port": 0},
    }


def _argv(
    bench: SourceBench, target: Target, contender: str, workdir: Path, handler: str, latency: Path | None
) -> list[str]:
    if contender in POLLER_RUNTIMES:
        config = workdir / "poller.yaml"
        filtered = contender == FILTERED
        settings = poller_config(
            bench, target, FILTERED_HANDLER if filtered else handler, POLLER_RUNTIMES[contender]
        )
        if filtered:
            settings["mappings"]["bench"]["filter_criteria"] = {"filter": [{"pattern": FILTER_PATTERN}]}
        config.write_bytes(orjson.dumps(settings, option=orjson.OPT_INDENT_2))
        poller = Path(sys.executable).parent / "poller"
        command = [str(poller)] if poller.exists() else [sys.executable, "-m", "poller"]
        return [*command, "run", "-c", str(config), "--drain-timeout", "10"]
    spec = bench.spec(target, contender)
    if latency is not None:
        spec["latency_file"] = str(latency)
    return [sys.executable, "-m", "bench.consume", bench.name, contender, orjson.dumps(spec).decode()]


def peak_rss_mb(pid: int) -> float | None:
    """The process's high-water resident set (VmHWM), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def context_switches(pid: int) -> dict[str, int]:
    """The context switches of the process so far, and of its children (a poller's environments)
    together: voluntary ones (it waited) and involuntary ones (another process took its CPU)."""
    counts = dict.fromkeys(("voluntary", "involuntary", "children_voluntary", "children_involuntary"), 0)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for prefix, process in [("", str(pid)), *(("children_", child) for child in children)]:
        try:
            lines = Path(f"/proc/{process}/status").read_text().splitlines()
        except OSError:
            continue  # it ended meanwhile
        for line in lines:
            name, _, value = line.partition(":")
            if name in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                kind = "voluntary" if name.startswith("voluntary") else "involuntary"
                counts[prefix + kind] += int(value)
    return counts


class Consumer:
    """A started contender process; use as an async context manager (it is stopped on exit)."""

    def __init__(
        self,
        bench: SourceBench,
        target: Target,
        contender: str,
        workdir: Path,
        *,
        handler: str = "bench.handlers:noop",
    ) -> None:
        self.bench = bench
        self.target = target
        self.contender = contender
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        workload = target.workload
        self.progress_path = workdir / "progress.bin"
        progress.create(
            self.progress_path,
            max(1, int(workload.records * STEADY_FROM)),
            max(2, int(workload.records * STEADY_TO)),
        )
        # Where the latency handler or loop writes its samples, if this is a latency run.
        self.latency_path = workdir / "latency.txt" if handler.endswith(":latency") else None
        self.argv = _argv(bench, target, contender, workdir, handler, self.latency_path)
        self.log_path = workdir / "process.log"
        self.process: asyncio.subprocess.Process | None = None
        self.profiler: asyncio.subprocess.Process | None = None
        self.profile_dir = Path(os.environ[PROFILE_ENV]) if os.environ.get(PROFILE_ENV) else None
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
        self.started = 0.0

    async def __aenter__(self) -> Consumer:
        env = {
            **os.environ,
            progress.ENV: str(self.progress_path),
            "PYTHONPATH": os.pathsep.join(
                # BENCH_POLLER_PATH: a directory holding another `poller` package to measure
                # instead of this tree's (an A/B of an engine change).
                filter(None, [os.environ.get("BENCH_POLLER_PATH"), str(REPO), os.environ.get("PYTHONPATH")])
            ),
        }
        if self.latency_path is not None and self.contender in POLLER_RUNTIMES:
            env["BENCH_LATENCY"] = str(self.latency_path)
        with self.log_path.open("wb") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )
        self.started = time.monotonic()
        if self.profile_dir is not None:
            await self._start_profiler(self.profile_dir)
        return self

    async def _start_profiler(self, directory: Path) -> None:
        py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if py_spy is None:
            raise RuntimeError(
                f"{PROFILE_ENV} is set but py-spy is not installed (pip install -e '.[bench]')"
            )
        output = directory / f"{self.workdir.name}.txt"
        argv = [py_spy, "record", "--pid", str(self.pid), "--rate", str(PROFILE_RATE)]
        argv += ["--format", "raw", "--nonblocking", "--output", str(output)]
        with (directory / f"{self.workdir.name}.log").open("wb") as log_file:
            self.profiler = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def snapshot(self) -> progress.Snapshot:
        return progress.read(self.progress_path)

    def failed(self) -> str | None:
        """Why the process is gone, if it is."""
        assert self.process is not None
        code = self.process.returncode
        if code is None:
            return None
        tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return f"exited with {code}: " + " | ".join(tail)

    async def wait_for(self, count: int, within: float) -> str | None:
        """Wait until ``count`` records were consumed; an error text if the process died or
        ``within`` seconds passed first."""
        deadline = time.monotonic() + within
        while self.snapshot().count < count:
            if (error := self.failed()) is not None:
                return error
            if time.monotonic() > deadline:
                return f"only {self.snapshot().count} of {count} records after {within:.0f} s"
            await asyncio.sleep(POLL_SECONDS)
        return None

    async def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning(
                    "%s %s did not stop within %.0f s; killing it",
                    self.bench.name,
                    self.contender,
                    STOP_GRACE_SECONDS,
                )
                process.kill()
        code = await process.wait()
        if self.profiler is not None:
            # py-spy writes its file once the process it samples is gone.
            try:
                await asyncio.wait_for(self.profiler.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                self.profiler.kill()
            self.profiler = None
        return code


async def measure(
    bench: SourceBench, target: Target, contender: str, workdir: Path, *, within: float
) -> Measurement:
    """Consume every record of a filled target with one contender and measure it."""
    workload = target.workload
    result = Measurement(bench.name, contender, workload.records, workload.batch_size, workload.parallelism)
    async with Consumer(bench, target, contender, workdir) as consumer:
        result.error = await consumer.wait_for(workload.records, within)
        result.seconds = time.monotonic() - consumer.started
        result.peak_rss_mb = peak_rss_mb(consumer.pid)
        result.extra["context_switches"] = context_switches(consumer.pid)
        snap = consumer.snapshot()
        code = await consumer.stop()
    if snap.steady:
        result.rate = snap.rate
        result.cpu_per_10k = snap.cpu_per_10k
    if result.error is None and code not in (0, -signal.SIGTERM):
        result.error = f"exit code {code} after SIGTERM; see {consumer.log_path}"
    if result.error is None and not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(workdir, ignore_errors=True)  # keep the logs of failed runs only
    log.info(
        "%-8s %-10s %7d records, batch %4d x%d: %s",
        bench.name,
        contender,
        workload.records,
        workload.batch_size,
        workload.parallelism,
        result.error or summary(result),
    )
    return result


def summary(result: Measurement) -> str:
    if result.rate is None or result.cpu_per_10k is None:
        return "no steady part measured"
    return f"{result.rate:,.0f} rec/s, {result.cpu_per_10k:.3f} CPU s/10k, {result.peak_rss_mb or 0:.0f} MiB peak"
