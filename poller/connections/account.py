"""The account and region that poller writes into ARNs and events where AWS would write its own.

Kept apart from :mod:`poller.connections.aws`, which imports the AWS SDK: the Kafka and RabbitMQ
events, the function runtime and the Invoke API need these two values and nothing of botocore,
and importing aiobotocore (with aiohttp) for them made a ``poller invoke`` take nearly twice as
long.
"""

from __future__ import annotations

import os

# The account of every ARN poller makes up for what has no AWS identity (SPEC section 5).
ACCOUNT_ID = "000000000000"


def default_region() -> str:
    """The region of the environment (AWS_REGION, AWS_DEFAULT_REGION), else us-east-1."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
