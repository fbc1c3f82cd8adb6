"""The service: one supervisor TaskGroup running one MappingRunner per enabled mapping.

Signals only set a flag: the first SIGTERM/SIGINT stops polling and drains in-flight batches
within the drain timeout; a second one exits at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable

from poller.clock import Clock
from poller.config import Config
from poller.destinations import Destination, build_destination
from poller.errors import PollerError
from poller.observability.admin import AdminServer
from poller.observability.tracing import Telemetry, configure_tracing, flush_tracing, shutdown_tracing
from poller.runtime.function import FunctionRuntime
from poller.runtime.runner import MappingRunner
from poller.sources import build_source
from poller.tasks import BackgroundTasks

log = logging.getLogger(__name__)

DEFAULT_DRAIN_TIMEOUT = 30.0
FORCED_EXIT_FLUSH_TIMEOUT = 2.0  # seconds the spans get on a second signal
GC_YOUNG_THRESHOLD = 50_000  # allocations between young-generation collections (CPython's default: 700)


class App:
    """Everything one config file describes, wired together. Building it imports every inline
    handler; running it starts every function's environments (the provisioned ones before the
    mappings) and stops them all after the mappings drained."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        telemetry: Telemetry | None = None,
    ):
        self.config = config
        self.telemetry = telemetry or Telemetry()
        self.functions = {
            name: FunctionRuntime(name, function) for name, function in config.functions.items()
        }
        enabled = {name: mapping for name, mapping in config.mappings.items() if mapping.enabled}
        used = {m.on_failure_destination for m in enabled.values()} - {None}
        self.destinations: dict[str, Destination] = {
            name: build_destination(name, config) for name in sorted(n for n in used if n is not None)
        }
        self.runners = {
            name: MappingRunner(
                name,
                mapping,
                build_source(name, mapping, config),
                self.functions[mapping.function_name],
                self.destinations.get(mapping.on_failure_destination or ""),
                clock=clock,
                drain_timeout=drain_timeout,
                telemetry=self.telemetry,
            )
            for name, mapping in enabled.items()
        }
        self.admin = AdminServer(
            config.admin.host, config.admin.port, self.runners, self.telemetry.registry, self.functions
        )
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        """Run until :meth:`stop`, then drain and return. A mapping that cannot start (an unknown
        topic) raises, after the others were stopped."""
        await self.admin.start()
        try:
            async with asyncio.TaskGroup() as functions:
                try:
                    # Provisioned environments are initialised before any mapping polls, so
                    # /readyz turns true only once they are there.
                    async with asyncio.TaskGroup() as starting:
                        for name, function in self.functions.items():
                            owned = BackgroundTasks(functions, f"function {name}")
                            starting.create_task(function.start(owned), name=f"start function:{name}")
                    log.info(
                        "poller running %d mapping(s): %s",
                        len(self.runners),
                        ", ".join(self.runners) or "none",
                    )
                    async with asyncio.TaskGroup() as tasks:
                        for name, runner in self.runners.items():
                            tasks.create_task(runner.run(), name=f"mapping:{name}")
                        await self.stopping.wait()
                        for runner in self.runners.values():
                            runner.stop()
                finally:
                    # After the mappings drained: what they still invoke is abandoned anyway.
                    for function in self.functions.values():
                        await function.close()
        finally:
            for destination in self.destinations.values():
                await destination.close()
            await self.admin.close()


async def serve(app: App) -> None:
    """Run the app under signal handling: the first signal drains, a second exits at once."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            log.info("received %s: draining (send it again to exit at once)", signal.Signals(signum).name)
            app.stop()
        else:
            log.warning("received %s again: exiting now", signal.Signals(signum).name)
            # The spans of what was abandoned are what shows why in a trace: send them first.
            flush_tracing(FORCED_EXIT_FLUSH_TIMEOUT)
            sys.stderr.flush()
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await app.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def run_service(config: Config, drain_timeout: float) -> bool:
    """Run the service on a loaded config until a signal (``poller run``, ``poller dev``); False
    when it stopped because of an error, which is logged."""

    async def main() -> None:
        await serve(App(config, drain_timeout=drain_timeout))

    configure_tracing()
    tune_garbage_collector()
    try:
        # asyncio.Runner rather than asyncio.run: only it takes a loop factory on Python 3.11.
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(main())
    except (PollerError, ExceptionGroup) as exc:
        for error in _leaves(exc):
            if isinstance(error, PollerError):
                log.error("%s", error)
            else:
                log.error("unexpected error: %r", error, exc_info=error)
        return False
    finally:
        shutdown_tracing()
    return True


def tune_garbage_collector() -> None:
    """Every record read allocates a few small containers, freed by reference counting as soon as
    its batch is done; the cyclic collector's passes over them and over everything the imports
    left behind only cost CPU (about a fifth of it at high rates). Exempt the objects made so far
    and run the young-generation pass less often; cycles are still collected."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (``pip install 'poller[speed]'``), which makes the
    network and task switching of the hot path cheaper; ``POLLER_EVENT_LOOP=asyncio`` keeps asyncio's
    own. None means asyncio's default."""
    if os.environ.get("POLLER_EVENT_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
