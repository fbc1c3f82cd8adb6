"""The ``poller`` command line (SPEC section 3). Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import orjson

from poller.errors import ConfigError, HandlerLoadError, PollerError, Throttled

if TYPE_CHECKING:
    from poller.config import Config
    from poller.invocation.sync import SyncResult
    from poller.runtime.function import FunctionRuntime

log = logging.getLogger("poller")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    from poller.config.loader import default_config_path

    parser = argparse.ArgumentParser(prog="poller", description="AWS Lambda-style event source mappings.")
    parser.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines on stderr")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(sub: argparse.ArgumentParser, default: str) -> None:
        sub.add_argument("-c", "--config", default=default, help=f"YAML config file (default {default})")

    run = commands.add_parser("run", help="run every enabled mapping until SIGTERM/SIGINT")
    with_config(run, default_config_path())
    run.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish in-flight batches")

    validate = commands.add_parser("validate", help="check a config file")
    with_config(validate, default_config_path())

    invoke = commands.add_parser("invoke", help="invoke one function once with an event and print its result")
    with_config(invoke, default_config_path())
    invoke.add_argument("function", help="a name under functions:")
    invoke.add_argument("--event", default="-", help="JSON event file, or - for standard input (default)")
    invoke.add_argument(
        "--async",
        dest="asynchronous",
        action="store_true",
        help="queue the event in the config's async_queue for a running poller and print its request id",
    )

    sample = commands.add_parser("sample-event", help="print a valid sample event of a source type")
    sample.add_argument("source", choices=["kafka", "sqs", "kinesis", "rabbitmq"])

    status = commands.add_parser(
        "status", help="print the state, lag and counts of a running poller's mappings"
    )
    status.add_argument(
        "--url", default=os.environ.get("POLLER_URL", "http://127.0.0.1:8080"), help="its admin address"
    )
    status.add_argument("--token", default=os.environ.get("POLLER_ADMIN_TOKEN"), help="its admin token")

    dev = commands.add_parser("dev", help="start local stand-in brokers and run config/dev.yaml")
    with_config(dev, "config/dev.yaml")
    dev.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish in-flight batches")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from poller.observability.logs import configure_logging

    configure_logging(args.log_format, args.log_level)
    try:
        if args.command == "validate":
            return _validate(args.config)
        if args.command == "sample-event":
            from poller.devtools.samples import sample_event

            sys.stdout.write(
                orjson.dumps(sample_event(args.source), option=orjson.OPT_INDENT_2).decode() + "\n"
            )
            return EXIT_OK
        if args.command == "status":
            return _status(args.url, args.token)
        if args.command == "invoke":
            return _invoke(args.config, args.function, args.event, asynchronous=args.asynchronous)
        if args.command == "run":
            return _run(args.config, args.drain_timeout)
        if args.command == "dev":
            from poller.devtools.dev import run_dev

            return EXIT_OK if run_dev(args.config, args.drain_timeout) else EXIT_FAILURE
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    raise AssertionError(f"unhandled command {args.command}")


def _status(url: str, token: str | None) -> int:
    from poller.status import StatusError, fetch_mappings, render

    try:
        print(render(fetch_mappings(url, token)))
    except StatusError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _validate(path: str) -> int:
    from poller.config.loader import load_config

    config = load_config(path)
    print(f"{path}: ok ({len(config.mappings)} mappings, {len(config.functions)} functions)")
    return EXIT_OK


def _invoke(path: str, name: str, event_path: str, *, asynchronous: bool = False) -> int:
    """Invoke a function once, as the Invoke API's RequestResponse does (the same code path), and
    print its response, or its error document and exit 1; ``asynchronous``: queue the event for a
    running poller instead, as the Invoke API's Event does, and print its request id."""
    from poller.config.loader import load_config
    from poller.runtime.function import FunctionRuntime

    config = load_config(path, check_handlers=False)
    if name not in config.functions:
        print(f"{path}: functions.{name}: no such function", file=sys.stderr)
        return EXIT_USAGE
    try:
        raw = sys.stdin.buffer.read() if event_path == "-" else open(event_path, "rb").read()  # noqa: SIM115
        orjson.loads(raw)
    except (OSError, orjson.JSONDecodeError) as exc:
        print(f"{event_path}: cannot read a JSON event: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if asynchronous:
        return _queue_event(config, name, raw)
    try:
        runtime = FunctionRuntime(name, config.functions[name])
    except HandlerLoadError as exc:
        print(f"{path}: functions.{name}.handler: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PollerError as exc:  # the runtime cannot start here
        print(f"{path}: functions.{name}.runtime: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = asyncio.run(_invoke_once(runtime, raw))
    except Throttled:
        print(f"{path}: functions.{name}: throttled: reserved_concurrent_executions is 0", file=sys.stderr)
        return EXIT_FAILURE
    except PollerError as exc:  # a provisioned environment failed its init
        print(f"{path}: functions.{name}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if result.error is not None:
        print(orjson.dumps(result.error.to_json(), option=orjson.OPT_INDENT_2).decode())
        return EXIT_FAILURE
    if runtime.pool is None:
        # An inline handler's result, indented for people.
        response: Any = orjson.loads(result.payload)
        print(orjson.dumps(response, option=orjson.OPT_INDENT_2).decode())
    else:
        # The response exactly as the function's runtime serialised it (as `aws lambda invoke` writes it).
        sys.stdout.write(result.payload.decode("utf-8", "replace") + "\n")
    return EXIT_OK


def _queue_event(config: Config, name: str, payload: bytes) -> int:
    """Store the event in the config's async queue (a running poller on the config invokes it)
    and print its request id, as ``aws lambda invoke --invocation-type Event`` answers."""
    import uuid

    from poller.invocation.asynchronous.invoker import PayloadTooLarge

    request_id = str(uuid.uuid4())
    try:
        asyncio.run(_enqueue(config, name, payload, request_id))
    except PayloadTooLarge as exc:
        print(f"functions.{name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PollerError as exc:  # the queue cannot be written
        print(f"async_queue: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(request_id)
    return EXIT_OK


async def _enqueue(config: Config, name: str, payload: bytes, request_id: str) -> None:
    from opentelemetry import trace

    from poller.clock import Clock
    from poller.invocation.asynchronous.invoker import enqueue
    from poller.invocation.asynchronous.store import build_event_store
    from poller.observability.async_spans import AsyncTelemetry
    from poller.observability.tracing import configure_tracing, shutdown_tracing

    configure_tracing()
    telemetry = AsyncTelemetry(trace.get_tracer("poller"), registry=None)
    store = build_event_store(config.async_queue)
    try:
        await store.open()
        await enqueue(store, telemetry, name, payload, request_id, None, Clock().now())
    finally:
        await store.close()
        shutdown_tracing()


async def _invoke_once(runtime: FunctionRuntime, payload: bytes) -> SyncResult:
    """Start the function, invoke it once, and stop its environments before returning."""
    from poller.invocation.sync import invoke_sync
    from poller.tasks import BackgroundTasks

    outcome: SyncResult | PollerError
    async with asyncio.TaskGroup() as group:
        tasks = BackgroundTasks(group, f"function {runtime.name}")
        try:
            await runtime.start(tasks)
            outcome = await invoke_sync(runtime, payload)
        except PollerError as exc:  # raised out here: the group would wrap it in an ExceptionGroup
            outcome = exc
        finally:
            await runtime.close()
            await tasks.close()
    if isinstance(outcome, PollerError):
        raise outcome
    return outcome


def _run(path: str, drain_timeout: float) -> int:
    from poller.config.loader import load_config

    config = load_config(path)
    from poller.app import run_service

    return EXIT_OK if run_service(config, drain_timeout, path) else EXIT_FAILURE
