"""Who may use the Invoke API (SPEC section 16): with ``admin.credentials`` only requests signed
(SigV4) with them, by boto3 or by curl, answered 403 as AWS answers otherwise; with only
``admin.token``, the bearer token, as every other admin endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError
from invoke_support import FUNCTIONS, REGION, invoke, lambda_client
from support import running

from poller.app import App
from poller.config import Config
from poller.connections.account import ACCOUNT_ID

KEY_ID, SECRET, TOKEN = "AKIDPOLLERADMIN", "the-admin-secret-access-key", "the-admin-token"


@pytest.fixture
async def signed_app(tmp_path: Path) -> AsyncIterator[App]:
    admin = {"port": 0, "token": TOKEN, "credentials": {"access_key_id": KEY_ID, "secret_access_key": SECRET}}
    async with running(Config.model_validate({"functions": FUNCTIONS, "admin": admin})) as app:
        yield app


def error_of(raised: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response: Any = raised.value.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


async def test_requests_signed_with_the_admin_credentials_are_the_only_ones_accepted(
    signed_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:echo"
    with lambda_client(signed_app, access_key_id=KEY_ID, secret_access_key=SECRET) as client:
        response = await invoke(client, FunctionName="echo", Payload=b'{"signed": true}')
        assert json.loads(response["Payload"])["event"] == {"signed": True}
        # Colons and the dollar sign are percent-encoded in the path and the query it signed.
        by_arn = await invoke(client, FunctionName=arn, Qualifier="$LATEST")
        assert by_arn["StatusCode"] == 200
    with lambda_client(
        signed_app, access_key_id=KEY_ID, secret_access_key=SECRET, region="eu-west-2"
    ) as client:
        # Any region's signature will do, and so will a function ARN of poller's own region.
        assert (await invoke(client, FunctionName="echo"))["StatusCode"] == 200
    with (
        lambda_client(signed_app, access_key_id=KEY_ID, secret_access_key="wrong") as client,
        pytest.raises(ClientError) as raised,
    ):
        await invoke(client, FunctionName="echo")
    assert error_of(raised) == (403, "InvalidSignatureException")
    with (
        lambda_client(signed_app, access_key_id="AKIDSOMEONEELSE", secret_access_key=SECRET) as client,
        pytest.raises(ClientError) as raised,
    ):
        await invoke(client, FunctionName="echo")
    assert error_of(raised) == (403, "UnrecognizedClientException")
    with (
        lambda_client(signed_app, signature_version=UNSIGNED) as client,
        pytest.raises(ClientError) as raised,
    ):
        await invoke(client, FunctionName="nope")
    assert error_of(raised) == (403, "MissingAuthenticationTokenException"), (
        "nothing is told before the check"
    )
    assert SECRET not in caplog.text


async def test_with_credentials_the_token_guards_the_other_endpoints_but_not_the_invoke_api(
    signed_app: App,
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{signed_app.admin.port}") as http:
        async with http.post(
            "/2015-03-31/functions/echo/invocations", data=b"{}", headers=bearer
        ) as response:
            assert response.status == 403
            assert response.headers["X-Amzn-ErrorType"] == "IncompleteSignatureException"
        async with http.post("/2015-03-31/functions/echo/invocations", data=b"{}") as response:
            assert response.status == 403
            assert response.headers["X-Amzn-ErrorType"] == "MissingAuthenticationTokenException"
        async with http.get("/mappings", headers=bearer) as response:
            assert response.status == 200
        async with http.get("/mappings") as response:
            assert response.status == 401


async def test_with_only_a_token_the_invoke_api_needs_the_bearer_token(tmp_path: Path) -> None:
    config = Config.model_validate({"functions": FUNCTIONS, "admin": {"port": 0, "token": TOKEN}})
    async with running(config) as app:
        with lambda_client(app) as client, pytest.raises(ClientError) as raised:
            await invoke(client, FunctionName="echo")
        assert error_of(raised)[0] == 401
        async with aiohttp.ClientSession(f"http://127.0.0.1:{app.admin.port}") as http:
            path = "/2015-03-31/functions/echo/invocations"
            async with http.post(
                path, data=b'{"a": 1}', headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert response.status == 200
                assert (await response.json())["event"] == {"a": 1}


async def test_curl_signs_requests_that_poller_accepts(signed_app: App) -> None:
    url = (
        f"http://127.0.0.1:{signed_app.admin.port}/2015-03-31/functions/echo/invocations?Qualifier=%24LATEST"
    )
    answers = []
    for secret in (SECRET, "wrong"):
        process = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "--aws-sigv4",
            "aws:amz:us-east-1:lambda",
            "--user",
            f"{KEY_ID}:{secret}",
            "-H",
            "Content-Type: application/json",
            "-d",
            '{"from": "curl"}',
            "-w",
            "\n%{http_code}",
            url,
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await asyncio.wait_for(process.communicate(), 30)
        body, _, status = stdout.decode().rpartition("\n")
        answers.append((status, json.loads(body)))
    (ok, accepted), (refused, _) = answers
    assert (ok, accepted["event"]) == ("200", {"from": "curl"})
    assert refused == "403"
