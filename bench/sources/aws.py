"""What the SQS and Kinesis benches share: an aiobotocore client against a local endpoint."""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager
from typing import Any

from aiobotocore.session import get_session

REGION = "us-east-1"


def use_test_credentials() -> None:
    """Stand-ins accept any credentials; the contenders' processes inherit these."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", REGION)


def client(service: str, endpoint: str) -> AbstractAsyncContextManager[Any]:
    return get_session().create_client(service, region_name=REGION, endpoint_url=endpoint)  # type: ignore[no-any-return]
