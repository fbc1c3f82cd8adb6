"""The function runtime: one configured function, invoked as Lambda invokes it (SPEC sections 5, 12).

A function runs in execution environments (:mod:`poller.runtime.environments`): processes that
speak the Lambda Runtime API, one invocation at a time each, isolated from poller and from each
other. ``runtime: inline`` instead imports the handler into poller's own process (for trusted
handlers that want the last microsecond): async handlers run on the event loop, sync handlers on a
thread of their own, so a slow or hung one never blocks the loop (a thread cannot be killed: one
past its timeout is abandoned and logged, and the invocation fails).

The handler owns its event, as on Lambda, so a handler that mutates it cannot change what is
retried or dead-lettered: the engine builds a new event for every invocation (``fresh=True``),
and any other event is handed over as a JSON copy (in environments, the event crosses a process
boundary as JSON anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import resource
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from poller.config import Function
from poller.connections.account import ACCOUNT_ID, default_region
from poller.engine.outcome import InvocationError, decode_response
from poller.errors import Throttled
from poller.observability.tracing import xray_trace_header
from poller.runtime.environments.api import Invocation, Response
from poller.runtime.environments.environment import FunctionSpec, InvokeResult
from poller.runtime.environments.logs import InvocationLog, end_line, report_line, start_line
from poller.runtime.environments.pool import EnvironmentPool
from poller.runtime.environments.runtimes import launch_of
from poller.runtime.handler import load_handler
from poller.tasks import BackgroundTasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CognitoIdentity:
    cognito_identity_id: str | None = None
    cognito_identity_pool_id: str | None = None


@dataclass(frozen=True)
class Client:
    """``context.client_context.client``, as Lambda's Python runtime makes it of the caller's
    client context (its ``client`` object)."""

    installation_id: Any = None
    app_title: Any = None
    app_version_name: Any = None
    app_version_code: Any = None
    app_package_name: Any = None


@dataclass(frozen=True)
class ClientContext:
    """``context.client_context`` of an inline handler: the attributes that Lambda's Python runtime
    gives it (the Invoke API's ``X-Amz-Client-Context``, decoded)."""

    custom: Any = None
    env: Any = None
    client: Client | None = None

    @classmethod
    def of(cls, document: dict[str, Any]) -> ClientContext:
        client = document.get("client")
        return cls(
            custom=document.get("custom"),
            env=document.get("env"),
            client=Client(**{key: client.get(key) for key in Client.__dataclass_fields__})
            if isinstance(client, dict)
            else None,
        )


@dataclass
class LambdaContext:
    """The ``context`` argument, with the attributes of Lambda's Python runtime."""

    function_name: str
    memory_limit_in_mb: int
    aws_request_id: str
    invoked_function_arn: str
    log_group_name: str
    log_stream_name: str
    deadline: float  # time.monotonic() at which the invocation times out
    function_version: str = "$LATEST"
    identity: CognitoIdentity = field(default_factory=CognitoIdentity)
    client_context: Any = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


class InvocationReport(Protocol):
    """Where :meth:`FunctionRuntime.invoke` notes what the invocation span wants to know."""

    coldstart: bool | None
    invocation_id: str | None


class FunctionRuntime:
    """One configured function: its handler, its timeout, its concurrency limit, and (unless it
    is ``inline``) the pool of environments it runs in.

    ``invoke`` never raises for anything the handler does: it returns the handler's JSON-ready
    result or an :class:`InvocationError`. Only cancellation propagates. A function that runs in
    environments must be started (:meth:`start`) before it is invoked and closed (:meth:`close`)
    after; for an inline one both do nothing.
    """

    def __init__(self, name: str, config: Function, *, region: str | None = None) -> None:
        """Raises HandlerLoadError (inline: the handler cannot be imported) or RuntimeUnavailable
        (the runtime cannot start here)."""
        self.name = name
        self.config = config
        self.region = region or default_region()
        self.arn = f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{name}"
        self._stream = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self._started = False
        self._first_inline = True
        self.pool: EnvironmentPool | None = None
        if not config.inline:
            spec = FunctionSpec(
                name,
                self.arn,
                launch_of(config.effective_runtime, config.handler, config.code),
                config.memory_size,
                config.timeout,
                dict(config.environment),
                self.region,
            )
            self.pool = EnvironmentPool(
                spec,
                reserved=config.reserved_concurrent_executions,
                provisioned=config.provisioned_concurrent_executions,
                idle_timeout=config.idle_timeout_in_seconds,
            )
            return
        # Inline handlers share poller's process, and so its environment.
        for key, value in config.environment.items():
            os.environ[key] = value
        self._handler = load_handler(config.handler)
        self._is_async = inspect.iscoroutinefunction(self._handler) or inspect.iscoroutinefunction(
            getattr(self._handler, "__call__", None)  # noqa: B004 - async callable objects
        )
        limit = config.reserved_concurrent_executions
        self._slots = asyncio.Semaphore(limit) if limit is not None else None
        if limit == 0:
            log.warning("function %s has reserved_concurrent_executions 0: it is throttled", name)

    @property
    def ready(self) -> bool:
        """Whether the function can be invoked: inline, or started (its provisioned environments
        initialised) and not closed."""
        return self.pool is None or (self._started and not self.pool.closed)

    async def start(self, tasks: BackgroundTasks) -> None:
        """Initialise the provisioned environments; the pool's own tasks (replacing provisioned
        environments, stopping idle ones) run in ``tasks``. Raises FunctionStartError when a
        provisioned environment fails its init."""
        if self.pool is not None:
            await self.pool.start(tasks)
        self._started = True

    async def close(self) -> None:
        """Stop every environment of the function (SIGTERM, then SIGKILL)."""
        if self.pool is not None:
            await self.pool.close()

    async def retire(self) -> None:
        """Close the function once its invocations in flight have finished (a reload replaced
        it: new invocations go to the new one)."""
        if self.pool is not None:
            await self.pool.retire()

    def new_context(self, request_id: str | None = None) -> LambdaContext:
        """The context of one invocation; ``request_id`` defaults to a new one."""
        return LambdaContext(
            function_name=self.name,
            memory_limit_in_mb=self.config.memory_size,
            aws_request_id=request_id or str(uuid.uuid4()),
            invoked_function_arn=self.arn,
            log_group_name=f"/aws/lambda/{self.name}",
            log_stream_name=self._stream,
            deadline=time.monotonic() + self.config.timeout,
        )

    async def invoke(
        self,
        event: Any,
        context: LambdaContext | None = None,
        *,
        fresh: bool = False,
        report: InvocationReport | None = None,
        wait: bool = True,
    ) -> Any:
        """Run the handler once; return its result, or an InvocationError describing the failure.

        ``fresh``: the event was built of JSON values for this invocation alone (an
        ``EventFormat.event``), so the handler may have it as it is. Otherwise the handler gets a
        JSON copy, which also refuses what JSON cannot carry, as Lambda's invoke API would.
        ``context`` gives the request id (and client context) to use; ``report`` gets the
        invocation's id and whether it was a cold start. Without concurrency left the invocation
        waits for it, or, with ``wait=False``, raises Throttled at once."""
        if self.pool is not None:
            try:
                payload = orjson.dumps(event)
            except TypeError as exc:
                return InvocationError("Runtime.MarshalError", f"event is not JSON: {exc}")
            result = await self.invoke_payload(payload, context, report=report, wait=wait, int64_only=True)
            if isinstance(result.answer, Response):
                return decode_response(result.answer.payload)
            return result.answer
        if not fresh:
            try:
                event = orjson.loads(orjson.dumps(event))
            except TypeError as exc:
                return InvocationError("Runtime.MarshalError", f"event is not JSON: {exc}")
        if not wait and self._slots is not None and self._slots.locked():
            raise Throttled(f"function {self.name}: no concurrency left for an invocation that may not wait")
        context = context or self.new_context()
        if report is not None:
            report.invocation_id = context.aws_request_id
            report.coldstart = self._first_inline  # the handler was imported at start
        self._first_inline = False
        if self._slots is None:
            return await self._invoke(event, context)
        async with self._slots:
            # The timeout runs from the start of the invocation, not from the wait for a slot.
            return await self._invoke(event, context)

    async def invoke_payload(
        self,
        payload: bytes,
        context: LambdaContext | None = None,
        *,
        report: InvocationReport | None = None,
        wait: bool = True,
        int64_only: bool = False,
    ) -> InvokeResult:
        """Invoke the function with ``payload`` (JSON), as the Invoke API does: the result has the
        response as the function's runtime serialised it, the invocation's own log (START, what
        the handler printed, END and REPORT), its duration, its memory and whether it was a cold
        start. ``context.client_context`` is the caller's client context (a JSON object). Without
        concurrency left the invocation waits for it, or, with ``wait=False``, raises Throttled.
        ``int64_only``: ``payload`` was written by orjson, so no integer in it is past 64 bits
        (which lets the Python runtime parse it faster, see ``Invocation.int64_only``).

        An inline function's log holds Lambda's lines only (what its handler prints goes to
        poller's own output), and its memory is poller's own peak."""
        if self.pool is None:
            return await self._invoke_inline_payload(payload, context or self.new_context(), report, wait)
        invocation = Invocation(
            request_id=context.aws_request_id if context is not None else str(uuid.uuid4()),
            payload=payload,
            deadline_ms=0,  # set by the environment when it takes the invocation
            function_arn=self.arn,
            trace_id=xray_trace_header(),
            client_context=_json_header(context.client_context) if context is not None else None,
            int64_only=int64_only,
        )
        if report is not None:
            report.invocation_id = invocation.request_id
        result = await self.pool.invoke(invocation, wait=wait)
        if report is not None:
            report.coldstart = result.cold_start
        return result

    async def _invoke_inline_payload(
        self, payload: bytes, context: LambdaContext, report: InvocationReport | None, wait: bool
    ) -> InvokeResult:
        if isinstance(context.client_context, dict):
            # The object Lambda's Python runtime makes of it, so that handlers read it alike.
            context.client_context = ClientContext.of(context.client_context)
        request_id = context.aws_request_id
        cold = self._first_inline
        started = time.monotonic()
        result = await self.invoke(orjson.loads(payload), context, fresh=True, report=report, wait=wait)
        duration = time.monotonic() - started
        used = _own_peak_memory_mb()
        log = InvocationLog(request_id)
        log.add(start_line(request_id))
        log.add(end_line(request_id))
        log.add(
            report_line(
                request_id, duration=duration, memory_size=self.config.memory_size, max_memory_used=used
            )
        )
        if isinstance(result, InvocationError):
            return InvokeResult(request_id, result, cold, duration, None, used, log)
        answer = Response(orjson.dumps(result), "application/json")
        return InvokeResult(request_id, answer, cold, duration, None, used, log)

    async def _invoke(self, own_event: dict[str, Any], context: LambdaContext) -> Any:
        context.deadline = time.monotonic() + self.config.timeout
        # asyncio.timeout rather than wait_for: no task per invocation, and it tells the function's
        # own timeout apart from a TimeoutError that the handler raised itself.
        deadline = asyncio.timeout(self.config.timeout)
        try:
            async with deadline:
                if self._is_async:
                    result = await self._handler(own_event, context)
                else:
                    result = await self._run_in_thread(own_event, context)
        except TimeoutError as exc:
            if not deadline.expired():
                return InvocationError.from_exception(exc)
            return InvocationError(
                "Sandbox.Timedout",
                f"Task timed out after {self.config.timeout:.2f} seconds",
            )
        except _HandlerRaised as raised:
            return InvocationError.from_exception(raised.error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return InvocationError.from_exception(exc)
        try:
            # Lambda returns the result as JSON: what cannot be serialised fails the invocation.
            return orjson.loads(orjson.dumps(result)) if result is not None else None
        except TypeError as exc:
            return InvocationError("Runtime.MarshalError", f"Unable to marshal response: {exc}")

    async def _run_in_thread(self, event: dict[str, Any], context: LambdaContext) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return  # abandoned after a timeout or cancellation
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(_HandlerRaised(error))

        def run() -> None:
            result, error = None, None
            try:
                result = self._handler(event, context)
            except BaseException as exc:  # a handler that kills its thread is a failed invocation
                error = exc
            # If the loop closed while an abandoned handler still ran, nobody waits for it.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, error)

        # A daemon thread per invocation: a hung handler holds only its own thread, never a pool
        # slot that another invocation needs, and never keeps the process from exiting.
        thread = threading.Thread(target=run, name=f"handler-{self.name}", daemon=True)
        thread.start()
        try:
            return await future
        except (TimeoutError, asyncio.CancelledError):
            log.warning("function %s: abandoning a handler thread still running past its timeout", self.name)
            raise


class _HandlerRaised(Exception):
    """Carries a handler's exception (even SystemExit) across the thread boundary as a plain Exception."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _own_peak_memory_mb() -> int:
    """Poller's own peak resident memory, in MB (an inline handler shares it)."""
    return math.ceil(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux


def _json_header(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return None
