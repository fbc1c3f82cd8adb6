"""The four suites: throughput, latency, backlog and scaling (SPEC section 10).

Each suite takes a started :class:`~bench.sources.SourceBench` and returns plain dicts, which
:mod:`bench.report` turns into tables and plots. Contenders alternate run by run (raw, poller,
FastStream, raw, poller, ...), so that a slow minute of a shared machine hurts them alike, and
every run gets a fresh topic, queue or stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.handlers import FILTER_KEEPS_ONE_IN
from bench.run import FILTERED, Consumer, Measurement, measure
from bench.sources import SourceBench, Target, Workload

log = logging.getLogger(__name__)


def _within(records: int) -> float:
    # Generous: a run that is this slow has failed anyway.
    return max(90.0, records / 500)


async def throughput(bench: SourceBench, workload: Workload, runs: int, workdir: Path) -> list[Measurement]:
    """``runs`` runs of every contender over the same workload, alternating."""
    results: list[Measurement] = []
    order = ["raw", "poller", *[c for c in bench.contenders if c != "raw"]]
    for run in range(runs):
        for contender in order:
            kinds = FILTER_KEEPS_ONE_IN if contender == FILTERED else 0
            target = await bench.prepare(replace(workload, value_kinds=kinds))
            try:
                result = await measure(
                    bench,
                    target,
                    contender,
                    workdir / f"{bench.name}-{contender}-{run}",
                    within=_within(workload.records),
                )
            finally:
                await bench.cleanup(target)
            result.extra["run"] = run
            results.append(result)
    return results


async def latency(
    bench: SourceBench, workload: Workload, rate: float, count: int, workdir: Path, runs: int = 1
) -> list[dict[str, Any]]:
    """Handler start minus send time at a steady low rate, with a batching window of 0."""
    results: list[dict[str, Any]] = []
    workload = replace(workload, window=0.0)
    for run in range(runs):
        for contender in ("raw", "poller"):
            target = await bench.create_empty(workload)
            try:
                samples = await _latency_run(
                    bench, target, contender, rate, count, workdir / f"{bench.name}-latency-{contender}-{run}"
                )
            finally:
                await bench.cleanup(target)
            results.append(
                {
                    "source": bench.name,
                    "contender": contender,
                    "run": run,
                    **_percentiles(samples),
                    "rate": rate,
                }
            )
            log.info("%-8s %-10s latency: %s", bench.name, contender, results[-1])
    return results


async def _latency_run(
    bench: SourceBench, target: Target, contender: str, rate: float, count: int, workdir: Path
) -> list[float]:
    consumer = Consumer(bench, target, contender, workdir, handler="bench.handlers:latency")
    async with consumer:
        # Warm up until the consumer has joined and handled a record: what it read before that
        # waited for the join, not for the consumer.
        warm = 0
        deadline = time.monotonic() + 60
        while consumer.snapshot().count == 0:
            if (error := consumer.failed()) is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{bench.name} {contender} did not start consuming: {error or 'timeout'}")
            await bench.produce_paced(target, 20, 1)
            warm += 1
            await asyncio.sleep(0.05)
        if (error := await consumer.wait_for(warm, 30)) is not None:
            raise RuntimeError(error)
        started = time.time_ns()
        await bench.produce_paced(target, rate, count)
        if (error := await consumer.wait_for(warm + count, 60)) is not None:
            raise RuntimeError(error)
    assert consumer.latency_path is not None
    samples = []
    for line in consumer.latency_path.read_text().splitlines():
        sent, _, seconds = line.partition(" ")
        if int(sent) >= started:
            samples.append(float(seconds))
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(workdir, ignore_errors=True)
    return samples


def _percentiles(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"samples": 0}
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    return {
        "samples": len(ordered),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": ordered[-1] * 1000,
    }


async def backlog(
    bench: SourceBench, sizes: list[int], workload: Workload, workdir: Path
) -> list[Measurement]:
    """Peak RSS of the poller (and of the raw loop, for reference) consuming backlogs of each size:
    bounded memory means the peak does not grow with the backlog."""
    results: list[Measurement] = []
    for size in sizes:
        target = await bench.prepare(replace(workload, records=size))
        try:
            for contender in ("poller", "raw"):
                # One topic for both: each reads it whole in a consumer group of its own.
                fresh = Target(
                    target.name, target.workload, {**target.extra, "group": f"{target.name}-{contender}"}
                )
                result = await measure(
                    bench, fresh, contender, workdir / f"backlog-{contender}-{size}", within=_within(size)
                )
                result.extra["backlog"] = size
                results.append(result)
        finally:
            await bench.cleanup(target)
    return results


async def scaling(
    bench: SourceBench,
    base: Workload,
    parallelism: list[int],
    batch_sizes: list[int],
    workdir: Path,
    contenders: tuple[str, ...] = ("raw", "poller"),
) -> list[Measurement]:
    """Records/s and CPU per record over parallelism (at ``base.batch_size``) and over batch size
    (at ``base.parallelism``). Small batches are slow by nature, so they get fewer records."""
    points = [replace(base, parallelism=p) for p in parallelism]
    points += [replace(base, batch_size=b) for b in batch_sizes if b != base.batch_size]
    results: list[Measurement] = []
    for workload in points:
        if workload.batch_size < 10:
            workload = replace(workload, records=max(2_000, base.records // 10))
        for contender in contenders:
            target = await bench.prepare(workload)
            try:
                name = f"scaling-{bench.name}-{contender}-{workload.parallelism}-{workload.batch_size}"
                results.append(
                    await measure(bench, target, contender, workdir / name, within=_within(workload.records))
                )
            finally:
                await bench.cleanup(target)
    return results


def medians(results: list[Measurement]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (source, contender): the median of each measure over the runs that succeeded."""
    grouped: dict[tuple[str, str], list[Measurement]] = {}
    for result in results:
        grouped.setdefault((result.source, result.contender), []).append(result)
    summary: dict[tuple[str, str], dict[str, Any]] = {}
    for key, group in grouped.items():
        good = [r for r in group if r.error is None and r.rate is not None]
        summary[key] = {
            "runs": len(group),
            "ok": len(good),
            "rate": statistics.median(r.rate for r in good if r.rate is not None) if good else None,
            "rates": [round(r.rate) if r.rate is not None else None for r in group],
            "cpu_per_10k": statistics.median(r.cpu_per_10k for r in good if r.cpu_per_10k is not None)
            if good
            else None,
            "peak_rss_mb": statistics.median(r.peak_rss_mb for r in good if r.peak_rss_mb is not None)
            if good
            else None,
            "errors": [r.error for r in group if r.error],
        }
    return summary
