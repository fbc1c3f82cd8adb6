"""Poller's Python runtime: awslambdaric's loop over ``RuntimeApiConnection`` instead of its C
client, which must hand awslambdaric exactly what the C client does, and the orjson parse of the
events poller marks, which must give exactly what simplejson gives."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import simplejson
from test_environments import started
from test_runtime_api import invocation

from poller.runtime.environments.api import Response, RuntimeApi
from poller.runtime.environments.clients.bootstrap import ORJSON_FROM_BYTES, RuntimeApiConnection

# What awslambdaric's C client returns and posts, run in a process of its own: it reads
# AWS_LAMBDA_RUNTIME_API once, when the extension loads.
C_CLIENT = textwrap.dedent(
    """
    import json, sys
    from awslambdaric.lambda_runtime_client import runtime_client
    body, headers = runtime_client.next()
    if sys.argv[1] == "response":
        runtime_client.post_invocation_result(headers["Lambda-Runtime-Aws-Request-Id"], b'{"ok": 1}', "application/json", None)
    else:
        runtime_client.post_error(headers["Lambda-Runtime-Aws-Request-Id"], '{"errorType": "E", "errorMessage": "m"}', "{}", None)
    print(json.dumps([body.decode(), headers]))
    """
)


async def c_client(api: RuntimeApi, answer: str) -> tuple[str, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        C_CLIENT,
        answer,
        env={**os.environ, "AWS_LAMBDA_RUNTIME_API": api.address},
        stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    body, headers = json.loads(out)
    return body, headers


def connection_client(api: RuntimeApi, answer: str) -> tuple[str, dict[str, Any]]:
    connection = RuntimeApiConnection(api.address, "test")
    try:
        body, headers = connection.next()
        request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        if answer == "response":
            connection.post_invocation_result(request_id, b'{"ok": 1}', "application/json")
        else:
            connection.post_error(request_id, '{"errorType": "E", "errorMessage": "m"}', "{}")
    finally:
        connection.close()
    return body.decode(), headers


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {
            "trace_id": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            "client_context": '{"custom": {"k": "v"}}',
            "cognito_identity": '{"cognitoIdentityId": "id", "cognitoIdentityPoolId": "pool"}',
        },
    ],
    ids=["bare", "every-header"],
)
@pytest.mark.parametrize("answer", ["response", "error"])
async def test_the_connection_hands_awslambdaric_what_its_c_client_does(
    api: RuntimeApi, fields: dict[str, Any], answer: str
) -> None:
    results = []
    for request_id, client in (("by-c", "c"), ("by-connection", "connection")):
        future = api.submit(invocation(request_id, **fields))
        if client == "c":
            body, headers = await c_client(api, answer)
        else:
            body, headers = await asyncio.to_thread(connection_client, api, answer)
        results.append((body, headers, await asyncio.wait_for(future, 10)))
        api.finish()
    (c_body, c_headers, c_answer), (body, headers, answered) = results
    assert body == c_body
    assert headers.pop("Lambda-Runtime-Aws-Request-Id") == "by-connection"
    assert c_headers.pop("Lambda-Runtime-Aws-Request-Id") == "by-c"
    assert headers == c_headers
    assert answered == c_answer
    if answer == "response":
        assert answered == Response(b'{"ok": 1}', "application/json")


async def test_a_closed_api_fails_the_call_as_the_c_client_does(api: RuntimeApi) -> None:
    connection = RuntimeApiConnection(api.address, "test")
    waiting = asyncio.create_task(asyncio.to_thread(connection.next))
    await asyncio.wait_for(asyncio.shield(api.initialised), 10)
    await api.close()  # awslambdaric's loop ends on the RuntimeError, and the environment with it
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(waiting, 10)
    with pytest.raises(RuntimeError):
        connection.next()
    connection.close()


async def test_a_refused_answer_fails_the_next_call_as_the_c_client_s_post_would(api: RuntimeApi) -> None:
    """The connection sends an answer without waiting for its status (the next request reads it):
    an answer the API refuses still ends awslambdaric's loop, one call later."""
    connection = RuntimeApiConnection(api.address, "test")
    try:
        api.submit(invocation("r-1"))
        await asyncio.to_thread(connection.next)
        connection.post_invocation_result("not-r-1", b"{}", "application/json")  # 400 InvalidRequestID
        with pytest.raises(RuntimeError, match="Failed to post invocation response"):
            await asyncio.to_thread(connection.next)
    finally:
        connection.close()


async def test_answers_posted_without_waiting_are_taken_and_the_next_invocations_follow(
    api: RuntimeApi,
) -> None:
    connection = RuntimeApiConnection(api.address, "test")
    try:
        for request_id in ("r-1", "r-2"):
            answer = api.submit(invocation(request_id))
            body, headers = await asyncio.to_thread(connection.next)
            assert (body, headers["Lambda-Runtime-Aws-Request-Id"]) == (b'{"hello": "world"}', request_id)
            connection.post_error(request_id, '{"errorType": "E", "errorMessage": "m"}', "{}")
            failed = await asyncio.wait_for(answer, 10)
            assert (failed.error_type, failed.message) == ("E", "m")
            api.finish()
    finally:
        connection.close()


async def test_the_connection_speaks_over_poller_s_socket_pair_and_reopens_over_tcp(api: RuntimeApi) -> None:
    """The socket pair poller gives the environment (``RuntimeApi.channel``) carries the same
    requests as TCP; once it is closed, the next request goes to AWS_LAMBDA_RUNTIME_API."""
    connection = RuntimeApiConnection(api.address, "test", channel=await api.channel())
    families = []
    try:
        for request_id in ("over-the-pair", "over-tcp"):
            answer = api.submit(invocation(request_id))
            body, headers = await asyncio.to_thread(connection.next)
            assert connection._connection is not None
            families.append(socket.AddressFamily(connection._connection.family).name)
            assert (body, headers["Lambda-Runtime-Aws-Request-Id"]) == (b'{"hello": "world"}', request_id)
            connection.post_invocation_result(request_id, b'{"ok": 1}', "application/json")
            assert await asyncio.wait_for(answer, 10) == Response(b'{"ok": 1}', "application/json")
            api.finish()
            # The answer's 202 is read with the next request; a connection closed before that is
            # as one the API closed after its reply.
            connection.close()
    finally:
        connection.close()
    assert families == ["AF_UNIX", "AF_INET"]


EVENTS = [
    # Integers at and past 64 bits, which orjson would make floats of: such an event is never
    # marked, so simplejson parses it.
    {"big": 18446744073709551616, "small": -9223372036854775809, "max": 18446744073709551615},
    {"float": 1.5, "exp": 1e300, "negative_zero": -0.0, "int_like": 1e16, "nested": [{"a": [None, True]}]},
    {"text": 'caf\u00e9 \u2603 \U0001f600 "quoted" \\ \n\t', "empty": "", "list": []},
]


@pytest.mark.parametrize("event", EVENTS, ids=["big-integers", "floats", "strings"])
async def test_events_reach_the_handler_as_simplejson_parses_them(event: dict[str, Any]) -> None:
    event = {**event, "pad": "p" * ORJSON_FROM_BYTES}  # large enough for orjson, where marked
    payload = simplejson.dumps(event).encode()
    async with started(handler="envfn.echo") as function:
        # As the Invoke API hands it over (raw bytes, unmarked), then as a mapping does (orjson,
        # marked) where orjson can write it at all.
        answers = [await function.invoke_payload(payload)]
        if "big" not in event:
            answers.append(await function.invoke_payload(payload, int64_only=True))
    for marked, result in enumerate(answers):
        assert isinstance(result.answer, Response), result.answer
        echoed = simplejson.loads(result.answer.payload)
        assert echoed["event"] == simplejson.loads(payload)
        assert echoed["types"] == {key: type(value).__name__ for key, value in event.items()}
        assert echoed["orjson"] == bool(marked)  # simplejson parsed the unmarked one
