"""``python -m bench``: run the suites against every source that exists, report the results.

    python -m bench                      # everything: about 10 minutes on 2 cores
    python -m bench --docs               # ... and rewrite docs/benchmarks.md and its plot
    python -m bench --quick              # a smoke run of the whole harness (small numbers, 1 run)
    python -m bench --suites throughput --sources kafka --runs 5

Brokers are started on ports of their own (bench.brokers) and stopped at the end; results go to
``.bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import asdict
from typing import Any

import orjson

from bench import report, run, suites
from bench.run import REPO
from bench.sources import SOURCES, SourceBench, Workload, load

log = logging.getLogger("bench")

SUITES = ("throughput", "latency", "backlog", "scaling")
RESULTS = REPO / ".bench" / "results"
WORKDIR = REPO / ".bench" / "runs"
PROFILES = REPO / ".bench" / "profiles"
DOCS = REPO / "docs" / "benchmarks.md"
PLOT = REPO / "docs" / "benchmarks-scaling.png"

# Per source: records of a throughput run, the latency suite's rate (records/s and count).
LATENCY_SECONDS = 8
LATENCY_RATE = {"kafka": 200, "rabbitmq": 200, "sqs": 50, "kinesis": 50}
BACKLOG_SIZES = [200_000, 1_000_000]
SCALING_PARALLELISM = [1, 2, 4, 8]
SCALING_BATCH_SIZES = [1, 10, 100, 1000]
SCALING_SOURCES = ("kafka", "sqs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suites", default=",".join(SUITES), help=f"comma-separated subset of {', '.join(SUITES)}"
    )
    parser.add_argument(
        "--sources", default=",".join(SOURCES), help=f"comma-separated subset of {', '.join(SOURCES)}"
    )
    parser.add_argument("--runs", type=int, default=3, help="throughput runs per contender (default 3)")
    parser.add_argument("--records", type=int, help="records per throughput run (default: per source)")
    parser.add_argument(
        "--batch-size", type=int, help="batch size of the throughput runs (default: per source)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small numbers and one run: a smoke test of the harness"
    )
    parser.add_argument(
        "--docs", action="store_true", help=f"rewrite the results in {DOCS.relative_to(REPO)} and the plot"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every consumer with py-spy into .bench/profiles/ (see bench.profile); "
        "its numbers are then not the ones to report",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("aiokafka", "aio_pika", "aiormq", "botocore", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    chosen = [s.strip() for s in args.suites.split(",") if s.strip()]
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = (set(chosen) - set(SUITES)) | (set(sources) - set(SOURCES))
    if unknown:
        print(f"unknown suite or source: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.profile:
        os.environ[run.PROFILE_ENV] = str(PROFILES)
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    asyncio.run(_run(args, chosen, sources, results))
    results["seconds"] = time.monotonic() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    text = report.markdown(results)
    print(text)
    if args.docs:
        if results.get("scaling"):
            report.plot_scaling(
                results["scaling"],
                PLOT,
                results["scaling_base"]["parallelism"],
                results["scaling_base"]["batch_size"],
            )
        report.write_docs(text, DOCS)
        log.info("wrote %s", DOCS)
    log.info("done in %.1f minutes", results["seconds"] / 60)
    return 0


async def _run(
    args: argparse.Namespace, chosen: list[str], sources: list[str], results: dict[str, Any]
) -> None:
    brokers: dict[str, str] = {}
    skipped: dict[str, str] = {}
    async with AsyncExitStack() as stack:
        benches: dict[str, SourceBench] = {}
        for name in sources:
            cls = load(name)
            reason = cls.available()
            if reason is None:
                bench = cls()
                try:
                    await bench.start(stack)
                except Exception as exc:  # a broker that cannot start: report it, measure the rest
                    reason = f"its broker did not start: {exc}"
                else:
                    benches[name] = bench
                    brokers[name] = bench.describe()
            if reason is not None:
                skipped[name] = reason
                log.warning("skipping %s: %s", name, reason)
        results["environment"] = report.environment(brokers)
        results["skipped"] = skipped
        quick = args.quick
        runs = 1 if quick else args.runs

        def workload(bench: SourceBench) -> Workload:
            records = args.records or (
                max(2_000, bench.default_records // 20) if quick else bench.default_records
            )
            return Workload(records, args.batch_size or bench.default_batch_size, bench.default_parallelism)

        if "throughput" in chosen:
            results["throughput"] = {}
            for name, bench in benches.items():
                measured = await suites.throughput(bench, workload(bench), runs, WORKDIR)
                summary = suites.medians(measured)
                results["throughput"][name] = {
                    "workload": asdict(workload(bench)),
                    "broker_bound": bench.broker_bound,
                    "summary": {contender: row for (_, contender), row in summary.items()},
                    "runs": [m.as_dict() for m in measured],
                }
        if "latency" in chosen:
            results["latency"] = []
            for name, bench in benches.items():
                rate = LATENCY_RATE[name]
                count = rate * (2 if quick else LATENCY_SECONDS)
                try:
                    results["latency"] += await suites.latency(
                        bench, Workload(count, bench.default_batch_size, 1), rate, count, WORKDIR
                    )
                except RuntimeError as exc:
                    log.warning("latency of %s not measured: %s", name, exc)
                    skipped[f"{name} latency"] = str(exc)
        if "backlog" in chosen and "kafka" in benches:
            sizes = [20_000, 100_000] if quick else BACKLOG_SIZES
            kafka = benches["kafka"]
            measured = await suites.backlog(kafka, sizes, workload(kafka), WORKDIR)
            results["backlog"] = [m.as_dict() for m in measured]
        if "scaling" in chosen:
            results["scaling"] = []
            results["scaling_base"] = {"parallelism": {}, "batch_size": {}}
            for name in SCALING_SOURCES:
                if name not in benches:
                    continue
                bench = benches[name]
                base = workload(bench)
                if not quick:
                    base = Workload(bench.scaling_records, base.batch_size, base.parallelism)
                results["scaling_base"]["parallelism"][name] = base.parallelism
                results["scaling_base"]["batch_size"][name] = base.batch_size
                measured = await suites.scaling(
                    bench, base, SCALING_PARALLELISM, bench.scaling_batch_sizes(SCALING_BATCH_SIZES), WORKDIR
                )
                results["scaling"] += [m.as_dict() for m in measured]
