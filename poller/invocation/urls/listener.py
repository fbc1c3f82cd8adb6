"""One function's URL: an HTTP listener that invokes the function synchronously with every request
(any method, any path), as Lambda function URLs do (SPEC section 13).

Each request becomes a payload format 2.0 event (:mod:`poller.invocation.urls.event`), is invoked
without waiting for concurrency (none left: 429, as Lambda throttles), and the function's result
becomes the response: a function error, timeout or crash, or a malformed response, is a 502.
With ``cors`` set the listener answers preflight requests itself and adds the CORS headers
(:mod:`poller.invocation.urls.cors`). Every response of an invocation carries its request id in
``x-amzn-RequestId``, the id the function's context and its log lines have.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import orjson
from aiohttp import HttpVersion11, web

from poller.config.function_url import FunctionUrl
from poller.connections.account import ACCOUNT_ID
from poller.errors import PollerError, Throttled
from poller.invocation.sigv4 import SignatureVerifier
from poller.invocation.urls.cors import is_preflight, preflight_response, with_cors
from poller.invocation.urls.event import (
    FORBIDDEN,
    FUNCTION_ERROR,
    MAX_PAYLOAD_BYTES,
    THROTTLED,
    TOO_LARGE,
    HttpRequest,
    HttpResponse,
    MalformedResponse,
    UrlInfo,
    request_event,
    response_of,
)
from poller.observability.tracing import xray_trace_header
from poller.observability.url_telemetry import UrlRequestSpan, UrlTelemetry
from poller.runtime.environments.api import Response
from poller.runtime.function import FunctionRuntime

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class FunctionUrlError(PollerError):
    """A function URL cannot listen (its port is taken, its host is not an address of this machine)."""


class FunctionUrlListener:
    """The URL of one function. :meth:`start` once the function started, :meth:`close` before it
    closes; :meth:`swap` puts another function (a reload's) under the running listener."""

    def __init__(
        self,
        name: str,
        settings: FunctionUrl,
        function: FunctionRuntime,
        telemetry: UrlTelemetry,
        verifier: SignatureVerifier | None = None,
    ) -> None:
        """``verifier``: with ``authorization_type: AWS_IAM``, what checks each request's signature."""
        if settings.authorization_type == "AWS_IAM" and verifier is None:
            raise ValueError(f"function {name}: an AWS_IAM function URL needs a signature verifier")
        self.name = name
        self.settings = settings
        self.function = function
        self.telemetry = telemetry
        self.verifier = verifier if settings.authorization_type == "AWS_IAM" else None
        self.port = settings.port
        # Lambda's URL id is 32 lower-case letters and digits; this one is stable per function.
        self.url_id = hashlib.sha256(function.arn.encode()).hexdigest()[:32]
        self._web = web.Server(self._handle, access_log=None)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}/"

    async def start(self) -> None:
        """Listen; raises FunctionUrlError if the address cannot be had."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._web, self.settings.host, self.settings.port)
        except OSError as exc:
            raise FunctionUrlError(
                f"function {self.name}: function URL cannot listen on "
                f"{self.settings.host}:{self.settings.port}: {exc.strerror or exc}"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("function %s: function URL on %s", self.name, self.url)

    def swap(self, function: FunctionRuntime) -> None:
        """Invoke ``function`` from now on; requests in flight finish on the one they started on."""
        self.function = function

    async def close(self, drain_timeout: float) -> None:
        """Stop listening, let the requests in flight finish (cancelled past ``drain_timeout``
        seconds) and close every connection."""
        if self._server is None:
            return
        self._server.close()
        await self._web.shutdown(timeout=drain_timeout)
        await self._server.wait_closed()
        self._server = None

    # --- one request -------------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.raw_path.partition("?")[0]
        client = request.remote or ""
        with self.telemetry.request(
            self.name, request.method, path, request.headers, (self.settings.host, self.port), client
        ) as span:
            response = await self._answer(request, client, span)
            span.status = response.status
            return web.Response(status=response.status, headers=response.headers, body=response.body)

    async def _answer(self, request: web.BaseRequest, client: str, span: UrlRequestSpan) -> HttpResponse:
        cors = self.settings.cors
        body = await _body_within_limit(request)
        http = HttpRequest(
            request.method,
            request.raw_path,
            list(request.headers.items()),
            body or b"",
            client,
            f"HTTP/{request.version.major}.{request.version.minor}",
        )
        if cors is not None and is_preflight(http):
            # Browsers send preflights unsigned: Lambda answers them before it checks a signature.
            return preflight_response(cors, http)
        signer = None
        if self.verifier is not None and body is not None:
            digest = hashlib.sha256(body).hexdigest()
            rejected = self.verifier.verify(request.method, request.raw_path, request.headers, digest)
            if rejected is not None:
                log.info(
                    "function %s: %s %s refused: %s", self.name, request.method, http.target, rejected.code
                )
                return FORBIDDEN
            signer = self.verifier.access_key_id
        response = await self._invoke(http, body is None, span, signer)
        return with_cors(cors, http, response) if cors is not None else response

    async def _invoke(
        self, http: HttpRequest, too_large: bool, span: UrlRequestSpan, signer: str | None = None
    ) -> HttpResponse:
        function = self.function  # the one the whole request uses, even if a reload swaps it
        context = function.new_context()
        request_id = context.aws_request_id
        trace_header = xray_trace_header()
        headers = [("x-amzn-RequestId", request_id)]
        if trace_header is not None:
            headers.append(("X-Amzn-Trace-Id", trace_header))
        payload = b""
        if not too_large:
            # Lambda names the function's account where a signature names the caller.
            url = UrlInfo(self.url_id, self.port, ACCOUNT_ID) if signer else UrlInfo(self.url_id, self.port)
            event = request_event(
                http, url, request_id, now=time.time(), trace_header=trace_header, signer=signer
            )
            payload = orjson.dumps(event)
        if too_large or len(payload) > MAX_PAYLOAD_BYTES:
            log.info(
                "function %s: request %s is over %d bytes: 413", self.name, request_id, MAX_PAYLOAD_BYTES
            )
            return _with(TOO_LARGE, headers)
        try:
            result = await function.invoke_payload(payload, context, report=span.invocation, wait=False)
        except Throttled:
            log.info("function %s: request %s throttled (no concurrency left): 429", self.name, request_id)
            return _with(THROTTLED, headers)
        if not isinstance(result.answer, Response):
            error = result.answer
            log.error(
                "function %s: request %s failed: %s: %s",
                self.name,
                request_id,
                error.error_type,
                error.message,
            )
            span.failed(error.error_type, error.message)
            return _with(FUNCTION_ERROR, headers)
        try:
            response = response_of(result.answer.payload)
        except MalformedResponse as exc:
            log.error("function %s: request %s returned a malformed response: %s", self.name, request_id, exc)
            span.failed("Function.MalformedResponse", str(exc))
            return _with(FUNCTION_ERROR, headers)
        return _with(response, headers)


async def _body_within_limit(request: web.BaseRequest) -> bytes | None:
    """The request's body, or None when it is larger than an invocation payload may be (then it
    is not read further: the 413 closes the connection)."""
    if not request.body_exists:
        return b""
    if request.content_length is not None and request.content_length > MAX_PAYLOAD_BYTES:
        return None
    if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
        # The client (curl, for a body past 1 KB) waits for this before it sends the body.
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not begun
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size > MAX_PAYLOAD_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _with(response: HttpResponse, headers: list[tuple[str, str]]) -> HttpResponse:
    return HttpResponse(response.status, [*response.headers, *headers], response.body)
