"""The Python runtime of poller's environments: AWS's own client, awslambdaric, with one addition,
``async def`` handlers (Lambda's Python runtime has none).

Run by path (``python .../bootstrap.py module.function``), so that it imports nothing of poller.
An environment keeps one event loop for its life: a coroutine handler runs on it, and what the
function's code made on it (clients, connection pools) is still there at the next invocation. It
is the loop asyncio gives the main thread (the one the module code got from
``asyncio.get_event_loop()``, if it asked), made when the first awaitable result comes: importing
asyncio costs a sync handler's cold start more than awslambdaric does. Everything else is
awslambdaric's: the marshalling (``Decimal``, int keys), the error documents, the context object,
the logging.

Only how the bytes travel differs: awslambdaric's C extension fetches each event with curl, which
reads it 16 KB at a time into buffers it grows and copies, and spends more CPU on a 150 KB event
than the rest of the invocation does (docs/benchmarks.md). :class:`RuntimeApiConnection` does what
that extension does (its ``next``, ``post_invocation_result`` and ``post_error``) over one
kept-alive socket, with the same arguments, results and failures (an answer's status is read with
the next request, which follows it without a wait). That socket is the Unix socket pair poller
gives the environment when it gave one (poller's ``environments/api.py``: it costs both processes
less CPU per request than loopback TCP), and each event comes from the memory file poller writes
it into rather than from the socket, when poller gave the environment one (poller's
``environments/event_memory.py``: the kernel's copies of a 150 KB event through loopback TCP cost
both processes more than the event's parse). And an event that poller marks
as written by orjson (``Poller-Event-Integers: 64-bit``: no integer in it past 64 bits, the one
place where orjson's parse differs from simplejson's) is parsed with orjson when it is installed
and the event is large enough to repay importing it.

None of it lengthens the init by more than an import of ``mmap`` (about 0.4 ms): ``_socket``
rather than ``socket`` (whose import costs several milliseconds), and orjson imported at the first
large event only.
"""

from __future__ import annotations

import _socket
import inspect
import os
import sys
import types
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import asyncio


def main() -> None:
    # Run by path, Python put this directory first on sys.path: the function's modules come from
    # its task root instead, as on Lambda, and none of them may be shadowed by a file here.
    sys.path[0] = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    from awslambdaric import bootstrap, lambda_runtime_client
    from awslambdaric.lambda_runtime_client import LambdaRuntimeClient

    find_handler = bootstrap._get_handler

    def get_handler(name: str) -> Callable[[Any, Any], Any]:
        return _awaiting(find_handler(name))

    # awslambdaric finds the handler with this function and reports its failures (ImportModuleError,
    # HandlerNotFound, ...) itself; only what it returns is wrapped.
    bootstrap._get_handler = get_handler
    address = os.environ["AWS_LAMBDA_RUNTIME_API"]
    user_agent = getattr(lambda_runtime_client, "_user_agent", lambda: "aws-lambda-python")()
    # The module awslambdaric's client calls for next, response and error (its C extension).
    connection = RuntimeApiConnection(address, user_agent, _event_memory(), _channel())
    lambda_runtime_client.runtime_client = connection
    LambdaRuntimeClient.marshaller = _marshaller(LambdaRuntimeClient.marshaller, connection)
    bootstrap.run(sys.argv[1], LambdaRuntimeClient(address))


# Below this, simplejson's parse takes less than a tenth of a millisecond, and importing orjson
# (with the modules it needs) about ten.
ORJSON_FROM_BYTES = 32 * 1024


def _marshaller(marshaller: Any, connection: RuntimeApiConnection) -> Any:
    """awslambdaric's ``marshaller`` (a class attribute of its client, there to be replaced), which
    parses the large events poller marks as int64-only with orjson."""
    orjson: Any = None

    class Marshaller(type(marshaller)):  # type: ignore[misc]
        def unmarshal_request(self, request: bytes, content_type: str = "application/json") -> Any:
            nonlocal orjson
            if (
                connection.int64_event
                and content_type == "application/json"
                and len(request) >= ORJSON_FROM_BYTES
            ):
                if orjson is None:
                    try:
                        import orjson
                    except ImportError:  # a python3.X from PATH with awslambdaric only
                        orjson = False
                if orjson:
                    try:
                        return orjson.loads(request)
                    except orjson.JSONDecodeError:
                        pass  # then simplejson tells what is wrong with it, as it would have
            return super().unmarshal_request(request, content_type)

    return Marshaller()


def _inherited_descriptor(variable: str) -> int | None:
    """The descriptor poller handed this environment under ``variable``, or None; the variable is
    removed, so that the function's code never sees it."""
    fd = os.environ.pop(variable, None)
    return int(fd) if fd is not None and fd.isdigit() else None


def _event_memory() -> Any:
    """The memory file poller writes this environment's events into, mapped read-only, or None.
    Its variable is gone and its descriptor closed before the function's code runs (the mapping
    keeps a duplicate of its own, which no process the handler starts inherits)."""
    fd = _inherited_descriptor("_POLLER_EVENT_MEMORY_FD")  # event_memory.FD_VARIABLE
    if fd is None:
        return None
    import mmap

    try:
        return mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    except (OSError, ValueError):
        return None  # then the events come in the body
    finally:
        os.close(fd)


def _channel() -> _socket.socket | None:
    """This environment's end of the socket pair poller serves the Runtime API on, or None. Its
    variable is gone before the function's code runs, and no process the handler starts inherits
    the descriptor."""
    fd = _inherited_descriptor("_POLLER_RUNTIME_API_FD")  # api.CHANNEL_VARIABLE
    if fd is None:
        return None
    try:
        os.set_inheritable(fd, False)
        return _socket.socket(fileno=fd)
    except OSError:
        return None  # then over TCP


class RuntimeApiConnection:
    """The Runtime API's three calls of an invocation, as awslambdaric's ``runtime_client`` makes
    them, over one HTTP/1.1 connection kept alive (reopened if the API closed it).

    The API is poller's own, which answers every request with a ``Content-Length``. As with the C
    client, a failed call raises ``RuntimeError``, which ends awslambdaric's loop and the
    environment: that is how an environment exits when poller goes away."""

    def __init__(
        self, address: str, user_agent: str, memory: Any = None, channel: _socket.socket | None = None
    ) -> None:
        host, _, port = address.rpartition(":")
        self._address = (host, int(port))
        self._user_agent = user_agent.encode()
        self._connection: _socket.socket | None = None
        self._reader: BinaryIO | None = None
        self.int64_event = False  # the last event was marked Poller-Event-Integers: 64-bit
        self._memory = memory  # an mmap of the memory file, or None (see _event_memory)
        # poller's MEMORY_HEADER (environments/event_memory.py): events in the memory file, please.
        self._next_headers = b"Poller-Event-Memory: 1\r\n" if memory is not None else b""
        self._unanswered: str | None = None  # a posted answer whose status is unread: the failure to raise
        # poller's socket pair (see _channel): the first connection; a lost one is reopened over TCP.
        self._channel = channel

    def next(self) -> tuple[bytes, dict[str, Any]]:
        status, headers, body = self._request(
            b"GET", b"/2018-06-01/runtime/invocation/next", headers=self._next_headers
        )
        request_id = headers.get("lambda-runtime-aws-request-id")
        if not 200 <= status < 300 or not request_id:
            raise RuntimeError("Failed to get next")
        in_memory = headers.get("poller-event-memory")
        if in_memory is not None and self._memory is not None:
            body = self._memory[: int(in_memory)]  # a copy: poller writes the next event there
        # poller's INT64_HEADER (environments/api.py; this file imports nothing of poller).
        self.int64_event = headers.get("poller-event-integers") == "64-bit"
        # The C client's dict: absent headers are None, the deadline an int (0 when absent).
        return body, {
            "Lambda-Runtime-Aws-Request-Id": request_id,
            "Lambda-Runtime-Trace-Id": headers.get("lambda-runtime-trace-id") or None,
            "Lambda-Runtime-Invoked-Function-Arn": headers.get("lambda-runtime-invoked-function-arn", ""),
            "Lambda-Runtime-Deadline-Ms": int(headers.get("lambda-runtime-deadline-ms") or 0),
            "Lambda-Runtime-Client-Context": headers.get("lambda-runtime-client-context") or None,
            "Content-Type": headers.get("content-type") or None,
            "Lambda-Runtime-Cognito-Identity": headers.get("lambda-runtime-cognito-identity") or None,
            "Lambda-Runtime-Aws-Tenant-Id": headers.get("lambda-runtime-aws-tenant-id") or None,
            "Lambda-Runtime-Invocation-Id": headers.get("lambda-runtime-invocation-id") or None,
        }

    def post_invocation_result(self, request_id: str, result: bytes, content_type: str, *_: Any) -> None:
        path = b"/2018-06-01/runtime/invocation/%s/response" % request_id.encode()
        self._post(path, result, content_type, "Failed to post invocation response")

    def post_error(self, request_id: str, error: str, xray_fault: str, *_: Any) -> None:
        # The X-Ray cause the C client sends as a header is left out: poller has no X-Ray to give it to.
        path = b"/2018-06-01/runtime/invocation/%s/error" % request_id.encode()
        self._post(path, error.encode(), "application/json", "Failed to post invocation error")

    def _post(self, path: bytes, body: bytes, content_type: str, failure: str) -> None:
        """Send an answer without waiting for its status: the next request reads it first, and
        fails as the C client's post would have if the API refused the answer. awslambdaric asks
        for the next invocation as soon as it has answered one, so the answer and the ``GET
        /next`` reach poller together, a round trip between the two processes fewer. (poller's
        API never closes a keep-alive connection after an answer, so the request sent behind
        one is not lost.)"""
        self._send(b"POST", path, body, content_type)
        self._unanswered = failure

    def _request(self, method: bytes, path: bytes, headers: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        reader = self._send(method, path, headers=headers)
        failure, self._unanswered = self._unanswered, None
        try:
            if failure is not None and not 200 <= self._response(reader)[0] < 300:
                self.close()
                raise RuntimeError(failure)
            return self._response(reader)
        except (OSError, ValueError, IndexError) as exc:  # IndexError: a status line without a code
            self.close()
            raise RuntimeError(f"Runtime API request failed: {exc}") from exc

    def _send(
        self,
        method: bytes,
        path: bytes,
        body: bytes | None = None,
        content_type: str = "",
        headers: bytes = b"",
    ) -> BinaryIO:
        """Send a request (on a new connection if there is none); return the reader of its answer."""
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n%s" % (
            method,
            path,
            self._address[0].encode(),
            self._user_agent,
            headers,
        )
        if body is not None:
            head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type.encode(), len(body))
        try:
            if self._connection is None or self._reader is None:
                self._connection, self._reader = self._connect()
                self._unanswered = None  # its answer went with the old connection
            self._connection.sendall(head + b"\r\n" + (body or b""))
        except OSError as exc:
            self.close()
            raise RuntimeError(f"Runtime API request failed: {exc}") from exc
        return self._reader

    def _response(self, reader: BinaryIO) -> tuple[int, dict[str, str], bytes]:
        status_line = reader.readline()
        if not status_line:
            raise ConnectionError("the Runtime API closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers = {}
        while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = reader.read(length)
        if len(body) < length:
            raise ConnectionError("the Runtime API closed the connection inside a response")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def _connect(self) -> tuple[_socket.socket, BinaryIO]:
        connection, self._channel = self._channel, None
        if connection is None:
            connection = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
            try:
                connection.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                connection.connect(self._address)
            except OSError:
                connection.close()
                raise
        # Buffered reads of the socket's descriptor: the head a line at a time from memory, the
        # body straight into its bytes. The reader leaves the descriptor to the socket.
        return connection, open(connection.fileno(), "rb", buffering=65536, closefd=False)

    def close(self) -> None:
        for stream in (self._reader, self._connection):
            if stream is not None:
                stream.close()
        self._connection = self._reader = None


def _awaiting(handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``handler``, whose awaitable results (an ``async def`` handler's) are run to their end on
    the environment's event loop."""

    def call(event: Any, context: Any) -> Any:
        result = handler(event, context)
        if not inspect.isawaitable(result):
            return result
        try:
            return _event_loop().run_until_complete(_wait(result))
        except Exception as exc:
            # The stack trace in the error document is the handler's, not the event loop's.
            raise exc.with_traceback(_without_asyncio(exc.__traceback__)) from exc.__cause__

    return call


_loop: asyncio.AbstractEventLoop | None = None


def _event_loop() -> asyncio.AbstractEventLoop:
    global _loop
    if _loop is None or _loop.is_closed():
        import asyncio

        with warnings.catch_warnings():
            # Python 3.12 warns, and 3.14 refuses, where no loop was set: then one is made here.
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                _loop = asyncio.get_event_loop_policy().get_event_loop()
            except RuntimeError:
                _loop = None
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            asyncio.set_event_loop(_loop)
    return _loop


async def _wait(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _without_asyncio(traceback: types.TracebackType | None) -> types.TracebackType | None:
    import asyncio

    package = os.path.dirname(asyncio.__file__)
    frames = []
    while traceback is not None:
        if not traceback.tb_frame.f_code.co_filename.startswith(package):
            frames.append(traceback)
        traceback = traceback.tb_next
    rebuilt = None
    for frame in reversed(frames):
        rebuilt = types.TracebackType(rebuilt, frame.tb_frame, frame.tb_lasti, frame.tb_lineno)
    return rebuilt


if __name__ == "__main__":
    main()
