"""The Lambda Runtime API of one environment, served on loopback to that environment alone.

AWS defines it at https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html; where the page is
silent (status bodies, the size limit, what an answered id gets) this follows AWS's Runtime
Interface Emulator, which is Lambda's own server code. One listener per environment: the clients
take ``AWS_LAMBDA_RUNTIME_API`` as ``host:port`` only, so the port is what tells environments apart.

The environment gives the API one invocation at a time (:meth:`RuntimeApi.submit`); the runtime
takes it with ``GET /next`` and answers it with ``POST .../response`` or ``.../error``. Everything
the runtime does that breaks the protocol is answered with the status Lambda answers (400 for an
unknown or already answered request id, 403 for a call in the wrong state, 413 for a response over
the limit, 404 for an unknown path), never with an exception in poller.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from poller.engine.outcome import InvocationError

log = logging.getLogger(__name__)

PREFIX = "/2018-06-01/runtime"
NEXT_PATH = f"{PREFIX}/invocation/next"
INIT_ERROR_PATH = f"{PREFIX}/init/error"
_ANSWER_PATH = re.compile(rf"{PREFIX}/invocation/(?P<id>[^/]+)/(?P<kind>response|error)")
# 6 MiB and 100 bytes, as Lambda's interop.MaxPayloadSize.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 + 100
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Invocation:
    """One invocation as ``GET /next`` hands it to the runtime."""

    request_id: str
    payload: bytes
    deadline_ms: int  # epoch milliseconds
    function_arn: str
    trace_id: str | None = None  # X-Ray header: Root=1-...;Parent=...;Sampled=...
    client_context: str | None = None  # JSON
    cognito_identity: str | None = None  # JSON

    def headers(self) -> dict[str, str]:
        """The ``Lambda-Runtime-*`` headers; only those that have a value, as Lambda sends them."""
        headers = {
            "Content-Type": "application/json",
            "Lambda-Runtime-Aws-Request-Id": self.request_id,
            "Lambda-Runtime-Deadline-Ms": str(self.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": self.function_arn,
        }
        for name, value in (
            ("Lambda-Runtime-Trace-Id", self.trace_id),
            ("Lambda-Runtime-Client-Context", self.client_context),
            ("Lambda-Runtime-Cognito-Identity", self.cognito_identity),
        ):
            if value:
                headers[name] = value
        return headers


@dataclass(frozen=True)
class Response:
    """What the runtime posted to ``.../response``: the payload exactly as the function's runtime
    serialised it."""

    payload: bytes
    content_type: str


# The runtime's answer to an invocation: its response, or the error it posted (or the one Lambda
# makes of a response over the limit).
Answer = Response | InvocationError


class RuntimeApi:
    """The Runtime API of one environment. Start it, put its :attr:`address` into the environment's
    ``AWS_LAMBDA_RUNTIME_API``, then wait on :attr:`initialised` (the runtime's first ``/next``: its
    init is over) or :attr:`init_failed` (it posted ``/init/error``)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.initialised: asyncio.Future[None] = loop.create_future()
        self.init_failed: asyncio.Future[InvocationError] = loop.create_future()
        self.address = ""
        self._pending: Invocation | None = None  # submitted, not yet taken by /next
        self._current: Invocation | None = None  # taken by /next, not yet answered
        self._answer: asyncio.Future[Answer] | None = None
        self._wakeup: asyncio.Future[None] | None = None  # set when a waiting /next has work
        self._closing = False
        self._web = web.Server(self._handle, handler_cancellation=True, access_log=None)
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1") -> str:
        """Listen on a free loopback port; return ``host:port``."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._web, host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{host}:{port}"
        return self.address

    async def close(self) -> None:
        """Stop listening and close every connection: a runtime waiting in ``/next`` sees the API
        go away, and AWS's clients exit when it does."""
        self._closing = True
        self._wake()
        if self._server is not None:
            self._server.close()
            await self._web.shutdown(timeout=0.5)
            self._server = None

    def submit(self, invocation: Invocation) -> asyncio.Future[Answer]:
        """Hand ``invocation`` to the runtime (now, if it waits in ``/next``, else at its next
        ``/next``); return the future of its answer. One invocation at a time: the caller ends
        each with :meth:`finish` before it submits the next."""
        if self._answer is not None:
            raise RuntimeError("an environment takes one invocation at a time")
        self._answer = asyncio.get_running_loop().create_future()
        self._pending = invocation
        self._wake()
        return self._answer

    def finish(self) -> None:
        """Forget the current invocation, answered or not (its environment timed out or failed):
        a late answer to it gets 400 InvalidRequestID."""
        self._pending = self._current = None
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        self._answer = None

    @property
    def busy(self) -> bool:
        """Whether an invocation is submitted and not finished."""
        return self._answer is not None

    # --- the handlers ----------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == NEXT_PATH:
            return await self._next(request) if method == "GET" else _status(405, "MethodNotAllowed")
        if path == INIT_ERROR_PATH:
            return await self._init_error(request) if method == "POST" else _status(405, "MethodNotAllowed")
        match = _ANSWER_PATH.fullmatch(path)
        if match is None:
            return _status(404, "NotFound", f"no such path {path}")
        if method != "POST":
            return _status(405, "MethodNotAllowed")
        if match["kind"] == "response":
            return await self._response(request, match["id"])
        return await self._error(request, match["id"])

    async def _next(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._wakeup is not None or self._current is not None or self.init_failed.done():
            # Another /next waits, the last invocation is unanswered, or init failed: as Lambda,
            # a state transition the runtime may not make.
            return _status(403, "InvalidStateTransition", "State transition to next failed for runtime")
        if not self.initialised.done():
            self.initialised.set_result(None)
        while self._pending is None:
            if self._closing:
                return _status(410, "Gone", "the environment is shutting down")
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        invocation, self._pending = self._pending, None
        self._current = invocation
        return web.Response(body=invocation.payload, headers=invocation.headers())

    async def _response(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse:
        answer = self._answerable(request_id)
        if answer is None:
            return _invalid_request_id()
        body, size = await _read_limited(request, MAX_RESPONSE_BYTES)
        if answer.done():  # answered meanwhile (the environment failed while the body arrived)
            return _invalid_request_id()
        self._current = None  # answered: the runtime may ask for the next one at once
        if body is None:
            answer.set_result(
                InvocationError(
                    "Function.ResponseSizeTooLarge",
                    f"Response payload size ({size} bytes) exceeded maximum allowed payload size "
                    f"({MAX_RESPONSE_BYTES} bytes).",
                )
            )
            return _status(
                413,
                "RequestEntityTooLarge",
                f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
            )
        answer.set_result(Response(body, request.headers.get("Content-Type", "application/json")))
        return _accepted()

    async def _error(self, request: web.BaseRequest, request_id: str) -> web.StreamResponse:
        answer = self._answerable(request_id)
        if answer is None:
            return _invalid_request_id()
        body, _ = await _read_limited(request, MAX_RESPONSE_BYTES)
        if answer.done():
            return _invalid_request_id()
        self._current = None
        answer.set_result(_error_document(body, request.headers.get(ERROR_TYPE_HEADER)))
        return _accepted()

    async def _init_error(self, request: web.BaseRequest) -> web.StreamResponse:
        body, _ = await _read_limited(request, MAX_RESPONSE_BYTES)
        if self.initialised.done() or self.init_failed.done():
            return _status(403, "InvalidStateTransition", "State transition to init error failed for runtime")
        self.init_failed.set_result(_error_document(body, request.headers.get(ERROR_TYPE_HEADER)))
        return _accepted()

    def _answerable(self, request_id: str) -> asyncio.Future[Answer] | None:
        """The answer future of the invocation ``request_id`` if the runtime may answer it now."""
        current, answer = self._current, self._answer
        if current is None or answer is None or answer.done() or current.request_id != request_id:
            return None
        return answer

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)


async def _read_limited(request: web.BaseRequest, limit: int) -> tuple[bytes | None, int]:
    """The body, or None when it is longer than ``limit`` bytes; and its size. The whole body is
    read (past the limit, only counted), so that the runtime gets its answer rather than a reset."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    return (b"".join(chunks) if size <= limit else None), size


def _error_document(body: bytes | None, header_type: str | None) -> InvocationError:
    """What the runtime posted as an error, as an InvocationError. The body is the error document
    (``errorMessage``, ``errorType``, ``stackTrace``; Node's client sends ``trace``); the optional
    header names the type when the body does not."""
    document: Any = None
    if body:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
    if not isinstance(document, dict):
        text = body.decode("utf-8", "replace") if body else ""
        return InvocationError(header_type or "Runtime.Unknown", text)
    stack = document.get("stackTrace", document.get("trace"))
    if isinstance(stack, str):
        stack = stack.splitlines()
    if not isinstance(stack, list):
        stack = []
    return InvocationError(
        str(document.get("errorType") or header_type or "Runtime.Unknown"),
        str(document.get("errorMessage", "")),
        [str(line) for line in stack],
        document=body,
    )


def _accepted() -> web.Response:
    return web.Response(status=202, body=b'{"status":"OK"}', content_type="application/json")


def _invalid_request_id() -> web.Response:
    return _status(400, "InvalidRequestID", "Invalid request ID")


def _status(status: int, error_type: str, message: str = "") -> web.Response:
    body = orjson.dumps({"errorMessage": message or error_type, "errorType": error_type})
    return web.Response(status=status, body=body, content_type="application/json")
