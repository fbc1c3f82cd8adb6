"""Events handed over through an environment's memory file (``environments/event_memory.py``):
only to a runtime that asks, only what fits, with the rest of ``/next`` unchanged, and the pages
of a large event given back."""

from __future__ import annotations

import asyncio
import mmap
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from support import open_files
from test_environments import started
from test_runtime_api import BASE, invocation

from poller.engine.outcome import InvocationError
from poller.runtime.environments.api import Response, RuntimeApi
from poller.runtime.environments.clients.bootstrap import RuntimeApiConnection
from poller.runtime.environments.event_memory import KEPT_BYTES, MEMORY_HEADER, SIZE, EventMemory

ASK = {MEMORY_HEADER: "1"}


@pytest.fixture
async def memory() -> AsyncIterator[EventMemory]:
    events = EventMemory.create()
    assert events is not None, "Linux has memfd_create"
    try:
        yield events
    finally:
        events.close()


@pytest.fixture
async def api(memory: EventMemory) -> AsyncIterator[RuntimeApi]:
    server = RuntimeApi(memory)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def reader(memory: EventMemory) -> Iterator[mmap.mmap]:
    """The file as the environment maps it."""
    view = mmap.mmap(memory.fd, 0, prot=mmap.PROT_READ)
    yield view
    view.close()


async def next_event(
    api: RuntimeApi, payload: bytes, headers: dict[str, str]
) -> tuple[dict[str, str], bytes]:
    api.submit(invocation(payload=payload))
    async with (
        aiohttp.ClientSession(f"http://{api.address}") as http,
        http.get(f"{BASE}/invocation/next", headers=headers) as response,
    ):
        assert response.status == 200
        return dict(response.headers), await response.read()


async def test_a_runtime_that_asks_gets_the_event_in_the_file_and_the_same_headers(
    api: RuntimeApi, reader: mmap.mmap
) -> None:
    payload = b'{"records": "' + b"x" * 150_000 + b'"}'
    headers, body = await next_event(api, payload, ASK)
    assert body == b""
    assert headers[MEMORY_HEADER] == str(len(payload))
    assert reader[: len(payload)] == payload
    assert headers["Lambda-Runtime-Aws-Request-Id"] == "r-1"
    assert headers["Content-Type"] == "application/json"


async def test_a_runtime_that_does_not_ask_gets_the_event_in_the_body(api: RuntimeApi) -> None:
    headers, body = await next_event(api, b'{"hello": "world"}', {})
    assert body == b'{"hello": "world"}'
    assert MEMORY_HEADER not in headers


async def test_an_event_larger_than_the_file_comes_in_the_body(api: RuntimeApi) -> None:
    payload = b'"' + b"x" * SIZE + b'"'
    headers, body = await next_event(api, payload, ASK)
    assert body == payload
    assert MEMORY_HEADER not in headers


async def test_the_pages_of_a_large_event_are_given_back_after_it(api: RuntimeApi, reader: mmap.mmap) -> None:
    payload = b'"' + b"x" * (3 * KEPT_BYTES) + b'"'
    await next_event(api, payload, ASK)
    assert reader[KEPT_BYTES : KEPT_BYTES + 4] == b"xxxx"
    api.finish()
    assert reader[:4] == b'"xxx', "what fits in the kept part stays"
    assert reader[KEPT_BYTES:] == bytes(SIZE - KEPT_BYTES), "the file holds no pages past the kept part"


async def test_poller_s_python_client_reads_events_from_the_file(
    api: RuntimeApi, memory: EventMemory
) -> None:
    payload = b'{"records": "' + b"y" * 150_000 + b'"}'
    with mmap.mmap(memory.fd, 0, prot=mmap.PROT_READ) as view:
        connection = RuntimeApiConnection(api.address, "test", view)
        try:
            for request_id in ("r-1", "r-2"):
                answer = api.submit(invocation(request_id, payload=payload))
                body, headers = await asyncio.to_thread(connection.next)
                assert (body, headers["Lambda-Runtime-Aws-Request-Id"]) == (payload, request_id)
                await asyncio.to_thread(
                    connection.post_invocation_result, request_id, b"1", "application/json"
                )
                assert await asyncio.wait_for(answer, 10) == Response(b"1", "application/json")
                api.finish()
        finally:
            connection.close()


def environment_files() -> list[str]:
    """The memory files and the ``/proc/PID/status`` files (memory.py) this process holds open."""
    return open_files(r"/memfd:poller-event|/proc/\d+/status$")


async def test_an_environment_s_files_are_closed_with_it_however_it_ends() -> None:
    before = environment_files()
    async with started(handler="envfn.describe") as function:
        await function.invoke({})
        assert len(environment_files()) == len(before) + 2, "a memory file and a status file per environment"
    assert environment_files() == before, "closed when the function stopped"
    async with started(handler="envfn.too_large") as function:
        failed = await function.invoke({})  # a 413: the environment is reset at once
        assert isinstance(failed, InvocationError)
        assert failed.error_type == "Function.ResponseSizeTooLarge"
        assert environment_files() == before, "closed when its environment was discarded"
