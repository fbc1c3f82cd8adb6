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

HTTP is spoken by a small protocol over httptools' parser (llhttp, what uvicorn uses) rather than
by aiohttp's server: each invocation is two requests, and aiohttp's request and response objects,
handler tasks and middleware cost poller about 300 µs of CPU per invocation, which made poller's
event loop the bottleneck of a busy mapping. Here a waiting ``GET /next`` is a parked connection
that :meth:`RuntimeApi.submit` answers directly: no task per request. A runtime that sends its
``GET /next`` right behind an answer (poller's Python runtime does) gets the answer's ``202`` in the
same write as its next invocation: until then it waits for that invocation anyway, and each write
wakes its process, which on a busy machine then often takes poller's CPU (docs/benchmarks.md).

Poller's own Python runtime speaks the same HTTP over a Unix socket pair it inherits
(:meth:`RuntimeApi.channel`): through loopback TCP, the kernel's TCP stack on both sides cost each
process more CPU per request than a Unix socket does. ``AWS_LAMBDA_RUNTIME_API`` still names the
TCP listener, for every other client.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import unquote

import httptools
import orjson

from poller.engine.outcome import InvocationError
from poller.runtime.environments.event_memory import MEMORY_HEADER, EventMemory

log = logging.getLogger(__name__)

PREFIX = "/2018-06-01/runtime"
NEXT_PATH = f"{PREFIX}/invocation/next"
INIT_ERROR_PATH = f"{PREFIX}/init/error"
_ANSWER_PATH = re.compile(rf"{PREFIX}/invocation/(?P<id>[^/]+)/(?P<kind>response|error)")
# 6 MiB and 100 bytes, as Lambda's interop.MaxPayloadSize.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 + 100
ERROR_TYPE_HEADER = "lambda-runtime-function-error-type"
# Poller's own header on ``/next``: the event was serialised by orjson, so its integers all fit in
# 64 bits, and poller's Python runtime may parse it with orjson, which gives then exactly what
# awslambdaric's simplejson gives, in a third of the time (``clients/bootstrap.py``). Other
# runtimes ignore it.
INT64_HEADER = "Poller-Event-Integers"


@dataclass(slots=True)
class Invocation:
    """One invocation as ``GET /next`` hands it to the runtime."""

    request_id: str
    payload: bytes
    deadline_ms: int  # epoch milliseconds; the environment sets it when it hands the invocation over
    function_arn: str
    trace_id: str | None = None  # X-Ray header: Root=1-...;Parent=...;Sampled=...
    client_context: str | None = None  # JSON
    cognito_identity: str | None = None  # JSON
    int64_only: bool = False  # serialised by orjson: no integer past 64 bits (INT64_HEADER)

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
        if self.int64_only:
            headers[INT64_HEADER] = "64-bit"
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


# Names the descriptor of the runtime's end of the socket pair; the runtime removes it before the
# function's code runs.
CHANNEL_VARIABLE = "_POLLER_RUNTIME_API_FD"


class RuntimeApi:
    """The Runtime API of one environment. Start it, put its :attr:`address` into the environment's
    ``AWS_LAMBDA_RUNTIME_API``, then wait on :attr:`initialised` (the runtime's first ``/next``: its
    init is over) or :attr:`init_failed` (it posted ``/init/error``). With ``memory``, a runtime
    that asks for it gets its events through that memory file (``event_memory.py``)."""

    def __init__(self, memory: EventMemory | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.initialised: asyncio.Future[None] = loop.create_future()
        self.init_failed: asyncio.Future[InvocationError] = loop.create_future()
        self.address = ""
        self._pending: Invocation | None = None  # submitted, not yet taken by /next
        self._current: Invocation | None = None  # taken by /next, not yet answered
        self._answer: asyncio.Future[Answer] | None = None
        self._waiting: _Connection | None = None  # the connection whose /next waits for work
        self._connections: set[_Connection] = set()
        self._closing = False
        self._server: asyncio.Server | None = None
        self._memory = memory
        self._reads_memory = False  # the runtime asked for its events in the memory file

    async def start(self, host: str = "127.0.0.1") -> str:
        """Listen on a free loopback port; return ``host:port``."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"{host}:{port}"
        return self.address

    async def channel(self) -> socket.socket:
        """The other end of a socket pair this API serves, for the environment to inherit; the
        caller closes it once the environment's process has it."""
        ours, theirs = socket.socketpair()
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: _Connection(self), ours)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        return theirs

    async def close(self) -> None:
        """Stop listening and close every connection: a runtime waiting in ``/next`` sees the API
        go away, and AWS's clients exit when it does."""
        self._closing = True
        self._hand_over()
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self._connections):
            connection.close()

    def submit(self, invocation: Invocation) -> asyncio.Future[Answer]:
        """Hand ``invocation`` to the runtime (now, if it waits in ``/next``, else at its next
        ``/next``); return the future of its answer. One invocation at a time: the caller ends
        each with :meth:`finish` before it submits the next."""
        if self._answer is not None:
            raise RuntimeError("an environment takes one invocation at a time")
        self._answer = asyncio.get_running_loop().create_future()
        self._pending = invocation
        self._hand_over()
        return self._answer

    def finish(self) -> None:
        """Forget the current invocation, answered or not (its environment timed out or failed):
        a late answer to it gets 400 InvalidRequestID."""
        self._pending = self._current = None
        if self._memory is not None:
            self._memory.trim()
        if self._answer is not None and not self._answer.done():
            self._answer.cancel()
        self._answer = None

    @property
    def busy(self) -> bool:
        """Whether an invocation is submitted and not finished."""
        return self._answer is not None

    # --- the requests ----------------------------------------------------------------------------

    def handle(self, connection: _Connection, request: _Request) -> _Reply | None:
        """The reply to one complete request, or None for a ``/next`` that waits for work (its
        reply is written when work comes, or when the API closes)."""
        path, method = request.path, request.method
        if path == NEXT_PATH:
            if method != b"GET":
                return _status(405, "MethodNotAllowed")
            self._reads_memory = self._memory is not None and request.headers.get(_MEMORY) == "1"
            return self._next(connection)
        if path == INIT_ERROR_PATH:
            return self._init_error(request) if method == b"POST" else _status(405, "MethodNotAllowed")
        match = _ANSWER_PATH.fullmatch(path)
        if match is None:
            return _status(404, "NotFound", f"no such path {path}")
        if method != b"POST":
            return _status(405, "MethodNotAllowed")
        if match["kind"] == "response":
            return self._response(request, match["id"])
        return self._error(request, match["id"])

    def attach(self, connection: _Connection) -> None:
        """``connection`` is open: :meth:`close` closes it."""
        self._connections.add(connection)

    def forget(self, connection: _Connection) -> None:
        """``connection`` is closed: a ``/next`` it waited in waits no more."""
        self._connections.discard(connection)
        if self._waiting is connection:
            self._waiting = None

    def _next(self, connection: _Connection) -> _Reply | None:
        if self._waiting is not None or self._current is not None or self.init_failed.done():
            # Another /next waits, the last invocation is unanswered, or init failed: as Lambda,
            # a state transition the runtime may not make.
            return _status(403, "InvalidStateTransition", "State transition to next failed for runtime")
        if not self.initialised.done():
            self.initialised.set_result(None)
        if self._pending is not None:
            return self._take()
        if self._closing:
            return _gone()
        self._waiting = connection
        return None

    def _hand_over(self) -> None:
        """Answer the waiting ``/next``, if there is one and work (or the end) has come."""
        waiting = self._waiting
        if waiting is None or (self._pending is None and not self._closing):
            return
        self._waiting = None
        waiting.reply(self._take() if self._pending is not None else _gone())

    def _take(self) -> _Reply:
        invocation = self._pending
        assert invocation is not None
        self._pending, self._current = None, invocation
        payload, headers = invocation.payload, invocation.headers()
        if self._reads_memory and self._memory is not None and self._memory.holds(payload):
            self._memory.write(payload)
            headers[MEMORY_HEADER] = str(len(payload))
            payload = b""
        return _Reply(200, payload, headers)

    def _response(self, request: _Request, request_id: str) -> _Reply:
        answer = self._answerable(request_id)
        if answer is None:
            return _invalid_request_id()
        self._current = None  # answered: the runtime may ask for the next one at once
        body = request.body
        if body is None:
            answer.set_result(
                InvocationError(
                    "Function.ResponseSizeTooLarge",
                    f"Response payload size ({request.size} bytes) exceeded maximum allowed payload "
                    f"size ({MAX_RESPONSE_BYTES} bytes).",
                )
            )
            return _status(
                413,
                "RequestEntityTooLarge",
                f"Exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
            )
        answer.set_result(Response(body, request.headers.get("content-type", "application/json")))
        return _ACCEPTED

    def _error(self, request: _Request, request_id: str) -> _Reply:
        answer = self._answerable(request_id)
        if answer is None:
            return _invalid_request_id()
        self._current = None
        answer.set_result(InvocationError.from_document(request.body, request.headers.get(ERROR_TYPE_HEADER)))
        return _ACCEPTED

    def _init_error(self, request: _Request) -> _Reply:
        if self.initialised.done() or self.init_failed.done():
            return _status(403, "InvalidStateTransition", "State transition to init error failed for runtime")
        self.init_failed.set_result(
            InvocationError.from_document(request.body, request.headers.get(ERROR_TYPE_HEADER))
        )
        return _ACCEPTED

    def _answerable(self, request_id: str) -> asyncio.Future[Answer] | None:
        """The answer future of the invocation ``request_id`` if the runtime may answer it now."""
        current, answer = self._current, self._answer
        if current is None or answer is None or answer.done() or current.request_id != request_id:
            return None
        return answer


# --- HTTP/1.1 ----------------------------------------------------------------------------------


# The request headers the API reads (names in lower case); the others are not kept.
_MEMORY = MEMORY_HEADER.lower()
_READ_HEADERS = frozenset({b"content-type", b"expect", ERROR_TYPE_HEADER.encode(), _MEMORY.encode()})


@dataclass
class _Request:
    """One request as parsed: the body is None when it is longer than the limit (then only its
    ``size`` is known: the rest was read and dropped, so that the runtime gets its answer)."""

    method: bytes = b""
    url: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # those of _READ_HEADERS, names in lower case
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    keep_alive: bool = True

    @property
    def path(self) -> str:
        path = self.url.partition(b"?")[0].decode("utf-8", "replace")
        return unquote(path) if "%" in path else path

    @property
    def body(self) -> bytes | None:
        return b"".join(self.chunks) if self.size <= MAX_RESPONSE_BYTES else None


_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
    413: "Request Entity Too Large",
}


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def head(self, keep_alive: bool) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {_REASONS[self.status]}\r\n"]
        for name, value in self.headers.items():
            if "\n" in value or "\r" in value:
                # A value is one line: a newline (only whitespace, in a JSON client context)
                # cannot end the header early.
                value = value.replace("\r", " ").replace("\n", " ")
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"Content-Length: {len(self.body)}\r\n")
        if not keep_alive:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode()


class _Connection(asyncio.Protocol):
    """One connection of the runtime: its requests in turn, one at a time (a ``/next`` that waits
    holds back what the runtime sends after it). The callbacks are httptools'."""

    def __init__(self, api: RuntimeApi) -> None:
        self._api = api
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._parsing = _Request()
        self._requests: deque[_Request] = deque()
        self._waiting: _Request | None = None  # the request whose reply is yet to come
        self._out: list[bytes] = []  # replies not yet written (see _serve)
        self._urgent = False  # _out holds a reply other than an answer's 202

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._api.attach(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._api.forget(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            log.debug("runtime api: malformed request: %s", exc)
            self._requests.clear()
            self._send(_status(400, "InvalidRequest", "malformed HTTP request"), keep_alive=False)
            return
        self._serve()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def reply(self, reply: _Reply) -> None:
        """The reply to the request that waited."""
        request, self._waiting = self._waiting, None
        if request is not None:
            self._send(reply, request.keep_alive)
            self._serve()

    def _serve(self) -> None:
        while self._requests and self._waiting is None and self._transport is not None:
            request = self._requests.popleft()
            reply = self._api.handle(self, request)
            if reply is None:
                self._waiting = request
            else:
                self._send(reply, request.keep_alive)
        if self._urgent or self._waiting is None:
            # The 202 of an answer that a /next waits behind goes with that /next's reply: one
            # write, one wake-up of the runtime instead of two. Every other reply goes at once.
            self._flush()

    def _send(self, reply: _Reply, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._out.append(reply.head(keep_alive))
        if reply.body:
            self._out.append(reply.body)
        if reply is not _ACCEPTED:
            self._urgent = True
        if not keep_alive:
            self._flush()
            transport.close()

    def _flush(self) -> None:
        out, self._out, self._urgent = self._out, [], False
        if out and self._transport is not None:
            self._transport.writelines(out)

    # --- httptools' callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = _Request()

    def on_url(self, url: bytes) -> None:
        self._parsing.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _READ_HEADERS:
            self._parsing.headers[name.decode()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._parsing.headers.get("expect", "").lower() == "100-continue" and self._transport:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        request.size += len(body)
        if request.size <= MAX_RESPONSE_BYTES:
            request.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        request.method = self._parser.get_method()
        request.keep_alive = self._parser.should_keep_alive()
        self._requests.append(request)


_JSON = {"Content-Type": "application/json"}
_ACCEPTED = _Reply(202, b'{"status":"OK"}', _JSON)


def _invalid_request_id() -> _Reply:
    return _status(400, "InvalidRequestID", "Invalid request ID")


def _gone() -> _Reply:
    return _status(410, "Gone", "the environment is shutting down")


def _status(status: int, error_type: str, message: str = "") -> _Reply:
    body = orjson.dumps({"errorMessage": message or error_type, "errorType": error_type})
    return _Reply(status, body, _JSON)
