"""The Runtime API of one environment, spoken to with plain HTTP requests: every answer it gives."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from poller.engine.outcome import InvocationError
from poller.runtime.environments.api import (
    MAX_RESPONSE_BYTES,
    Invocation,
    Response,
    RuntimeApi,
)

BASE = "/2018-06-01/runtime"


@pytest.fixture
async def http(api: RuntimeApi) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(f"http://{api.address}") as session:
        yield session


def invocation(request_id: str = "r-1", payload: bytes = b'{"hello": "world"}', **fields: str) -> Invocation:
    return Invocation(
        request_id=request_id,
        payload=payload,
        deadline_ms=1_700_000_000_000,
        function_arn="arn:aws:lambda:us-east-1:000000000000:function:fn",
        **fields,
    )


async def take(http: aiohttp.ClientSession) -> tuple[int, dict[str, str], bytes]:
    async with http.get(f"{BASE}/invocation/next") as response:
        return response.status, dict(response.headers), await response.read()


async def post(
    http: aiohttp.ClientSession, path: str, body: bytes, **headers: str
) -> tuple[int, dict[str, str]]:
    # A file-like body: aiohttp warns about large bytes bodies, and warnings fail the tests.
    async with http.post(f"{BASE}{path}", data=io.BytesIO(body), headers=headers) as response:
        return response.status, json.loads(await response.read())


async def test_next_waits_for_work_and_hands_it_over_with_lambdas_headers(
    api: RuntimeApi, http: aiohttp.ClientSession
) -> None:
    waiting = asyncio.create_task(take(http))
    await asyncio.wait_for(asyncio.shield(api.initialised), 5)  # the first /next ends init
    assert not waiting.done()
    answer = api.submit(invocation(trace_id="Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"))
    status, headers, body = await asyncio.wait_for(waiting, 5)
    assert status == 200
    assert body == b'{"hello": "world"}'
    assert headers["Lambda-Runtime-Aws-Request-Id"] == "r-1"
    assert headers["Lambda-Runtime-Deadline-Ms"] == "1700000000000"
    assert headers["Lambda-Runtime-Invoked-Function-Arn"].endswith(":function:fn")
    assert headers["Lambda-Runtime-Trace-Id"].startswith("Root=1-5759e988-")
    # Headers without a value are not sent at all.
    assert "Lambda-Runtime-Client-Context" not in headers
    assert "Lambda-Runtime-Cognito-Identity" not in headers
    status, reply = await post(http, "/invocation/r-1/response", b'{"total": 12.50}')
    assert (status, reply) == (202, {"status": "OK"})
    assert await asyncio.wait_for(answer, 5) == Response(b'{"total": 12.50}', "application/octet-stream")


async def test_work_submitted_before_next_is_taken_at_once(
    api: RuntimeApi, http: aiohttp.ClientSession
) -> None:
    api.submit(
        invocation(client_context='{"custom": {"a": 1}}', cognito_identity='{"cognitoIdentityId": "i"}')
    )
    status, headers, _ = await asyncio.wait_for(take(http), 5)
    assert status == 200
    assert json.loads(headers["Lambda-Runtime-Client-Context"]) == {"custom": {"a": 1}}
    assert json.loads(headers["Lambda-Runtime-Cognito-Identity"]) == {"cognitoIdentityId": "i"}


async def test_unknown_and_answered_request_ids_get_400(api: RuntimeApi, http: aiohttp.ClientSession) -> None:
    api.submit(invocation())
    await take(http)
    assert await post(http, "/invocation/other/response", b"{}") == (
        400,
        {"errorMessage": "Invalid request ID", "errorType": "InvalidRequestID"},
    )
    assert (await post(http, "/invocation/r-1/response", b"1"))[0] == 202
    assert (await post(http, "/invocation/r-1/response", b"2"))[0] == 400
    assert (await post(http, "/invocation/r-1/error", b"{}"))[0] == 400


async def test_an_answer_after_finish_gets_400(api: RuntimeApi, http: aiohttp.ClientSession) -> None:
    api.submit(invocation())
    await take(http)
    api.finish()  # the environment gave up on it (a timeout)
    assert (await post(http, "/invocation/r-1/response", b"{}"))[0] == 400


async def test_a_response_over_six_mib_gets_413_and_fails_the_invocation(
    api: RuntimeApi, http: aiohttp.ClientSession
) -> None:
    answer = api.submit(invocation())
    await take(http)
    status, reply = await post(http, "/invocation/r-1/response", b"x" * (MAX_RESPONSE_BYTES + 1))
    assert status == 413
    assert reply["errorType"] == "RequestEntityTooLarge"
    error = await asyncio.wait_for(answer, 5)
    assert isinstance(error, InvocationError)
    assert error.error_type == "Function.ResponseSizeTooLarge"
    assert f"({MAX_RESPONSE_BYTES + 1} bytes)" in error.message


async def test_a_response_at_the_limit_is_accepted(api: RuntimeApi, http: aiohttp.ClientSession) -> None:
    answer = api.submit(invocation())
    await take(http)
    assert (await post(http, "/invocation/r-1/response", b"x" * MAX_RESPONSE_BYTES))[0] == 202
    result = await asyncio.wait_for(answer, 5)
    assert isinstance(result, Response)
    assert len(result.payload) == MAX_RESPONSE_BYTES


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (
            b'{"errorMessage": "boom", "errorType": "ValueError", "stackTrace": ["  File x"]}',
            {},
            InvocationError("ValueError", "boom", ["  File x"]),
        ),
        (  # Node's client sends the stack as "trace"
            b'{"errorMessage": "bad", "errorType": "TypeError", "trace": ["TypeError: bad", "    at f"]}',
            {},
            InvocationError("TypeError", "bad", ["TypeError: bad", "    at f"]),
        ),
        (
            b"not json",
            {"Lambda-Runtime-Function-Error-Type": "Custom.Error"},
            InvocationError("Custom.Error", "not json"),
        ),
        (b"", {}, InvocationError("Runtime.Unknown", "")),
    ],
)
async def test_an_error_gets_202_and_is_read_from_the_body(
    api: RuntimeApi,
    http: aiohttp.ClientSession,
    body: bytes,
    headers: dict[str, str],
    expected: InvocationError,
) -> None:
    answer = api.submit(invocation())
    await take(http)
    assert await post(http, "/invocation/r-1/error", body, **headers) == (202, {"status": "OK"})
    assert await asyncio.wait_for(answer, 5) == expected


async def test_init_error_is_accepted_during_init_and_refused_after(api: RuntimeApi) -> None:
    async with aiohttp.ClientSession(f"http://{api.address}") as http:
        body = b'{"errorMessage": "Unable to import module", "errorType": "Runtime.ImportModuleError"}'
        assert await post(http, "/init/error", body) == (202, {"status": "OK"})
        failure = await asyncio.wait_for(asyncio.shield(api.init_failed), 5)
        assert failure.error_type == "Runtime.ImportModuleError"
        status, reply = await post(http, "/init/error", body)
        assert status == 403
        assert reply["errorType"] == "InvalidStateTransition"
        # After a failed init the runtime may not ask for work either.
        assert (await take(http))[0] == 403


async def test_init_error_after_the_first_next_is_403(api: RuntimeApi, http: aiohttp.ClientSession) -> None:
    api.submit(invocation())
    await take(http)
    status, reply = await post(http, "/init/error", b"{}")
    assert (status, reply["errorType"]) == (403, "InvalidStateTransition")


async def test_next_while_another_waits_or_before_answering_is_403(
    api: RuntimeApi, http: aiohttp.ClientSession
) -> None:
    first = asyncio.create_task(take(http))
    await asyncio.wait_for(asyncio.shield(api.initialised), 5)
    async with aiohttp.ClientSession(f"http://{api.address}") as other:
        assert (await take(other))[0] == 403
        api.submit(invocation())
        assert (await asyncio.wait_for(first, 5))[0] == 200
        # The invocation is not answered yet: one at a time.
        assert (await take(other))[0] == 403
        with pytest.raises(RuntimeError, match="one invocation at a time"):
            api.submit(invocation("r-2"))


async def test_unknown_paths_get_404_and_wrong_methods_405(http: aiohttp.ClientSession) -> None:
    async with http.get("/2018-06-01/runtime/invocation/r-1/nothing") as response:
        assert response.status == 404
    async with http.get("/2015-03-31/functions/fn/invocations") as response:
        assert response.status == 404
    async with http.post(f"{BASE}/invocation/next") as response:
        assert response.status == 405
    async with http.get(f"{BASE}/invocation/r-1/response") as response:
        assert response.status == 405
    async with http.get(f"{BASE}/init/error") as response:
        assert response.status == 405


async def test_close_ends_a_waiting_next() -> None:
    api = RuntimeApi()
    await api.start()
    async with aiohttp.ClientSession(f"http://{api.address}") as http:
        waiting = asyncio.create_task(take(http))
        await asyncio.wait_for(asyncio.shield(api.initialised), 5)
        await api.close()
        try:
            status = (await asyncio.wait_for(waiting, 5))[0]
        except aiohttp.ClientError:
            status = None  # the connection went away: the runtime exits either way
        assert status in (410, None)


# --- HTTP as the runtimes speak it: raw requests on one connection -------------------------------


class Raw:
    """A connection that sends bytes as written and reads the replies one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode().split("\r\n")[:-2]
        headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body


@pytest.fixture
async def raw(api: RuntimeApi) -> AsyncIterator[Raw]:
    host, port = api.address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield Raw(reader, writer)
    finally:
        writer.close()


NEXT = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: api\r\n\r\n"


async def test_a_chunked_response_body_is_read_whole(api: RuntimeApi, raw: Raw) -> None:
    answer = api.submit(invocation())
    await raw.send(NEXT)
    assert (await raw.reply())[0] == 200
    await raw.send(
        b"POST /2018-06-01/runtime/invocation/r-1/response HTTP/1.1\r\nHost: api\r\n"
        b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        b"5\r\n[1, 2\r\n4\r\n, 3]\r\n0\r\n\r\n"
    )
    assert (await raw.reply())[:1] == (202,)
    assert await asyncio.wait_for(answer, 5) == Response(b"[1, 2, 3]", "application/json")


async def test_expect_100_continue_is_answered_before_the_body_is_sent(api: RuntimeApi, raw: Raw) -> None:
    """curl sends a large body only after the server's ``100 Continue``."""
    answer = api.submit(invocation())
    await raw.send(NEXT)
    await raw.reply()
    body = b'"' + b"x" * 2_000_000 + b'"'
    await raw.send(
        b"POST /2018-06-01/runtime/invocation/r-1/response HTTP/1.1\r\nHost: api\r\n"
        b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    status, _, _ = await raw.reply()
    assert status == 100
    await raw.send(body)
    assert (await raw.reply())[0] == 202
    assert (await asyncio.wait_for(answer, 5)).payload == body  # type: ignore[union-attr]


async def test_requests_sent_at_once_are_answered_in_order(api: RuntimeApi, raw: Raw) -> None:
    """A /next sent right behind an answer (pipelined) waits its turn, then waits for work."""
    answer = api.submit(invocation())
    await raw.send(NEXT)
    await raw.reply()
    await raw.send(
        b"POST /2018-06-01/runtime/invocation/r-1/response HTTP/1.1\r\nHost: api\r\n"
        b"Content-Length: 2\r\n\r\n{}" + NEXT
    )
    assert await asyncio.wait_for(answer, 5) == Response(b"{}", "application/json")
    api.finish()
    api.submit(invocation("r-2"))
    assert (await raw.reply())[0] == 202
    status, headers, _ = await raw.reply()
    assert (status, headers["lambda-runtime-aws-request-id"]) == (200, "r-2")


async def test_an_answers_202_goes_with_the_next_invocation_when_a_next_waits_behind_it(
    api: RuntimeApi,
) -> None:
    """One write, so one wake-up of the runtime, for the 202 and the invocation it waits for; an
    answer with nothing behind it gets its 202 at once."""
    host, port = api.address.split(":")
    connection = socket.create_connection((host, int(port)))
    connection.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        answer = api.submit(invocation())
        await loop.sock_sendall(connection, NEXT)
        assert await statuses_read(connection, 1) == [200]
        post = b"POST /2018-06-01/runtime/invocation/r-1/response HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
        await loop.sock_sendall(connection, post + NEXT)
        await asyncio.wait_for(answer, 5)
        # Loopback delivers what poller writes before its write returns: nothing came.
        with pytest.raises(BlockingIOError):
            connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        api.finish()
        api.submit(invocation("r-2"))
        assert await statuses_read(connection, 2) == [202, 200]
        await loop.sock_sendall(connection, post.replace(b"r-1", b"r-2"))
        assert await statuses_read(connection, 1) == [202]
    finally:
        connection.close()


async def test_only_an_answers_202_waits_for_the_next_behind_it(api: RuntimeApi, raw: Raw) -> None:
    await raw.send(b"GET /2018-06-01/runtime/nothing HTTP/1.1\r\nHost: api\r\n\r\n" + NEXT)
    assert (await raw.reply())[0] == 404, "written at once, with the /next still waiting for work"


async def statuses_read(connection: socket.socket, count: int) -> list[int]:
    """The statuses of the next ``count`` replies on a non-blocking socket."""
    loop = asyncio.get_running_loop()
    data, statuses = b"", []
    while len(statuses) < count:
        head, found, rest = data.partition(b"\r\n\r\n")
        if found:
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            if len(rest) >= length:
                statuses.append(int(head.split(b" ")[1]))
                data = rest[length:]
                continue
        chunk = await asyncio.wait_for(loop.sock_recv(connection, 65536), 5)
        assert chunk, "the API closed the connection"
        data += chunk
    return statuses


async def test_http_1_0_and_connection_close_end_the_connection_after_the_reply(
    api: RuntimeApi, raw: Raw
) -> None:
    await raw.send(b"GET /2018-06-01/runtime/nothing HTTP/1.0\r\n\r\n")
    status, headers, _ = await raw.reply()
    assert (status, headers["connection"]) == (404, "close")
    assert await asyncio.wait_for(raw.reader.read(), 5) == b"", "closed by the API"


async def test_a_malformed_request_gets_400_and_the_connection_is_closed(raw: Raw) -> None:
    await raw.send(b"NOT HTTP AT ALL\r\n\r\n")
    status, _, body = await raw.reply()
    assert (status, json.loads(body)["errorType"]) == (400, "InvalidRequest")
    assert await asyncio.wait_for(raw.reader.read(), 5) == b""


async def test_header_values_cannot_break_the_reply(api: RuntimeApi, raw: Raw) -> None:
    api.submit(invocation(client_context='{"custom":\r\n {"a": 1}}'))
    await raw.send(NEXT)
    status, headers, body = await raw.reply()
    assert status == 200
    assert json.loads(headers["lambda-runtime-client-context"]) == {"custom": {"a": 1}}
    assert body == b'{"hello": "world"}'
