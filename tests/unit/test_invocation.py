"""The Invoke API's parts without a running poller: SigV4 checks against requests that botocore's
own signer signed, the error answers against botocore's Lambda model and parser, which function a
FunctionName names, the error documents, and invocations that may not wait for concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import botocore.session
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.parsers import create_parser
from multidict import CIMultiDict
from support import started_function, wait_for

from poller.config import Function
from poller.engine.outcome import InvocationError
from poller.errors import Throttled
from poller.invocation import errors
from poller.invocation.api import InvokeApi
from poller.invocation.errors import ApiError
from poller.invocation.names import resolve
from poller.invocation.sigv4 import SignatureVerifier
from poller.invocation.sync import error_document, invoke_sync
from poller.runtime.function import FunctionRuntime

FIXTURES = Path(__file__).parent / "fixtures"
PYTHON_CODE = FIXTURES / "environments" / "python"
PYTHON = f"python3.{sys.version_info.minor}"
KEY, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
HOST = "127.0.0.1:8080"
ARN_PATH = "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Aecho/invocations"


@pytest.fixture(autouse=True)
def _fixtures_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(FIXTURES))


# --- SigV4 ---------------------------------------------------------------------------------------


def signed(
    body: bytes = b'{"a": 1}',
    *,
    path: str = ARN_PATH,
    query: str = "Qualifier=%24LATEST",
    key: str = KEY,
    secret: str = SECRET,
    service: str = "lambda",
    region: str = "eu-west-1",
) -> tuple[str, CIMultiDict[str]]:
    """A request as botocore signs it (now): its path and query, and its headers as received."""
    request = AWSRequest(
        method="POST",
        url=f"http://{HOST}{path}?{query}",
        data=body,
        headers={
            "Host": HOST,
            "X-Amz-Invocation-Type": "RequestResponse",
            "Content-Type": "application/json",
        },
    )
    SigV4Auth(Credentials(key, secret), service, region).add_auth(request)
    return f"{path}?{query}", CIMultiDict(request.headers.items())


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def verify(raw_path: str, headers: CIMultiDict[str], body: bytes = b'{"a": 1}', **options: Any) -> str | None:
    rejected = SignatureVerifier(KEY, SECRET, **options).verify("POST", raw_path, headers, sha256(body))
    return None if rejected is None else f"{rejected.code}: {rejected.message}"


def test_a_request_botocore_signed_with_the_key_is_accepted_in_any_region() -> None:
    assert verify(*signed()) is None
    assert verify(*signed(region="ap-southeast-2", query="")) is None
    raw_path, headers = signed()
    headers["User-Agent"] = "added after signing"  # not a signed header: it does not matter
    assert verify(raw_path, headers) is None


def test_whatever_was_signed_cannot_change() -> None:
    raw_path, headers = signed()
    assert verify(raw_path, headers, b'{"a": 2}').startswith(
        "InvalidSignatureException: The request signature"
    )
    other = raw_path.replace("echo", "other")
    assert verify(other, headers).startswith("InvalidSignatureException")
    assert verify(raw_path.replace("%24LATEST", "1"), headers).startswith("InvalidSignatureException")
    changed = headers.copy()
    changed["X-Amz-Invocation-Type"] = "Event"
    assert verify(raw_path, changed).startswith("InvalidSignatureException")
    declared = headers.copy()
    declared["X-Amz-Content-SHA256"] = sha256(b"something else")
    assert verify(raw_path, declared).startswith(
        "InvalidSignatureException: The provided 'x-amz-content-sha256'"
    )


def test_another_secret_or_key_or_service_is_refused_as_aws_refuses_it() -> None:
    assert verify(*signed(secret="not the secret")).startswith("InvalidSignatureException")
    assert verify(*signed(key="AKIDSOMEONEELSE")) == (
        "UnrecognizedClientException: The security token included in the request is invalid."
    )
    assert verify(*signed(service="s3")) == (
        "InvalidSignatureException: Credential should be scoped to correct service: 'lambda'."
    )
    raw_path, headers = signed()
    headers["X-Amz-Security-Token"] = "a-session"
    assert verify(raw_path, headers).startswith("UnrecognizedClientException")


def test_a_signature_more_than_15_minutes_off_is_refused() -> None:
    raw_path, headers = signed()
    assert verify(raw_path, headers, clock=lambda: time.time() + 14 * 60) is None
    expired = verify(raw_path, headers, clock=lambda: time.time() + 16 * 60)
    assert expired is not None
    assert expired.startswith(
        f"InvalidSignatureException: Signature expired: {headers['X-Amz-Date']} is now earlier than"
    )
    early = verify(raw_path, headers, clock=lambda: time.time() - 16 * 60)
    assert early is not None
    assert early.startswith("InvalidSignatureException: Signature not yet current")


def test_requests_without_a_complete_signature_are_refused() -> None:
    raw_path, headers = signed()
    for name, value, expected in [
        ("Authorization", None, "MissingAuthenticationTokenException: Missing Authentication Token"),
        ("Authorization", "Bearer a-token", "IncompleteSignatureException: Authorization header must use"),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=ab",
            "IncompleteSignatureException: Credential must have",
        ),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Signature=ab",
            "IncompleteSignatureException: Authorization header requires 'Credential'",
        ),
        ("X-Amz-Date", None, "IncompleteSignatureException: Authorization header requires existence of"),
    ]:
        changed = headers.copy()
        del changed[name]
        if value is not None:
            changed[name] = value
        result = verify(raw_path, changed)
        assert result is not None
        assert result.startswith(expected), result
    assert ";host;" in headers["Authorization"]
    unsigned_host = headers.copy()
    unsigned_host["Authorization"] = headers["Authorization"].replace(";host;", ";")
    assert verify(raw_path, unsigned_host) == (
        "InvalidSignatureException: 'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
    )


# --- error answers -------------------------------------------------------------------------------

ANSWERS = [
    errors.function_not_found("arn:aws:lambda:us-east-1:000000000000:function:nope"),
    errors.invalid_json("unexpected character"),
    errors.invalid_client_context(),
    errors.invalid_parameter("bad value"),
    errors.too_large(6 * 1024 * 1024),
    errors.throttled(),
    errors.not_ready("fn"),
    errors.unavailable("no queue"),
]


@pytest.mark.parametrize("answer", ANSWERS, ids=lambda answer: answer.code)
def test_every_error_answer_is_lambdas_modelled_exception_as_botocore_parses_it(answer: ApiError) -> None:
    model = botocore.session.get_session().get_service_model("lambda")
    shape = model.shape_for_error_code(answer.code)
    assert shape is not None, f"{answer.code} is one of Lambda's modelled errors"
    assert shape.metadata["error"]["httpStatusCode"] in (answer.status, 500), (
        "its status (503 for ServiceException)"
    )
    assert set(answer.document()) <= set(shape.members), "every field of the body is a member of the shape"
    response = answer.response("request-1")
    raw = {
        "status_code": response.status,
        "headers": {name.lower(): value for name, value in response.headers.items()},
        "body": response.body,
    }
    parser = create_parser("rest-json")
    parsed = parser.parse(raw, model.operation_model("Invoke").output_shape)
    parsed.update(parser.parse(raw, shape))  # botocore adds the modelled fields so
    assert parsed["Error"] == {"Code": answer.code, "Message": answer.message}
    assert parsed["ResponseMetadata"]["RequestId"] == "request-1"
    for name, value in answer.fields.items():
        assert parsed[name] == value


def test_signature_refusals_are_403s_with_their_aws_name() -> None:
    raw_path, headers = signed()
    rejected = SignatureVerifier(KEY, "other").verify("POST", raw_path, headers, sha256(b'{"a": 1}'))
    assert rejected is not None
    answer = errors.unauthorized(rejected)
    assert (answer.status, answer.code, answer.document()) == (
        403,
        "InvalidSignatureException",
        {"message": rejected.message},
    )


# --- which function ------------------------------------------------------------------------------


def functions(*names: str) -> dict[str, FunctionRuntime]:
    config = Function.model_validate({"runtime": "inline", "handler": "handlers_for_tests:describe_context"})
    return {name: FunctionRuntime(name, config, region="us-east-1") for name in names}


@pytest.mark.parametrize(
    ("function_name", "qualifier", "found"),
    [
        ("echo", None, "echo"),
        ("echo", "$LATEST", "echo"),
        ("echo:$LATEST", None, "echo"),
        ("000000000000:function:echo", None, "echo"),
        ("arn:aws:lambda:us-east-1:000000000000:function:echo", None, "echo"),
        ("arn:aws:lambda:us-east-1:000000000000:function:echo:$LATEST", "$LATEST", "echo"),
        ("a:b", None, "a:b"),  # a name of poller's that looks qualified is a name first
        ("echo", "1", "Function not found: arn:aws:lambda:us-east-1:000000000000:function:echo:1"),
        ("echo:prod", None, "Function not found: arn:aws:lambda:us-east-1:000000000000:function:echo:prod"),
        (
            "arn:aws:lambda:eu-west-1:000000000000:function:echo",
            None,
            "Function not found: arn:aws:lambda:eu-west-1:000000000000:function:echo",
        ),
        (
            "123456789012:function:echo",
            None,
            "Function not found: arn:aws:lambda:us-east-1:123456789012:function:echo",
        ),
        ("nope", None, "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope"),
        (
            "echo:$LATEST",
            "1",
            "The derived qualifier from the function name does not match the specified qualifier.",
        ),
    ],
)
def test_function_names_partial_arns_arns_and_qualifiers(
    function_name: str, qualifier: str | None, found: str
) -> None:
    resolved = resolve(functions("echo", "a:b"), function_name, qualifier, default_region="us-east-1")
    assert (resolved.name if isinstance(resolved, FunctionRuntime) else resolved.message) == found


# --- error documents -----------------------------------------------------------------------------


def test_the_error_document_is_the_runtimes_own_else_lambdas() -> None:
    posted = b'{"errorMessage":"boom","errorType":"ValueError","requestId":"r","stackTrace":[]}'
    assert error_document(InvocationError("ValueError", "boom", [], document=posted), "r") == posted
    assert orjson.loads(
        error_document(InvocationError("Sandbox.Timedout", "Task timed out after 3.00 seconds"), "r")
    ) == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": "RequestId: r Error: Task timed out after 3.00 seconds",
    }
    assert orjson.loads(error_document(InvocationError("KeyError", "'x'", ["  File a.py"]), "r")) == {
        "errorMessage": "'x'",
        "errorType": "KeyError",
        "requestId": "r",
        "stackTrace": ["  File a.py"],
    }


# --- invocations that may not wait ---------------------------------------------------------------


async def test_an_inline_invocation_that_may_not_wait_is_throttled_while_waiting_ones_queue() -> None:
    import handlers_for_tests

    handlers_for_tests.RELEASE = asyncio.Event()
    function = FunctionRuntime(
        "fn",
        Function.model_validate(
            {"runtime": "inline", "handler": "handlers_for_tests:hold", "reserved_concurrent_executions": 1}
        ),
    )
    first = asyncio.create_task(function.invoke({}))
    await wait_for(lambda: handlers_for_tests.HELD == 1, message="the first invocation runs")
    with pytest.raises(Throttled):
        await invoke_sync(function, b"{}")
    waiting = asyncio.create_task(function.invoke({}))  # a mapping's invocation waits for the slot
    handlers_for_tests.RELEASE.set()
    assert await first == "released"
    assert await waiting == "released"
    assert (await invoke_sync(function, b"{}")).payload == b'"released"'


@pytest.fixture
async def single_environment() -> AsyncIterator[FunctionRuntime]:
    settings = {"runtime": PYTHON, "code": str(PYTHON_CODE), "handler": "envfn.slow"}
    async with started_function("fn", {**settings, "reserved_concurrent_executions": 1}) as function:
        yield function


async def test_an_environment_invocation_that_may_not_wait_is_throttled_while_waiting_ones_queue(
    single_environment: FunctionRuntime,
) -> None:
    function = single_environment
    assert function.pool is not None
    pool = function.pool
    first = asyncio.create_task(function.invoke({"seconds": 0.3}))
    await wait_for(lambda: pool.environments(), message="the first invocation took the one slot")
    with pytest.raises(Throttled):
        await invoke_sync(function, b'{"seconds": 0}')
    waiting = await function.invoke({"seconds": 0})
    assert (await first)["ended"] <= waiting["started"], "the waiting invocation ran after the first"
    assert json.loads((await invoke_sync(function, b'{"seconds": 0}')).payload)["pid"] == waiting["pid"]


async def test_a_function_not_started_or_closed_is_not_ready_for_the_api() -> None:
    config = Function.model_validate({"runtime": PYTHON, "code": str(PYTHON_CODE), "handler": "envfn.slow"})
    function = FunctionRuntime("fn", config)
    app = web.Application()
    InvokeApi({"fn": function}).add_routes(app.router)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/2015-03-31/functions/fn/invocations", data=b"{}")
        assert response.status == 502
        assert response.headers["X-Amzn-ErrorType"] == "ResourceNotReadyException"
        bad_type = await client.post(
            "/2015-03-31/functions/fn/invocations", data=b"{}", headers={"X-Amz-Invocation-Type": "Sometimes"}
        )
        assert bad_type.status == 400
        assert bad_type.headers["X-Amzn-ErrorType"] == "InvalidParameterValueException"
    await function.close()


def test_poller_invoke_of_a_throttled_function_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "poller.yaml"
    path.write_text(
        json.dumps(
            {
                "functions": {
                    "fn": {
                        "runtime": "inline",
                        "handler": "handlers_for_tests:hold",
                        "reserved_concurrent_executions": 0,
                    }
                }
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "poller", "invoke", "fn", "-c", str(path)],
        input="{}",
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": f"{FIXTURES}:{Path(__file__).resolve().parents[2]}", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 1
    assert "functions.fn: throttled" in done.stderr
