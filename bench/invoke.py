"""Synchronous invocations through the Lambda Invoke API: ``python -m bench.invoke``.

Starts ``poller run`` (the real command line) with one Python function and no mappings, kept
warm (one provisioned environment, ``reserved_concurrent_executions: 1``), and invokes it one call
after another, the way a caller waiting for each answer does:

- **direct**: in this process, ``FunctionRuntime.invoke_payload`` on a function of the same config
  (its own warm environment): what an invocation of an environment costs without the API;
- **api**: ``POST /2015-03-31/functions/bench/invocations`` from aiohttp over one keep-alive
  connection: the Invoke API's own cost on top of that;
- **boto3**: ``boto3.client("lambda").invoke`` (signing, botocore's request and response
  handling): what an SDK caller sees;
- **http**: ``GET /healthz`` over the same kind of connection, no invocation at all: the part of
  the API's cost that is the HTTP round trip between two processes.

Contenders alternate run by run; each run reports invocations per second and latency percentiles,
and the medians over the runs are printed, with what the API adds to ``direct``. Both poller and
this process log at WARNING (the START/END/REPORT lines at INFO would be written by one side only).
Also times the SigV4 check of one request. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import aiohttp
import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotocoreConfig
from botocore.credentials import Credentials
from multidict import CIMultiDict

from poller.app import loop_factory, tune_garbage_collector
from poller.config import Function
from poller.invocation.sigv4 import SignatureVerifier
from poller.runtime.function import FunctionRuntime
from poller.tasks import BackgroundTasks

REPO = Path(__file__).resolve().parent.parent
FUNCTION = {
    "runtime": f"python3.{sys.version_info.minor}",
    "code": str(REPO),
    "handler": "bench.handlers.noop",
    "provisioned_concurrent_executions": 1,
    "reserved_concurrent_executions": 1,
}
PAYLOAD = json.dumps({"order": 1234, "items": [{"sku": "A-1", "qty": 2}], "note": "x" * 64}).encode()
CONTENDERS = ("direct", "api", "boto3", "http")
WARM_UP = 50


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_poller(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    config = workdir / "poller.yaml"
    config.write_text(json.dumps({"functions": {"bench": FUNCTION}, "admin": {"port": port}}))
    return subprocess.Popen(
        [sys.executable, "-m", "poller", "--log-level", "WARNING", "run", "-c", str(config)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"poller exited with {process.returncode}")
            try:
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("poller did not become ready")


async def run_direct(function: FunctionRuntime, count: int) -> list[float]:
    samples = []
    for _ in range(WARM_UP):
        await function.invoke_payload(PAYLOAD, wait=False)
    for _ in range(count):
        started = time.perf_counter()
        result = await function.invoke_payload(PAYLOAD, wait=False)
        samples.append(time.perf_counter() - started)
        if result.error is not None:
            raise RuntimeError(f"the function failed: {result.error}")
    return samples


async def run_api(url: str, count: int) -> list[float]:
    samples = []
    path = f"{url}/2015-03-31/functions/bench/invocations"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        for index in range(WARM_UP + count):
            started = time.perf_counter()
            async with http.post(path, data=PAYLOAD) as response:
                await response.read()
                if response.status != 200 or "X-Amz-Function-Error" in response.headers:
                    raise RuntimeError(f"the Invoke API answered {response.status}: {await response.text()}")
            if index >= WARM_UP:
                samples.append(time.perf_counter() - started)
    return samples


async def run_http(url: str, count: int) -> list[float]:
    samples = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        for index in range(WARM_UP + count):
            started = time.perf_counter()
            async with http.get(f"{url}/healthz") as response:
                await response.read()
            if index >= WARM_UP:
                samples.append(time.perf_counter() - started)
    return samples


def run_boto3(url: str, count: int) -> list[float]:
    client = boto3.client(
        "lambda",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="AKIDBENCH",
        aws_secret_access_key="bench",
        config=BotocoreConfig(retries={"total_max_attempts": 1}),
    )
    samples = []
    try:
        for index in range(WARM_UP + count):
            started = time.perf_counter()
            response = client.invoke(FunctionName="bench", Payload=PAYLOAD)
            response["Payload"].read()
            if index >= WARM_UP:
                samples.append(time.perf_counter() - started)
            if "FunctionError" in response:
                raise RuntimeError(f"the function failed: {response['FunctionError']}")
    finally:
        client.close()
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    return {"per_second": len(ordered) / sum(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99)}


def sigv4_check_microseconds() -> float:
    """The SigV4 check of one botocore-signed Invoke request, best of 5 x 2,000."""
    body = PAYLOAD
    request = AWSRequest(
        method="POST",
        url="http://127.0.0.1:8080/2015-03-31/functions/bench/invocations",
        data=body,
        headers={"Host": "127.0.0.1:8080"},
    )
    SigV4Auth(Credentials("AKIDBENCH", "bench"), "lambda", "us-east-1").add_auth(request)
    headers = CIMultiDict(request.headers.items())
    verifier = SignatureVerifier("AKIDBENCH", "bench")

    def check() -> None:
        digest = hashlib.sha256(body).hexdigest()
        if verifier.verify("POST", "/2015-03-31/functions/bench/invocations", headers, digest) is not None:
            raise RuntimeError("the signature did not verify")

    return min(timeit.repeat(check, number=2000, repeat=5)) / 2000 * 1e6


async def measure(runs: int, count: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_poller(Path(workdir), port)
        function = FunctionRuntime("bench", Function.model_validate(FUNCTION))
        try:
            await wait_ready(url, process)
            async with asyncio.TaskGroup() as group:
                tasks = BackgroundTasks(group, "function bench")
                await function.start(tasks)
                try:
                    for run in range(runs):
                        for name in CONTENDERS:
                            if name == "direct":
                                samples = await run_direct(function, count)
                            elif name == "api":
                                samples = await run_api(url, count)
                            elif name == "http":
                                samples = await run_http(url, count)
                            else:
                                samples = await asyncio.to_thread(run_boto3, url, count)
                            results[name].append(summary(samples))
                            print(
                                f"run {run + 1}/{runs} {name:6}: {_row(results[name][-1])}", file=sys.stderr
                            )
                finally:
                    await function.close()
                    await tasks.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
    return results


def _row(row: dict[str, float]) -> str:
    return f"{row['per_second']:8.0f}/s  p50 {row['p50_ms']:6.3f} ms  p99 {row['p99_ms']:6.3f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.invoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000, help="invocations per run and contender")
    args = parser.parse_args(argv)
    tune_garbage_collector()
    with asyncio.Runner(loop_factory=loop_factory()) as loop:
        results = loop.run(measure(args.runs, args.count))
    medians = {
        name: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        for name, rows in results.items()
    }
    print(f"synchronous invocations, one warm environment, {args.count} a run, medians of {args.runs} runs:")
    for name in CONTENDERS:
        print(f"  {name:6}  {_row(medians[name])}")
    direct = medians["direct"]
    for name in ("api", "boto3"):
        print(
            f"  {name} adds p50 {medians[name]['p50_ms'] - direct['p50_ms']:+.3f} ms, "
            f"p99 {medians[name]['p99_ms'] - direct['p99_ms']:+.3f} ms over direct"
        )
    print(f"  SigV4 check of one request: {sigv4_check_microseconds():.1f} us")
    Path(REPO / ".bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / ".bench" / "results" / "invoke.json").write_text(
        json.dumps({"runs": results, "medians": medians}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
