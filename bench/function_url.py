"""Requests through a function URL against invoking the environment directly: ``python -m bench.function_url``.

One function in warm Python environments (``provisioned_concurrent_executions`` of them, as many
as its ``reserved_concurrent_executions``) answers ``{"statusCode": 200, "body": "ok"}``
(``bench.handlers.http_ok``). In this process, with ``poller run``'s event loop, tracing set-up and
garbage-collector settings, the function runtime and the function URL listener run as the service
runs them; an HTTP client (aiohttp, keep-alive connections) runs as a process of its own. Each run,
alternating:

- latency: sequential requests through the URL (timed by the client: HTTP both ways, the event
  built, the invocation, the response made); the same through a bare aiohttp server that invokes
  the function with a fixed payload and answers ``ok`` (the floor of any HTTP front end here:
  the client, aiohttp and the sockets); and as many sequential ``FunctionRuntime.invoke_payload``
  calls with the event such a request becomes (timed here). What the URL adds is the difference of
  their percentiles;
- throughput: as many concurrent clients as there are environments, for some seconds, through the
  URL and through the bare server, and as many concurrent direct invocations; completed requests
  per second, and the CPU time of this process (poller's side: the environments and the client are
  other processes) per request.

Medians of several runs. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from poller.app import loop_factory, tune_garbage_collector
from poller.config import Function
from poller.invocation.urls.event import HttpRequest, UrlInfo, request_event
from poller.invocation.urls.listeners import FunctionUrls
from poller.observability.tracing import Telemetry, configure_tracing
from poller.runtime.environments.api import Response
from poller.runtime.function import FunctionRuntime
from poller.tasks import BackgroundTasks

REPO = Path(__file__).resolve().parent.parent
NAME = "bench-url"
# What a typical client sends: the event a request with these headers becomes is the direct payload.
CLIENT_HEADERS = {"User-Agent": "bench/1", "Accept": "*/*", "Accept-Encoding": "gzip, deflate"}


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the client (a process of its own) -----------------------------------------------------------


async def client_latency(url: str, requests: int) -> list[float]:
    import aiohttp

    durations = []
    async with aiohttp.ClientSession(headers=CLIENT_HEADERS) as http:
        for _ in range(requests):
            started = time.perf_counter()
            async with http.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"the URL answered {response.status}")
            durations.append(time.perf_counter() - started)
    return durations


async def client_throughput(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    import aiohttp

    counts = {"ok": 0, "other": 0}
    deadline = time.perf_counter() + seconds

    async def worker(http: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            async with http.get(url) as response:
                await response.read()
                counts["ok" if response.status == 200 else "other"] += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=CLIENT_HEADERS, connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"per_second": counts["ok"] / elapsed, "not_ok": counts["other"]}


def client_main(args: argparse.Namespace) -> int:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if args.client == "latency":
            result: Any = runner.run(client_latency(args.url, args.requests))
        else:
            result = runner.run(client_throughput(args.url, args.seconds, args.concurrency))
    print(json.dumps(result))
    return 0


async def run_client(url: str, *options: str) -> Any:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.function_url",
        "--url",
        url,
        *options,
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the client exited with {process.returncode}")
    return json.loads(out)


# --- the service side ----------------------------------------------------------------------------


async def direct_latency(function: FunctionRuntime, payload: bytes, requests: int) -> list[float]:
    durations = []
    for _ in range(requests):
        started = time.perf_counter()
        result = await function.invoke_payload(payload)
        durations.append(time.perf_counter() - started)
        assert isinstance(result.answer, Response), result.answer
    return durations


async def direct_throughput(
    function: FunctionRuntime, payload: bytes, seconds: float, concurrency: int
) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await function.invoke_payload(payload)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def bare_server(function: FunctionRuntime, payload: bytes) -> tuple[asyncio.Server, web.Server, str]:
    """An aiohttp server that does the least an HTTP front end can: read the request, invoke, answer."""

    async def handle(request: web.BaseRequest) -> web.Response:
        await request.read()
        await function.invoke_payload(payload)
        return web.Response(body=b"ok", content_type="application/json")

    handler = web.Server(handle, access_log=None)
    server = await asyncio.get_running_loop().create_server(handler, "127.0.0.1", 0)
    return server, handler, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


async def through(url: str, args: argparse.Namespace) -> dict[str, float]:
    """Latency percentiles and throughput (with poller's CPU per request) of requests to ``url``."""
    latency = await run_client(url, "--client", "latency", "--requests", str(args.requests))
    cpu = time.process_time()
    rate = await run_client(
        url, "--client", "throughput", "--seconds", str(args.seconds), "--concurrency", str(args.environments)
    )
    return {
        "p50_ms": percentile(latency, 0.5) * 1e3,
        "p99_ms": percentile(latency, 0.99) * 1e3,
        "per_second": rate["per_second"],
        "cpu_us": (time.process_time() - cpu) / (rate["per_second"] * args.seconds) * 1e6,
        "not_ok": rate["not_ok"],
    }


async def direct(function: FunctionRuntime, payload: bytes, args: argparse.Namespace) -> dict[str, float]:
    latency = await direct_latency(function, payload, args.requests)
    cpu = time.process_time()
    rate = await direct_throughput(function, payload, args.seconds, args.environments)
    return {
        "p50_ms": percentile(latency, 0.5) * 1e3,
        "p99_ms": percentile(latency, 0.99) * 1e3,
        "per_second": rate,
        "cpu_us": (time.process_time() - cpu) / (rate * args.seconds) * 1e6,
        "not_ok": 0,
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    config = Function.model_validate(
        {
            "runtime": python,
            "code": str(REPO),
            "handler": "bench.handlers.http_ok",
            "provisioned_concurrent_executions": args.environments,
            "reserved_concurrent_executions": args.environments,
            "function_url": {"port": 0},
        }
    )
    assert config.function_url is not None
    function = FunctionRuntime(NAME, config)
    urls = FunctionUrls(Telemetry())
    runs: list[dict[str, dict[str, float]]] = []
    async with asyncio.TaskGroup() as group:
        tasks = BackgroundTasks(group, f"function {NAME}")
        await function.start(tasks)
        try:
            await urls.start({NAME: config.function_url}, {NAME: function})
            listener = urls.listeners[NAME]
            request = HttpRequest(
                "GET",
                "/",
                [("Host", f"127.0.0.1:{listener.port}"), *CLIENT_HEADERS.items()],
                b"",
                "127.0.0.1",
            )
            event = request_event(request, UrlInfo(listener.url_id, listener.port), "0" * 36, now=time.time())
            payload = orjson.dumps(event)
            bare, bare_handler, bare_url = await bare_server(function, payload)
            for warm in (listener.url, bare_url):  # both sides warm before the first run
                await run_client(warm, "--client", "latency", "--requests", "200")
            await direct_latency(function, payload, 200)
            for number in range(args.runs):
                runs.append(
                    {
                        "url": await through(listener.url, args),
                        "bare": await through(bare_url, args),
                        "direct": await direct(function, payload, args),
                    }
                )
                print(f"run {number + 1}: {json.dumps(runs[-1])}", flush=True)
            bare.close()
            await bare_handler.shutdown(5)
        finally:
            await urls.close(5)
            await function.close()
            await tasks.close()
    median = {
        contender: {key: statistics.median(run[contender][key] for run in runs) for key in runs[0][contender]}
        for contender in runs[0]
    }
    return {"event_bytes": len(payload), "runs": runs, "median": median}


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    url, bare, direct = (result["median"][name] for name in ("url", "bare", "direct"))
    lines = [
        f"function URL, {args.environments} warm python environment(s), {result['event_bytes']}-byte event, "
        f"median of {args.runs} runs ({args.requests} sequential requests, {args.seconds:g} s at "
        f"concurrency {args.environments} each)",
        "",
        "| | function URL | bare aiohttp server | invoke_payload directly | URL - direct | URL - bare |",
        "|---|---|---|---|---|---|",
    ]
    for key, label, unit in (
        ("p50_ms", "latency p50", " ms"),
        ("p99_ms", "latency p99", " ms"),
        ("per_second", "requests/s", ""),
        ("cpu_us", "poller's CPU per request", " µs"),
    ):
        digits = 2 if unit == " ms" else 0
        cells = [f"{entry[key]:.{digits}f}{unit}" for entry in (url, bare, direct)]
        cells += [f"{url[key] - direct[key]:+.{digits}f}{unit}", f"{url[key] - bare[key]:+.{digits}f}{unit}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    refused = [run[name]["not_ok"] for run in result["runs"] for name in ("url", "bare")]
    if any(refused):
        lines.append(f"(answers other than 200 in the throughput runs: {refused})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.function_url", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per latency run")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run")
    parser.add_argument("--environments", type=int, default=2, help="warm environments (and clients)")
    parser.add_argument("--json", action="store_true", help="print the raw results as JSON too")
    # The client process's options.
    parser.add_argument("--client", choices=["latency", "throughput"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        return client_main(args)
    # As `poller run` sets them up: tracing (from the OTEL_* variables), its event loop and its
    # garbage collector settings.
    configure_tracing()
    tune_garbage_collector()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(measure(args))
    if args.json:
        print(json.dumps(result))
    print(report(result, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
