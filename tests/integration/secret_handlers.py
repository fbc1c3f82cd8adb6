"""A handler for the secrets test: its error quotes secrets, as careless handler code does."""

from __future__ import annotations

import os
from typing import Any


def leaky(event: dict[str, Any], context: Any) -> None:
    """Fail every batch with an error that names a URL with a password and a configured secret."""
    raise RuntimeError(
        f"cannot log in to amqp://app:{os.environ['HANDLER_URL_PASSWORD']}@db.internal/ "
        f"nor with {os.environ['KAFKA_SASL_PASSWORD']}"
    )
