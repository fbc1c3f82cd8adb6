"""The function runtime: load ``module:callable``, build Lambda's context, invoke with the timeout.

A handler is called exactly as on Lambda, ``handler(event, context)``. Async handlers run on the
event loop; sync handlers run on a thread of their own, so a slow or hung one never blocks the loop
(a thread cannot be killed: one past its timeout is abandoned and logged, and the invocation fails).
The handler owns its event, as on Lambda, so a handler that mutates it cannot change what is
retried or dead-lettered: the engine builds a new event for every invocation (``fresh=True``),
and any other event is handed over as a JSON copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from poller.config import Function
from poller.connections.aws import ACCOUNT_ID, default_region
from poller.engine.outcome import InvocationError
from poller.runtime.handler import load_handler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CognitoIdentity:
    cognito_identity_id: str | None = None
    cognito_identity_pool_id: str | None = None


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


class FunctionRuntime:
    """One configured function: its handler, its timeout and its concurrency limit.

    ``invoke`` never raises for anything the handler does: it returns the handler's JSON-ready
    result or an :class:`InvocationError`. Only cancellation propagates.
    """

    def __init__(self, name: str, config: Function, *, region: str | None = None) -> None:
        self.name = name
        self.config = config
        self.region = region or default_region()
        self.arn = f"arn:aws:lambda:{self.region}:{ACCOUNT_ID}:function:{name}"
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
        self._stream = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"

    def new_context(self) -> LambdaContext:
        return LambdaContext(
            function_name=self.name,
            memory_limit_in_mb=self.config.memory_size,
            aws_request_id=str(uuid.uuid4()),
            invoked_function_arn=self.arn,
            log_group_name=f"/aws/lambda/{self.name}",
            log_stream_name=self._stream,
            deadline=time.monotonic() + self.config.timeout,
        )

    async def invoke(
        self, event: dict[str, Any], context: LambdaContext | None = None, *, fresh: bool = False
    ) -> Any:
        """Run the handler once; return its result, or an InvocationError describing the failure.

        ``fresh``: the event was built of JSON values for this invocation alone (an
        ``EventFormat.event``), so the handler may have it as it is. Otherwise the handler gets a
        JSON copy, which also refuses what JSON cannot carry, as Lambda's invoke API would."""
        if not fresh:
            try:
                event = orjson.loads(orjson.dumps(event))
            except TypeError as exc:
                return InvocationError("Runtime.MarshalError", f"event is not JSON: {exc}")
        if self._slots is None:
            return await self._invoke(event, context or self.new_context())
        async with self._slots:
            # The timeout runs from the start of the invocation, not from the wait for a slot.
            return await self._invoke(event, context or self.new_context())

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
