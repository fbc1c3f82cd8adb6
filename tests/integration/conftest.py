"""Fixtures of the integration tests that several modules share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness import BROKERS, BrokerHarness, harness_for


@pytest.fixture(params=BROKERS)
async def broker(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrokerHarness]:
    """A fresh harness of each source broker in turn (kafka, sqs, kinesis, rabbitmq)."""
    harness = harness_for(request.param, request, tmp_path)
    try:
        yield harness
    finally:
        await harness.close()
