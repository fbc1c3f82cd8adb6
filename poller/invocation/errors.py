"""The Invoke API's error answers, shaped as AWS Lambda sends them so that SDKs raise their modelled
exceptions (``client.exceptions.ResourceNotFoundException``...).

An error is an HTTP status, its name in the ``X-Amzn-ErrorType`` header (where botocore's rest-json
parser looks first), and a JSON body: ``Type`` (``User`` or ``Service``), the message, and the
exception's own fields (TooManyRequestsException's ``Reason``). The message goes under the key
that Lambda's service model gives that exception: ``Message`` for ResourceNotFoundException and
ServiceException, ``message`` for the others. Errors that Lambda shares with every AWS service
(signature checks) carry ``message`` alone, as AWS sends them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import orjson
from aiohttp import web

from poller.invocation.sigv4 import SignatureRejected

ERROR_TYPE_HEADER = "X-Amzn-ErrorType"
REQUEST_ID_HEADER = "x-amzn-RequestId"
# The exceptions of Lambda's service model whose message member is capitalised.
_CAPITALISED_MESSAGE = frozenset({"ResourceNotFoundException", "ServiceException"})


@dataclass(frozen=True)
class ApiError:
    """One error answer of the Invoke API."""

    status: int
    code: str  # the exception's name
    message: str
    fault: Literal["User", "Service"] | None = "User"  # the body's Type; None: not in the body
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def message_key(self) -> str:
        return "Message" if self.code in _CAPITALISED_MESSAGE else "message"

    def document(self) -> dict[str, str]:
        body = {**self.fields}
        if self.fault is not None:
            body["Type"] = self.fault
        body[self.message_key] = self.message
        return body

    def response(self, request_id: str) -> web.Response:
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.document()),
            content_type="application/json",
            headers={ERROR_TYPE_HEADER: self.code, REQUEST_ID_HEADER: request_id},
        )


def function_not_found(arn: str) -> ApiError:
    return ApiError(404, "ResourceNotFoundException", f"Function not found: {arn}")


def invalid_json(detail: str) -> ApiError:
    return ApiError(
        400,
        "InvalidRequestContentException",
        f"Could not parse request body into json: Could not parse payload into json: {detail}",
    )


def invalid_client_context() -> ApiError:
    return ApiError(
        400, "InvalidRequestContentException", "Client context must be a valid Base64-encoded JSON object."
    )


def invalid_parameter(message: str) -> ApiError:
    return ApiError(400, "InvalidParameterValueException", message)


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "RequestTooLargeException",
        f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
    )


def throttled() -> ApiError:
    return ApiError(
        429,
        "TooManyRequestsException",
        "Rate Exceeded.",
        fields={"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"},
    )


def not_ready(name: str) -> ApiError:
    return ApiError(
        502, "ResourceNotReadyException", f"Function {name} is not ready: it is starting or shutting down."
    )


def unavailable(message: str) -> ApiError:
    return ApiError(503, "ServiceException", message, fault="Service")


def unauthorized(rejected: SignatureRejected) -> ApiError:
    return ApiError(403, rejected.code, rejected.message, fault=None)
