"""One execution environment's lifecycle: init, invocations one at a time, stop; and its failures.

The phases and their failures are Lambda's
(https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html): init (the runtime
starting and the function's module code) may take :data:`INIT_TIMEOUT` seconds; a failed init,
a timeout, a crash and memory over the limit end the environment (its whole process group is
killed), and the invocation fails with the error type Lambda gives it. A function error (the
runtime posted ``/error``) leaves the environment warm. Nothing an environment does raises in
poller: failures come back as :class:`~poller.engine.outcome.InvocationError` values.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from poller.engine.outcome import InvocationError
from poller.runtime.environments.api import CHANNEL_VARIABLE, Answer, Invocation, RuntimeApi
from poller.runtime.environments.event_memory import FD_VARIABLE, EventMemory
from poller.runtime.environments.logs import (
    EnvironmentOutput,
    InvocationLog,
    end_line,
    report_line,
    start_line,
)
from poller.runtime.environments.memory import MB, ProcessGroupMemory
from poller.runtime.environments.process import EnvironmentProcess, describe_exit
from poller.runtime.environments.runtimes import Launch, variables

log = logging.getLogger(__name__)

INIT_TIMEOUT = 10.0  # seconds, Lambda's limit for an on-demand init
MEMORY_SAMPLE_INTERVAL = 0.05  # seconds between looks at a busy environment's memory
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when an environment is stopped
TOO_LARGE = "Function.ResponseSizeTooLarge"


class State(enum.Enum):
    NEW = "new"
    INITIALISING = "initialising"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"


@dataclass(frozen=True)
class FunctionSpec:
    """What every environment of one function shares."""

    name: str
    arn: str
    launch: Launch
    memory_size: int  # MB
    timeout: int  # seconds
    environment: Mapping[str, str]  # the function's own variables
    region: str


@dataclass(frozen=True)
class InvokeResult:
    """What one invocation came to, besides the function's answer."""

    request_id: str
    answer: Answer  # the response as the runtime serialised it, or the error
    cold_start: bool  # the invocation waited for its environment's init
    duration: float  # seconds, from handing the event over to the answer
    init_duration: float | None  # seconds, on a cold start
    max_memory_used: int  # MB
    log: InvocationLog

    @property
    def error(self) -> InvocationError | None:
        return self.answer if isinstance(self.answer, InvocationError) else None


_End = Literal["answered", "timeout", "memory"]


class Environment:
    """One environment of a function: :meth:`init` once, then :meth:`invoke` one invocation at a
    time, and :meth:`stop`. ``on_death`` is called when the process ends while the environment is
    idle (it crashed, or its runtime gave up), so that its owner can let it go."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        number: int,
        provisioned: bool = False,
        on_death: Callable[[Environment], None] | None = None,
    ) -> None:
        self.spec = spec
        self.name = f"{spec.name}#{number}"
        self.provisioned = provisioned
        self.state = State.NEW
        self.init_duration: float | None = None
        self.last_used = time.monotonic()
        self.output = EnvironmentOutput(spec.name, self.name)
        self.log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self._on_death = on_death
        self._api: RuntimeApi | None = None
        self._events: EventMemory | None = None  # the memory file its events travel in, if any
        self._process: EnvironmentProcess | None = None
        self._memory: ProcessGroupMemory | None = None
        self._limit = spec.memory_size * MB
        self._max_seen = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self.state in (State.IDLE, State.BUSY) and self._process is not None and self._process.running

    async def init(self) -> InvocationError | None:
        """Start the environment and wait for its init to end: None when it asks for its first
        invocation, else why it failed (the environment is then stopped)."""
        self.state = State.INITIALISING
        self.output.attach()
        started = time.monotonic()
        try:
            error = await self._start()
        except asyncio.CancelledError:
            await self._discard()
            raise
        finally:
            self.output.end()  # what it prints while idle belongs to nobody's batch
        if error is None:
            self.init_duration = time.monotonic() - started
            self.state = State.IDLE
            self.last_used = time.monotonic()
            return None
        self.output.platform(
            f"INIT_REPORT Init Duration: {(time.monotonic() - started) * 1000:.2f} ms\tPhase: init\t"
            f"Status: error\tError Type: {error.error_type}",
            logging.WARNING,
        )
        await self._discard()
        return error

    async def _start(self) -> InvocationError | None:
        spec = self.spec
        own_client = spec.launch.poller_client
        events = self._events = EventMemory.create() if own_client else None
        api = self._api = RuntimeApi(events)
        try:
            address = await api.start()
            channel = await api.channel() if own_client else None
        except OSError as exc:
            return InvocationError("Sandbox.Failure", f"cannot listen for the Runtime API: {exc}")
        env = variables(
            spec.launch,
            inherited=os.environ,
            function_environment=spec.environment,
            function_name=spec.name,
            memory_size=spec.memory_size,
            region=spec.region,
            api_address=address,
            initialization_type="provisioned-concurrency" if self.provisioned else "on-demand",
            log_stream_name=self.log_stream_name,
        )
        inherited: list[int] = []
        if events is not None:
            env[FD_VARIABLE] = str(events.fd)
            inherited.append(events.fd)
        if channel is not None:
            env[CHANNEL_VARIABLE] = str(channel.fileno())
            inherited.append(channel.fileno())
        try:
            process = self._process = EnvironmentProcess.spawn(
                spec.launch.argv,
                env=env,
                cwd=str(spec.launch.task_root),
                on_output=self.output.feed,
                pass_fds=inherited,
            )
        except OSError as exc:
            return InvocationError(
                "Runtime.InvalidEntrypoint", f"cannot start {spec.launch.argv[0]}: {exc.strerror or exc}"
            )
        finally:
            # The environment has its own copies now; poller's end of the pair is the API's.
            if events is not None:
                events.close_descriptor()
            if channel is not None:
                channel.close()
        self._memory = ProcessGroupMemory(process.pid)
        process.exited.add_done_callback(self._exited)
        end = await self._watch((api.initialised, api.init_failed, process.exited), INIT_TIMEOUT)
        if api.initialised.done():
            return None
        if api.init_failed.done():
            return api.init_failed.result()
        if process.exited.done():
            return self._exit_error(process.exited.result())
        if end == "memory":
            return self._out_of_memory()
        return InvocationError("Sandbox.Timedout", f"Init timed out after {INIT_TIMEOUT:.2f} seconds")

    async def invoke(self, invocation: Invocation, *, cold_start: bool = False) -> InvokeResult:
        """Run one invocation in this (idle) environment (its ``deadline_ms`` is set here, from
        the function's timeout). Its answer is the runtime's, or the error
        an ended environment gives it: ``Sandbox.Timedout``, ``Runtime.ExitError``,
        ``Runtime.OutOfMemory``; after those the environment is stopped. If the caller is
        cancelled, the environment is killed (the invocation cannot be taken back)."""
        assert self.state is State.IDLE, f"invoke in a {self.state.value} environment"
        assert self._api is not None
        assert self._process is not None
        api, process = self._api, self._process
        self.state = State.BUSY
        record = self.output.begin(invocation.request_id)
        self.output.platform(start_line(invocation.request_id))
        started = time.monotonic()
        # The deadline runs from the hand-over, not from the caller's wait for an environment.
        invocation.deadline_ms = int((time.time() + self.spec.timeout) * 1000)
        answer_future = api.submit(invocation)
        try:
            end = await self._watch((answer_future, process.exited), self.spec.timeout)
        except asyncio.CancelledError:
            self.output.end()
            await self._discard()
            raise
        duration = time.monotonic() - started
        process.read_output()  # what the handler printed before it answered belongs to it
        peak = self._peak()
        answer: Answer
        fatal = True  # the environment ended, or must: it is killed
        if answer_future.done() and not answer_future.cancelled():
            answer = answer_future.result()
            if peak > self._limit:  # between two samples, but the kernel saw it
                answer = self._out_of_memory(peak)
            else:
                # After a 413 AWS's Python client exits, so Lambda resets the environment: so does
                # poller, or the next invocation would meet a runtime on its way out.
                fatal = isinstance(answer, InvocationError) and answer.error_type == TOO_LARGE
        elif process.exited.done():
            answer = self._exit_error(process.exited.result())
        elif end == "memory":
            answer = self._out_of_memory(peak)
        else:
            answer = InvocationError(
                "Sandbox.Timedout", f"Task timed out after {self.spec.timeout:.2f} seconds"
            )
        api.finish()
        if fatal:
            assert isinstance(answer, InvocationError)
            process.kill()
            await process.exited  # nothing of it keeps running once the invocation is over
            self.output.platform(
                f"{invocation.request_id} Error: {answer.error_type}: {answer.message}", logging.WARNING
            )
        max_used = math.ceil(peak / MB)
        self.output.platform(end_line(invocation.request_id))
        self.output.platform(
            report_line(
                invocation.request_id,
                duration=duration,
                memory_size=self.spec.memory_size,
                max_memory_used=max_used,
                init_duration=self.init_duration if cold_start else None,
            )
        )
        self.output.end()
        if fatal:
            await self._discard()
        else:
            self.state = State.IDLE
            self.last_used = time.monotonic()
        return InvokeResult(
            invocation.request_id,
            answer,
            cold_start,
            duration,
            self.init_duration if cold_start else None,
            max_used,
            record,
        )

    def kill(self) -> None:
        """SIGKILL the environment's processes now (see :meth:`stop` for the orderly way)."""
        if self._process is not None:
            self._process.kill()

    async def stop(self) -> None:
        """Stop the environment: SIGTERM, SIGKILL after :data:`STOP_GRACE` seconds, and close its
        Runtime API. Safe to call more than once."""
        self.state = State.DEAD
        if self._process is not None:
            await self._process.stop(STOP_GRACE)
        self.output.flush()
        if self._api is not None:
            await self._api.close()
        if self._events is not None:
            self._events.close()
        if self._memory is not None:
            self._memory.close()

    async def _discard(self) -> None:
        self.kill()
        await self.stop()

    async def _watch(self, waitables: Iterable[asyncio.Future[Any]], seconds: float) -> _End:
        """Wait until one of ``waitables`` is done (``answered``), ``seconds`` pass (``timeout``)
        or the environment's memory passes its limit (``memory``), sampling it meanwhile."""
        pending = set(waitables)
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            done, _ = await asyncio.wait(
                pending, timeout=min(remaining, MEMORY_SAMPLE_INTERVAL), return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                return "answered"
            if self._memory is not None and self._memory.resident() > self._limit:
                return "memory"

    def _peak(self) -> int:
        """The most the environment's processes have held at once so far, in bytes (the kernel's
        high-water marks; kept once the processes are gone)."""
        if self._memory is not None:
            self._max_seen = max(self._max_seen, self._memory.peak())
        return self._max_seen

    def _out_of_memory(self, used: int | None = None) -> InvocationError:
        used = self._peak() if used is None else used
        return InvocationError(
            "Runtime.OutOfMemory",
            f"Runtime exited with error: signal: killed (memory used {math.ceil(used / MB)} MB, "
            f"memory_size {self.spec.memory_size} MB)",
        )

    @staticmethod
    def _exit_error(returncode: int) -> InvocationError:
        return InvocationError("Runtime.ExitError", f"Runtime exited with error: {describe_exit(returncode)}")

    def _exited(self, exited: asyncio.Future[int]) -> None:
        if self.state is State.IDLE:
            returncode = exited.result()
            log.info(
                "environment %s of function %s ended while idle (%s)",
                self.name,
                self.spec.name,
                describe_exit(returncode),
            )
            self.state = State.DEAD
            if self._on_death is not None:
                self._on_death(self)
