"""Client errors become poller's own at the boundary, once, with the same retryability everywhere:
a transient network error is retriable on every source; refused credentials and missing resources
stop a mapping at start, and are retried at run time (they may be repaired meanwhile)."""

from __future__ import annotations

import aiohttp
import pytest
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from poller.connections import aws, kafka


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "no"}}, "ReceiveMessage")


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectionError("reset"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        client_error("ThrottlingException"),
        client_error("InternalError"),
    ],
    ids=type,
)
def test_transient_aws_errors_are_retriable_at_start_and_later(error: Exception) -> None:
    assert isinstance(error, aws.AWS_ERRORS)
    assert aws.source_error("call", error, fatal_codes=frozenset({"QueueDoesNotExist"})).retriable
    assert aws.source_error("call", error).retriable


@pytest.mark.parametrize(
    "error",
    [
        client_error("AccessDeniedException"),
        client_error("UnrecognizedClientException"),
        NoCredentialsError(),
    ],
    ids=aws.error_code,
)
def test_refused_credentials_stop_at_start_and_are_retried_later(error: Exception) -> None:
    assert not aws.source_error("call", error, fatal_codes=frozenset()).retriable
    assert aws.source_error("call", error).retriable


def test_a_code_the_caller_names_is_fatal_at_start_and_the_message_carries_it() -> None:
    error = aws.source_error(
        "SQS lookup failed", client_error("QueueDoesNotExist"), fatal_codes=frozenset({"QueueDoesNotExist"})
    )
    assert not error.retriable
    assert str(error) == "SQS lookup failed: QueueDoesNotExist: no"


def test_kafka_errors_keep_aiokafkas_retryability() -> None:
    assert kafka.source_error("fetch", KafkaConnectionError("gone")).retriable
    assert not kafka.source_error("fetch", TopicAuthorizationFailedError()).retriable
