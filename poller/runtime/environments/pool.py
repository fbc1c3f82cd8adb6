"""The environments of one function: warm reuse, concurrency, provisioned and idle environments.

As Lambda scales a function (https://docs.aws.amazon.com/lambda/latest/dg/lambda-concurrency.html):
an invocation takes an idle environment, a provisioned one first, else the most recently used
(the warmest); when none is idle it starts one (a cold start), as long as fewer than
``reserved_concurrent_executions`` are busy; beyond that it waits for one to be free (0 means
every invocation waits: throttled), unless the caller may not wait (a synchronous Invoke API
call), which is then refused at once with :class:`~poller.errors.Throttled`, as Lambda answers
it. Provisioned environments are
initialised by :meth:`EnvironmentPool.start` and replaced when they end; on-demand ones idle for
``idle_timeout_in_seconds`` are stopped.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from poller.engine.backoff import Backoff
from poller.engine.outcome import InvocationError
from poller.errors import PollerError, Throttled
from poller.runtime.environments.api import Invocation
from poller.runtime.environments.environment import Environment, FunctionSpec, InvokeResult, State
from poller.runtime.environments.logs import InvocationLog
from poller.tasks import BackgroundTasks

log = logging.getLogger(__name__)

# Upper bounds of the init duration histogram, in seconds.
INIT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REPLACE_RETRY_FIRST, REPLACE_RETRY_MAX = 1.0, 30.0


class FunctionStartError(PollerError):
    """A provisioned environment of a function failed its init at start."""


@dataclass
class PoolStats:
    """Counts of one function's environments since start, read by the metrics at scrape time."""

    cold_starts: int = 0
    init_failures: int = 0
    init_counts: list[int] = field(default_factory=lambda: [0] * (len(INIT_BUCKETS) + 1))
    init_seconds: float = 0.0

    def observe_init(self, seconds: float) -> None:
        self.init_counts[bisect.bisect_left(INIT_BUCKETS, seconds)] += 1
        self.init_seconds += seconds


class EnvironmentPool:
    """The environments of one function. :meth:`start` before the first :meth:`invoke`,
    :meth:`close` at the end; both are the owner's to call, once."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        reserved: int | None,
        provisioned: int = 0,
        idle_timeout: float = 600.0,
    ) -> None:
        self.spec = spec
        self.provisioned = provisioned
        self.idle_timeout = idle_timeout
        self.stats = PoolStats()
        self._slots = asyncio.Semaphore(reserved) if reserved is not None else None
        self._idle: list[Environment] = []  # the most recently used last
        self._all: set[Environment] = set()  # starting, idle and busy
        self._numbers = itertools.count(1)
        self._tasks: BackgroundTasks | None = None
        self._closed = False
        self._invoking = 0
        self._quiet = asyncio.Event()  # no invocation in flight
        self._quiet.set()

    # --- what the metrics read -------------------------------------------------------------------

    @property
    def busy(self) -> int:
        return sum(1 for environment in self._all if environment.state is State.BUSY)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: the pool takes no more invocations."""
        return self._closed

    @property
    def provisioned_ready(self) -> int:
        """Provisioned environments initialised and alive (idle or busy)."""
        return sum(1 for e in self._all if e.provisioned and e.state in (State.IDLE, State.BUSY))

    def environments(self) -> list[Environment]:
        """Every environment that exists now, in the order they were made."""
        return sorted(self._all, key=lambda environment: environment.name)

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self, tasks: BackgroundTasks) -> None:
        """Initialise the provisioned environments (all at once) and start stopping idle ones.
        Raises FunctionStartError if a provisioned environment fails its init: the function's
        code or its runtime is broken, and that shows at start (the others are stopped)."""
        self._tasks = tasks
        environments = [self._new(provisioned=True) for _ in range(self.provisioned)]
        async with asyncio.TaskGroup() as group:
            inits = [
                group.create_task(self._init(environment, replace=False)) for environment in environments
            ]
        errors = [task.result() for task in inits]
        failed = next((error for error in errors if error is not None), None)
        if failed is not None:
            for environment in environments:
                await environment.stop()
            raise FunctionStartError(
                f"function {self.spec.name}: a provisioned environment failed its init: "
                f"{failed.error_type}: {failed.message}"
            )
        self._idle.extend(environments)
        tasks.spawn(self._stop_idle_environments(), "stop idle environments")
        if environments:
            log.info("function %s: %d provisioned environment(s) ready", self.spec.name, len(environments))

    async def close(self) -> None:
        """Stop every environment (idle, busy or starting) and the pool's own tasks."""
        self._closed = True
        if self._tasks is not None:
            await self._tasks.close()
        async with asyncio.TaskGroup() as group:
            for environment in list(self._all):
                group.create_task(environment.stop())
        self._all.clear()
        self._idle.clear()

    async def retire(self) -> None:
        """Wait until no invocation is in flight, then :meth:`close` (also when cancelled)."""
        try:
            await self._quiet.wait()
        finally:
            await self.close()

    # --- invocations -----------------------------------------------------------------------------

    async def invoke(self, invocation: Invocation, *, wait: bool = True) -> InvokeResult:
        """Run ``invocation`` in an environment, waiting for one as long as it takes; with
        ``wait=False``, raise Throttled at once instead when ``reserved_concurrent_executions``
        invocations are in flight (or it is 0). Never raises for what the function does; a failed
        init of the environment started for it is its result (with ``cold_start`` set)."""
        if self._tasks is None or self._closed:
            raise RuntimeError(f"function {self.spec.name}: invoke before start or after close")
        if not wait and self._slots is not None and self._slots.locked():
            raise Throttled(
                f"function {self.spec.name}: no concurrency left for an invocation that may not wait"
            )
        self._invoking += 1
        self._quiet.clear()
        try:
            return await self._invoke(invocation)
        finally:
            self._invoking -= 1
            if not self._invoking:
                self._quiet.set()

    async def _invoke(self, invocation: Invocation) -> InvokeResult:
        # Nothing awaits between the check in invoke() and taking the slot here, so a slot that
        # was free there is still free.
        async with self._slot():
            environment = self._take_idle()
            cold = environment is None
            if environment is None:
                environment = self._new(provisioned=False)
                self.stats.cold_starts += 1
                error = await self._init(environment)
                if error is not None:
                    return InvokeResult(
                        invocation.request_id,
                        error,
                        True,
                        0.0,
                        environment.init_duration,
                        0,
                        InvocationLog(invocation.request_id),
                    )
            try:
                return await environment.invoke(invocation, cold_start=cold)
            finally:
                self._put_back(environment)

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self._slots is None:
            yield
            return
        async with self._slots:
            yield

    def _take_idle(self) -> Environment | None:
        """An idle environment: a provisioned one first, else the most recently used."""
        for wanted in (True, False):
            for index in range(len(self._idle) - 1, -1, -1):
                environment = self._idle[index]
                if environment.provisioned is wanted and environment.alive:
                    del self._idle[index]
                    return environment
        return None

    def _put_back(self, environment: Environment) -> None:
        if environment.state is State.IDLE and not self._closed:
            # The stopper is not woken: an environment put back now is due no earlier than
            # idle_timeout from now, when the stopper looks again in any case.
            self._idle.append(environment)
        elif environment.state is State.DEAD:
            self._forget(environment)

    # --- environments coming and going -----------------------------------------------------------

    def _new(self, *, provisioned: bool) -> Environment:
        environment = Environment(
            self.spec, number=next(self._numbers), provisioned=provisioned, on_death=self._died_idle
        )
        self._all.add(environment)
        return environment

    async def _init(self, environment: Environment, *, replace: bool = True) -> InvocationError | None:
        """Initialise ``environment``; on failure it is forgotten (and, if ``replace`` and it is
        provisioned, replaced)."""
        error = await environment.init()
        if environment.init_duration is not None:
            self.stats.observe_init(environment.init_duration)
        if error is not None:
            self.stats.init_failures += 1
            self._forget(environment, replace=replace)
            log.warning(
                "function %s: environment %s failed its init: %s: %s",
                self.spec.name,
                environment.name,
                error.error_type,
                error.message,
            )
        return error

    def _died_idle(self, environment: Environment) -> None:
        """An idle environment's process ended: let it go (its Runtime API is closed in a task)."""
        if environment in self._idle:
            self._idle.remove(environment)
        self._forget(environment)
        if self._tasks is not None and not self._closed:
            self._tasks.spawn(environment.stop(), f"stop {environment.name}")

    def _forget(self, environment: Environment, *, replace: bool = True) -> None:
        if environment not in self._all:
            return
        self._all.discard(environment)
        if replace and environment.provisioned and self._tasks is not None and not self._closed:
            self._tasks.spawn(self._replace(), f"replace {environment.name}")

    async def _replace(self) -> None:
        """Start a provisioned environment in place of one that ended, retrying with backoff
        until one initialises (or the pool closes)."""
        backoff = Backoff(REPLACE_RETRY_FIRST, REPLACE_RETRY_MAX)
        while not self._closed:
            environment = self._new(provisioned=True)
            error = await self._init(environment, replace=False)  # this loop retries itself
            if error is None:
                self._idle.append(environment)
                return
            await asyncio.sleep(backoff.next())

    async def _stop_idle_environments(self) -> None:
        """Stop on-demand environments idle for ``idle_timeout`` seconds, as they come due."""
        while True:
            now = time.monotonic()
            for environment in [e for e in self._idle if not e.provisioned]:
                if now - environment.last_used >= self.idle_timeout:
                    self._idle.remove(environment)
                    self._all.discard(environment)
                    log.info("function %s: stopping idle environment %s", self.spec.name, environment.name)
                    await environment.stop()
            # With no idle on-demand environment, the first to become one is due idle_timeout
            # after it is put back at the earliest.
            due = [e.last_used + self.idle_timeout for e in self._idle if not e.provisioned]
            await asyncio.sleep(max(0.0, min(due) - time.monotonic()) if due else self.idle_timeout)
