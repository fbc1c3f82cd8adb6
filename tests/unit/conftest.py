"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from poller.runtime.environments.api import RuntimeApi


@pytest.fixture
async def api() -> AsyncIterator[RuntimeApi]:
    """An environment's Runtime API, listening on loopback."""
    server = RuntimeApi()
    await server.start()
    try:
        yield server
    finally:
        await server.close()
