"""The service: one supervisor TaskGroup running one MappingRunner per enabled mapping.

Signals only set a flag: the first SIGTERM/SIGINT stops polling and drains in-flight batches
within the drain timeout; a second one exits at once. SIGHUP (or ``POST /reload``) reloads the
config file: mappings that changed drain and start again, new ones start, removed ones drain and
stop, and the others keep running without a pause (SPEC section 16). ``POST /mappings/NAME/disable``
and ``/enable`` drain a mapping and start it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from poller.clock import Clock, first_of
from poller.config import Config, Mapping, SqliteCheckpoints, load_config
from poller.config.diff import diff
from poller.destinations import Destination, build_destination
from poller.errors import ConfigError, PollerError
from poller.invocation.api import InvokeApi
from poller.invocation.asynchronous.invoker import AsyncInvocations
from poller.invocation.asynchronous.store import build_event_store
from poller.invocation.urls.listeners import FunctionUrls, urls_of
from poller.observability.admin import AdminServer
from poller.observability.async_metrics import AsyncInvocationCollector
from poller.observability.async_spans import AsyncTelemetry
from poller.observability.invocation_spans import InvocationSpans
from poller.observability.tracing import Telemetry, configure_tracing, flush_tracing, shutdown_tracing
from poller.runtime.function import FunctionRuntime
from poller.runtime.runner import MappingRunner
from poller.runtime.status import MappingStatus
from poller.runtime.window_store import build_window_store
from poller.runtime.windows import window_group
from poller.sources import build_source
from poller.tasks import BackgroundTasks

log = logging.getLogger(__name__)

DEFAULT_DRAIN_TIMEOUT = 30.0
FORCED_EXIT_FLUSH_TIMEOUT = 2.0  # seconds the spans get on a second signal
GC_YOUNG_THRESHOLD = 50_000  # allocations between young-generation collections (CPython's default: 700)


class App:
    """Everything one config file describes, wired together. Building it imports every inline
    handler; running it starts every function's environments (the provisioned ones before the
    mappings poll) and stops them after the mappings drained. A function's URL listens from the
    function's start until the service stops.

    ``runners`` holds a runner for every mapping of the config, enabled or not (a disabled one is
    only shown), and ``functions`` every function; the admin server reads both, so they are
    changed in place."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        telemetry: Telemetry | None = None,
        config_path: str | os.PathLike[str] | None = None,
    ):
        self.config = config
        self.config_path = Path(config_path) if config_path is not None else None
        self.clock = clock
        self.drain_timeout = drain_timeout
        self.telemetry = telemetry or Telemetry()
        self.functions = {
            name: FunctionRuntime(name, function) for name, function in config.functions.items()
        }
        self.destinations: dict[str, Destination] = {}
        # The queue of asynchronous invocations (SPEC 13): the Invoke API's Event requests call
        # its accept; its workers run from the functions' start until the drain.
        self.async_invocations = AsyncInvocations(
            build_event_store(config.async_queue),
            functions=self.functions,
            destination_of=self._async_destination,
            telemetry=AsyncTelemetry(self.telemetry.tracer, self.telemetry.registry),
            clock=clock,
            drain_timeout=drain_timeout,
        )
        self.telemetry.registry.register(AsyncInvocationCollector(self.async_invocations))
        self.runners: dict[str, MappingRunner] = {
            name: self._runner(name, mapping) for name, mapping in config.mappings.items()
        }
        token = config.admin.token.reveal() if config.admin.token else None
        self.admin = AdminServer(
            config.admin.host,
            config.admin.port,
            self.runners,
            self.telemetry.registry,
            controls=self,
            token=token,
            functions=self.functions,
            invoke_api=InvokeApi(
                self.functions,
                credentials=config.admin.credentials,
                spans=InvocationSpans(self.telemetry.tracer),
                queue=self.async_invocations,
            ),
        )
        self.function_urls = FunctionUrls(self.telemetry, config.admin.credentials)
        self.stopping = asyncio.Event()
        self._reload_wanted = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None  # the running mappings
        self._function_group: asyncio.TaskGroup | None = None  # the functions' own tasks
        self._retiring: BackgroundTasks | None = None  # functions a reload replaced, until idle
        self._tasks: dict[str, asyncio.Task[None]] = {}  # the running mappings' tasks

    def _runner(self, name: str, mapping: Mapping, status: MappingStatus | None = None) -> MappingRunner:
        source = build_source(name, mapping, self.config)
        window_store = None
        if mapping.tumbling_window_in_seconds is not None:
            settings = mapping.checkpoints or SqliteCheckpoints(type="sqlite")
            window_store = build_window_store(settings, window_group(name, source.reads), self.config)
        runner = MappingRunner(
            name,
            mapping,
            source,
            self.functions[mapping.function_name],
            self._destination(mapping.on_failure_destination),
            clock=self.clock,
            drain_timeout=self.drain_timeout,
            telemetry=self.telemetry,
            window_store=window_store,
            status=status,  # the same mapping again: its counts go on
        )
        if not mapping.enabled:
            runner.status.state = "Disabled"
        return runner

    def _destination(self, name: str | None) -> Destination | None:
        if name is None:
            return None
        if name not in self.destinations:
            self.destinations[name] = build_destination(name, self.config)
        return self.destinations[name]

    def _async_destination(self, name: str) -> Destination | None:
        """The destination ``name`` of the running config (None when a reload removed it)."""
        return self._destination(name) if name in self.config.destinations else None

    def stop(self) -> None:
        self.stopping.set()

    def request_reload(self) -> None:
        """Reload the config file soon (SIGHUP, ``POST /reload``)."""
        self._reload_wanted.set()

    async def run(self) -> None:
        """Run until :meth:`stop`, then drain and return. A mapping that cannot start (an unknown
        topic) raises, after the others were stopped."""
        await self.admin.start()
        try:
            async with asyncio.TaskGroup() as functions:
                self._function_group = functions
                self._retiring = BackgroundTasks(functions, "retiring functions")
                try:
                    # Provisioned environments are initialised before any mapping polls, so
                    # /readyz turns true only once they are there.
                    await self._start_functions(list(self.functions.values()))
                    await self.function_urls.start(urls_of(self.config.functions), self.functions)
                    workers = functions.create_task(self.async_invocations.run(), name="async invocations")
                    try:
                        await self._run_mappings()
                    finally:
                        self.async_invocations.stop()  # in-flight attempts finish within the drain
                        await asyncio.wait([workers])
                finally:
                    # Requests in flight on the URLs finish within the drain, as batches do.
                    await self.function_urls.close(self.drain_timeout)
                    # After the mappings drained: what they still invoke is abandoned anyway.
                    await self._retiring.close()
                    for function in self.functions.values():
                        await function.close()
                    self._function_group = None
        finally:
            for destination in self.destinations.values():
                await destination.close()
            await self.admin.close()
            await self.async_invocations.close()

    async def _run_mappings(self) -> None:
        enabled = [name for name, runner in self.runners.items() if runner.mapping.enabled]
        log.info("poller running %d mapping(s): %s", len(enabled), ", ".join(enabled) or "none")
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for name in enabled:
                    self._start(name)
                while not self.stopping.is_set():
                    await first_of(self.stopping, self._reload_wanted)
                    if self._reload_wanted.is_set() and not self.stopping.is_set():
                        self._reload_wanted.clear()
                        await self.reload()
                for runner in self.runners.values():
                    runner.stop()
                self.async_invocations.stop()  # drains alongside the mappings
        finally:
            self._group = None

    async def _start_functions(self, functions: list[FunctionRuntime]) -> None:
        """Start functions at once (their provisioned environments); raises an ExceptionGroup of
        FunctionStartError if one cannot start."""
        assert self._function_group is not None, "functions start while the app runs"
        async with asyncio.TaskGroup() as starting:
            for function in functions:
                owned = BackgroundTasks(self._function_group, f"function {function.name}")
                starting.create_task(function.start(owned), name=f"start function:{function.name}")

    # --- one mapping at run time -----------------------------------------------------------------

    def _start(self, name: str) -> None:
        assert self._group is not None, "mappings start while the app runs"
        self._tasks[name] = self._group.create_task(self.runners[name].run(), name=f"mapping:{name}")

    async def _stop(self, name: str) -> None:
        """Drain a running mapping (its in-flight batches finish and commit) and wait until it stopped."""
        task = self._tasks.pop(name, None)
        if task is None:
            return
        self.runners[name].stop()
        await asyncio.wait([task])  # its error, if any, is the TaskGroup's

    async def disable(self, name: str) -> str:
        """Drain the mapping and stop polling it; returns its state (``Disabling`` until drained)."""
        runner = self.runners[name]
        if name in self._tasks and not runner.stopping:
            assert self._group is not None
            runner.status.state = "Disabling"
            self._group.create_task(self._stop(name), name=f"disable:{name}")
        return runner.status.state

    async def enable(self, name: str) -> str:
        """Start polling a disabled mapping again, as a new runner with the same counts."""
        if name in self._tasks:
            return self.runners[name].status.state
        old = self.runners[name]
        self.runners[name] = self._runner(name, old.mapping.model_copy(update={"enabled": True}), old.status)
        self.runners[name].status.state = "Enabling"
        self._start(name)
        return self.runners[name].status.state

    # --- reload ----------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Read the config file again and apply what changed; False, with every error logged and
        the running config kept, if the new file is invalid."""
        if self.config_path is None:
            log.warning("reload asked for, but this poller was not started from a config file")
            return False
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload rejected, the running config stays: %s", problem)
            return False
        changes = diff(self.config, new)
        fresh = await self._new_functions(
            new, changes.functions_changed | (set(new.functions) - set(self.functions))
        )
        if fresh is None:
            return False
        if changes.admin_changed:
            log.warning("reload: the admin settings changed; they take effect at the next start")
        self.config = new
        retired = [self.functions[name] for name in fresh if name in self.functions]
        retired += [self.functions.pop(name) for name in set(self.functions) - set(new.functions)]
        self.functions.update(fresh)
        for name in changes.unchanged:
            # A function that changed is swapped under the running mapping: in-flight invocations
            # finish on the old one, the next ones use the new one.
            self.runners[name].swap_function(self.functions[new.mappings[name].function_name])
        await self.function_urls.reload(urls_of(new.functions), self.functions, self.drain_timeout)
        self.destinations = {name: d for name, d in self.destinations.items() if name in new.destinations}
        await asyncio.gather(*(self._stop(name) for name in changes.removed | changes.changed))
        for name in changes.removed:
            del self.runners[name]
        for name in sorted(changes.added | changes.changed):
            old = self.runners.get(name)
            self.runners[name] = self._runner(name, new.mappings[name], old.status if old else None)
            if new.mappings[name].enabled:
                self._start(name)
        assert self._retiring is not None
        for function in retired:
            self._retiring.spawn(function.retire(), function.name)
        log.info(
            "reloaded %s: %d mapping(s) started, %d restarted, %d stopped, %d unchanged",
            self.config_path,
            len(changes.added),
            len(changes.changed),
            len(changes.removed),
            len(changes.unchanged),
        )
        return True

    async def _new_functions(
        self, config: Config, names: set[str] | frozenset[str]
    ) -> dict[str, FunctionRuntime] | None:
        """The functions a reload adds or changes, started; None, with every error logged, if
        one of them cannot start (a handler that does not import, a provisioned environment
        whose init fails)."""
        fresh: dict[str, FunctionRuntime] = {}
        try:
            for name in sorted(names):
                fresh[name] = FunctionRuntime(name, config.functions[name])
            await self._start_functions(list(fresh.values()))
        except (PollerError, ExceptionGroup) as exc:
            for error in _leaves(exc):
                log.error("reload rejected, the running config stays: %s", error)
            for function in fresh.values():
                await function.close()
            return None
        return fresh


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
            with contextlib.suppress(OSError, ValueError):  # a closed stderr: exit all the same
                for handler in logging.getLogger().handlers:
                    handler.flush()  # poller's holds the lines of the loop's current turn
                sys.stderr.flush()
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, app.request_reload)
    try:
        await app.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)


def run_service(config: Config, drain_timeout: float, config_path: str | None = None) -> bool:
    """Run the service on a loaded config until a signal (``poller run``, ``poller dev``); False
    when it stopped because of an error, which is logged. ``config_path`` is what SIGHUP reloads."""

    async def main() -> None:
        await serve(App(config, drain_timeout=drain_timeout, config_path=config_path))

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
