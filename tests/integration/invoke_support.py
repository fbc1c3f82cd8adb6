"""What the Invoke API tests share: the functions of their poller (handlers in ``invoke_handlers``)
and boto3's Lambda client on its admin address."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config as BotocoreConfig
from support import INTEGRATION

from poller.app import App

PYTHON = f"python3.{sys.version_info.minor}"  # poller's own interpreter
REGION = "us-east-1"


def function(handler: str, **settings: Any) -> dict[str, Any]:
    return {"runtime": PYTHON, "code": str(INTEGRATION), "handler": f"invoke_handlers.{handler}", **settings}


FUNCTIONS = {
    "echo": function("echo"),
    "fail": function("fail"),
    "exits": function("exits"),
    "throttled": function("echo", reserved_concurrent_executions=0),
    "single": function("held", reserved_concurrent_executions=1),
    "inline-echo": {"runtime": "inline", "handler": "invoke_handlers.echo"},
    "inline-fail": {"runtime": "inline", "handler": "invoke_handlers.fail"},
}


@contextmanager
def lambda_client(
    app: App,
    *,
    access_key_id: str = "AKIDPOLLERTEST",
    secret_access_key: str = "secret",
    region: str = REGION,
    **options: Any,
) -> Iterator[Any]:
    """boto3's Lambda client on the app's admin address, closed after the block; ``options`` go to
    botocore's Config. No retries: what poller answered is what the test sees."""
    client = boto3.client(
        "lambda",
        endpoint_url=f"http://127.0.0.1:{app.admin.port}",
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=BotocoreConfig(retries={"total_max_attempts": 1}, **options),
    )
    try:
        yield client
    finally:
        client.close()


async def invoke(client: Any, **arguments: Any) -> dict[str, Any]:
    """``client.invoke(**arguments)`` off the event loop that serves it, with its ``Payload`` read
    into bytes (which hands the connection back to the client's pool)."""

    def blocking() -> dict[str, Any]:
        response: dict[str, Any] = client.invoke(**arguments)
        response["Payload"] = response["Payload"].read()
        return response

    return await asyncio.to_thread(blocking)
