"""The Lambda Invoke API on the admin server: ``POST /2015-03-31/functions/{FunctionName}/invocations``
(https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html; SPEC section 13), so that boto3,
the AWS CLI and every AWS SDK invoke poller's functions with ``endpoint_url`` = the admin address.

A request is checked in the order Lambda checks it: who sent it (its SigV4 signature, when
``admin.credentials`` are set), its size, which function it names, its body (JSON) and its client
context; then ``X-Amz-Invocation-Type`` decides: ``RequestResponse`` (the default) runs the
synchronous path of :mod:`poller.invocation.sync` and answers 200 with the function's response or
error, ``DryRun`` answers 204, ``Event`` hands the payload to the :class:`EventQueue` and answers
202 once it is stored. Every refusal is an :class:`~poller.invocation.errors.ApiError`, shaped as
Lambda's.

Authentication: with ``admin.credentials`` the API takes SigV4-signed requests and nothing else
(the admin token does not apply to it: an SDK cannot send both). Without them it is guarded like
every other admin endpoint, by the admin token if one is set (see :mod:`poller.observability.admin`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from poller.config import AdminCredentials
from poller.connections.account import default_region
from poller.errors import PollerError, Throttled
from poller.invocation import errors
from poller.invocation.asynchronous.queue import EventQueue
from poller.invocation.errors import REQUEST_ID_HEADER, ApiError
from poller.invocation.names import LATEST, resolve
from poller.invocation.sigv4 import SignatureVerifier
from poller.invocation.sync import SyncResult, invoke_sync
from poller.observability.invocation_spans import InvocationSpans
from poller.runtime.function import FunctionRuntime

log = logging.getLogger(__name__)

PREFIX = "/2015-03-31/functions/"
ROUTE = PREFIX + "{function_name}/invocations"
SYNC_LIMIT = 6 * 1024 * 1024  # bytes of a synchronous invocation's payload, as Lambda's
ASYNC_LIMIT = 1024 * 1024  # of an asynchronous one
CLIENT_CONTEXT_LIMIT = 3583  # bytes of X-Amz-Client-Context, base64 included
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
LOG_TYPES = ("None", "Tail")
_CHUNK = 64 * 1024


class InvokeApi:
    """The Invoke API over ``functions`` (the App's, changed in place by a reload). ``queue``
    stores ``Event`` invocations; without one they are refused as by a service that is
    unavailable."""

    def __init__(
        self,
        functions: Mapping[str, FunctionRuntime],
        *,
        credentials: AdminCredentials | None = None,
        spans: InvocationSpans | None = None,
        queue: EventQueue | None = None,
        region: str | None = None,
    ) -> None:
        self.functions = functions
        self.spans = spans or InvocationSpans()
        self.queue = queue
        self.region = region or default_region()
        self._verifier = (
            SignatureVerifier(credentials.access_key_id, credentials.secret_access_key.reveal())
            if credentials is not None
            else None
        )

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(ROUTE, self.invoke)

    def authenticates(self, request: web.Request) -> bool:
        """Whether this API checks the request's credentials itself (SigV4), so that the admin
        token does not apply to it."""
        return self._verifier is not None and request.path.startswith(PREFIX)

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        answer = await self._answer(request, request_id)
        if isinstance(answer, ApiError):
            log.info(
                "Invoke %s refused: %d %s: %s",
                request.match_info["function_name"],
                answer.status,
                answer.code,
                answer.message,
            )
            return answer.response(request_id)
        return answer

    async def _answer(self, request: web.Request, request_id: str) -> web.StreamResponse | ApiError:
        invocation_type = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        limit = ASYNC_LIMIT if invocation_type == "Event" else SYNC_LIMIT
        body, size, digest = await _read_body(request, limit, hashed=self._verifier is not None)
        if self._verifier is not None:
            assert digest is not None
            rejected = self._verifier.verify(request.method, request.raw_path, request.headers, digest)
            if rejected is not None:
                return errors.unauthorized(rejected)
        if invocation_type not in INVOCATION_TYPES:
            return errors.invalid_parameter(
                f"1 validation error detected: Value '{invocation_type}' at 'invocationType' failed to "
                f"satisfy constraint: Member must satisfy enum value set: [{', '.join(INVOCATION_TYPES)}]"
            )
        log_type = request.headers.get("X-Amz-Log-Type", "None")
        if log_type not in LOG_TYPES:
            return errors.invalid_parameter(
                f"1 validation error detected: Value '{log_type}' at 'logType' failed to satisfy "
                f"constraint: Member must satisfy enum value set: [{', '.join(LOG_TYPES)}]"
            )
        if body is None:
            return errors.too_large(limit)
        function = resolve(
            self.functions,
            request.match_info["function_name"],
            request.query.get("Qualifier"),
            default_region=self.region,
        )
        if isinstance(function, ApiError):
            return function
        if body:
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                return errors.invalid_json(str(exc))
        client_context = _client_context(request.headers.get("X-Amz-Client-Context"))
        if isinstance(client_context, ApiError):
            return client_context
        log.debug("Invoke %s (%s, %d bytes) as request %s", function.name, invocation_type, size, request_id)
        if invocation_type == "DryRun":
            return web.Response(status=204, headers={REQUEST_ID_HEADER: request_id})
        if invocation_type == "Event":
            return await self._enqueue(request, function, body or b"{}", request_id)
        return await self._invoke_sync(
            request, function, body, client_context, request_id, tail=log_type == "Tail"
        )

    async def _invoke_sync(
        self,
        request: web.Request,
        function: FunctionRuntime,
        body: bytes,
        client_context: dict[str, Any] | None,
        request_id: str,
        *,
        tail: bool,
    ) -> web.StreamResponse | ApiError:
        if not function.ready:
            return errors.not_ready(function.name)
        with self.spans.invocation(function.name, function.arn, "RequestResponse", request.headers) as span:
            try:
                result = await invoke_sync(
                    function, body, client_context=client_context, request_id=request_id, span=span
                )
            except Throttled:
                span.span.set_attribute("error.type", "TooManyRequestsException")
                return errors.throttled()
        return _sync_response(result, tail=tail)

    async def _enqueue(
        self, request: web.Request, function: FunctionRuntime, payload: bytes, request_id: str
    ) -> web.StreamResponse | ApiError:
        if self.queue is None:
            return errors.unavailable("Asynchronous invocation is not available in this poller.")
        with self.spans.invocation(function.name, function.arn, "Event", request.headers) as span:
            span.invocation_id = request_id
            try:
                await self.queue.accept(
                    function, payload, request_id=request_id, trace_parent=span.trace_parent
                )
            except PollerError as exc:
                log.warning("Invoke %s: the event could not be stored: %s", function.name, exc)
                return errors.unavailable("The event could not be stored; try again.")
        return web.Response(status=202, headers={REQUEST_ID_HEADER: request_id})


def _sync_response(result: SyncResult, *, tail: bool) -> web.Response:
    headers = {
        REQUEST_ID_HEADER: result.request_id,
        "X-Amz-Executed-Version": LATEST,
        "Content-Type": result.content_type,
    }
    if result.function_error is not None:
        headers["X-Amz-Function-Error"] = result.function_error
    if tail:
        headers["X-Amz-Log-Result"] = result.log_result()
    return web.Response(status=200, body=result.payload, headers=headers)


async def _read_body(
    request: web.Request, limit: int, *, hashed: bool
) -> tuple[bytes | None, int, str | None]:
    """The body (None when longer than ``limit`` bytes), its size, and (if ``hashed``, for the
    signature) its SHA-256 in hex. The whole body is read, past the limit only counted (and
    hashed), so that the client gets its answer rather than a connection reset."""
    chunks: list[bytes] = []
    size = 0
    digest = hashlib.sha256() if hashed else None
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if digest is not None:
            digest.update(chunk)
        if size <= limit:
            chunks.append(chunk)
    body = b"".join(chunks) if size <= limit else None
    return body, size, digest.hexdigest() if digest is not None else None


def _client_context(header: str | None) -> dict[str, Any] | ApiError | None:
    """``X-Amz-Client-Context``: base64 of a JSON object, at most 3,583 bytes."""
    if header is None:
        return None
    try:
        if len(header) > CLIENT_CONTEXT_LIMIT:
            raise ValueError("too long")
        document = orjson.loads(base64.b64decode(header, validate=True))
    except (binascii.Error, ValueError):  # orjson.JSONDecodeError is a ValueError
        return errors.invalid_client_context()
    if not isinstance(document, dict):
        return errors.invalid_client_context()
    return document
