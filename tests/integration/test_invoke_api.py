"""The Lambda Invoke API on poller's admin server (SPEC section 13), driven by AWS's own clients:
boto3 and the AWS CLI against a running poller, its functions in execution environments (and one
inline). What the handlers saw comes back in their responses (``invoke_handlers``)."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from invoke_support import FUNCTIONS, REGION, invoke, lambda_client
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import running, wait_for

from poller.app import App
from poller.config import Config
from poller.connections.account import ACCOUNT_ID
from poller.observability.tracing import Telemetry


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    config = Config.model_validate(
        {
            "functions": FUNCTIONS,
            "admin": {"port": 0},
            "async_queue": {"type": "sqlite", "path": str(tmp_path / "async.db")},
        }
    )
    async with running(config) as app:
        yield app


@pytest.fixture
def client(app: App) -> Iterator[Any]:
    with lambda_client(app) as client:
        yield client


async def test_a_synchronous_invoke_returns_the_response_the_log_tail_and_the_client_context(
    client: Any,
) -> None:
    client_context = {"custom": {"tenant": "acme"}, "env": {"locale": "en"}, "client": {"app_title": "shop"}}
    response = await invoke(
        client,
        FunctionName="echo",
        Payload=json.dumps({"order": 1}).encode(),
        LogType="Tail",
        ClientContext=base64.b64encode(json.dumps(client_context).encode()).decode(),
    )
    assert response["StatusCode"] == 200
    assert response["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in response
    seen = json.loads(response["Payload"])
    assert seen["event"] == {"order": 1}
    assert seen["function_arn"] == f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:echo"
    assert (seen["custom"], seen["env"], seen["app_title"]) == ({"tenant": "acme"}, {"locale": "en"}, "shop")
    request_id = seen["request_id"]
    assert response["ResponseMetadata"]["RequestId"] == request_id, "the invocation's id is the request's"
    lines = base64.b64decode(response["LogResult"]).decode().splitlines()
    assert lines[0] == f"START RequestId: {request_id} Version: $LATEST"
    assert f"echo handling {request_id}" in lines, "what the handler printed"
    assert lines[-1].startswith(f"REPORT RequestId: {request_id}\tDuration: ")
    assert "Init Duration: " in lines[-1], "the first invocation was a cold start"
    again = await invoke(client, FunctionName="echo")
    assert "LogResult" not in again
    assert json.loads(again["Payload"])["event"] == {}, "an empty payload is {}, as on Lambda"


async def test_a_raising_handler_answers_200_with_unhandled_and_its_error_document_also_by_arn(
    client: Any,
) -> None:
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:fail"
    for name in (arn, f"{arn}:$LATEST", f"{ACCOUNT_ID}:function:fail"):
        response = await invoke(client, FunctionName=name, Payload=b'{"order": 7}')
        assert response["StatusCode"] == 200
        assert response["FunctionError"] == "Unhandled"
        document = json.loads(response["Payload"])
        assert document["errorType"] == "ValueError"
        assert document["errorMessage"] == "cannot handle 7"
        assert any("invoke_handlers.py" in line for line in document["stackTrace"])
        assert document["requestId"] == response["ResponseMetadata"]["RequestId"]


async def test_an_environment_that_exits_is_a_runtime_exit_error_document(client: Any) -> None:
    response = await invoke(client, FunctionName="exits")
    assert response["FunctionError"] == "Unhandled"
    request_id = response["ResponseMetadata"]["RequestId"]
    assert json.loads(response["Payload"]) == {
        "errorType": "Runtime.ExitError",
        "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: exit status 4",
    }


async def test_refusals_raise_the_modelled_exceptions_of_boto3(client: Any) -> None:
    with pytest.raises(client.exceptions.ResourceNotFoundException) as raised:
        await invoke(client, FunctionName="nope")
    assert raised.value.response["Error"]["Message"] == (
        f"Function not found: arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:nope"
    )
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        await invoke(client, FunctionName="echo", Qualifier="1")
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        await invoke(client, FunctionName=f"arn:aws:lambda:eu-west-1:{ACCOUNT_ID}:function:echo")
    assert (await invoke(client, FunctionName="echo", Qualifier="$LATEST"))["StatusCode"] == 200
    with pytest.raises(client.exceptions.InvalidRequestContentException) as raised:
        await invoke(client, FunctionName="echo", Payload=b"{not json")
    assert raised.value.response["Error"]["Message"].startswith("Could not parse request body into json")
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        await invoke(client, FunctionName="echo", ClientContext="not base64!")
    with pytest.raises(client.exceptions.RequestTooLargeException):
        await invoke(client, FunctionName="echo", Payload=b'"' + b"x" * (6 * 1024 * 1024) + b'"')
    with pytest.raises(client.exceptions.TooManyRequestsException) as throttled:
        await invoke(client, FunctionName="throttled")
    assert throttled.value.response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    dry_run = await invoke(client, FunctionName="echo", InvocationType="DryRun", Payload=b"{}")
    assert dry_run["StatusCode"] == 204
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        await invoke(client, FunctionName="nope", InvocationType="DryRun")


async def test_an_event_invocation_is_validated_then_queued_and_handled(client: Any, tmp_path: Path) -> None:
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        await invoke(client, FunctionName="nope", InvocationType="Event", Payload=b"{}")
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        await invoke(client, FunctionName="echo", InvocationType="Event", Payload=b"[1,")
    with pytest.raises(client.exceptions.RequestTooLargeException) as raised:
        await invoke(
            client,
            FunctionName="echo",
            InvocationType="Event",
            Payload=b"[" + b" " * 1024 * 1024 + b"]",
        )
    assert "1048576 bytes" in raised.value.response["Error"]["Message"]
    started, release = tmp_path / "started", tmp_path / "release"
    release.touch()  # the handler returns at once
    event = json.dumps({"started": str(started), "release": str(release)}).encode()
    accepted = await invoke(client, FunctionName="single", InvocationType="Event", Payload=event)
    assert accepted["StatusCode"] == 202
    assert accepted["Payload"] == b""
    # The queued event is invoked with the request id the 202 carried.
    await wait_for(started.exists, timeout=30, message="the queued event handled")
    assert started.read_text() == accepted["ResponseMetadata"]["RequestId"]


async def test_a_busy_function_refuses_a_synchronous_invoke_at_once(client: Any, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    event = json.dumps({"started": str(started), "release": str(release)}).encode()
    first = asyncio.create_task(invoke(client, FunctionName="single", Payload=event))
    try:
        await wait_for(started.exists, message="the first invocation runs")
        with pytest.raises(client.exceptions.TooManyRequestsException):
            await invoke(client, FunctionName="single", Payload=event)
    finally:
        release.touch()
        response = await first
    assert json.loads(response["Payload"]) == "released"
    started.unlink()
    release.unlink()
    second = asyncio.create_task(invoke(client, FunctionName="single", Payload=event))
    await wait_for(started.exists, message="the slot is free again")
    release.touch()
    assert (await second)["StatusCode"] == 200


async def test_an_inline_function_answers_as_one_in_an_environment(client: Any) -> None:
    client_context = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
    response = await invoke(
        client,
        FunctionName="inline-echo",
        Payload=b'{"a": 1}',
        LogType="Tail",
        ClientContext=client_context,
    )
    seen = json.loads(response["Payload"])
    assert (seen["event"], seen["custom"], seen["request_id"]) == (
        {"a": 1},
        {"k": "v"},
        response["ResponseMetadata"]["RequestId"],
    )
    lines = base64.b64decode(response["LogResult"]).decode().splitlines()
    assert lines[0] == f"START RequestId: {seen['request_id']} Version: $LATEST"
    assert lines[-1].startswith(f"REPORT RequestId: {seen['request_id']}\t")
    failed = await invoke(client, FunctionName="inline-fail", Payload=b'{"order": 2}')
    assert failed["FunctionError"] == "Unhandled"
    document = json.loads(failed["Payload"])
    assert (document["errorType"], document["errorMessage"]) == ("ValueError", "cannot handle 2")


async def test_the_aws_cli_writes_the_response_to_its_output_file(app: App, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    environment = {
        "AWS_ACCESS_KEY_ID": "AKIDPOLLERTEST",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "PATH": "/usr/bin:/bin",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "awscli",
        "lambda",
        "invoke",
        "--endpoint-url",
        f"http://127.0.0.1:{app.admin.port}",
        "--function-name",
        "echo",
        "--payload",
        '{"from": "cli"}',
        str(out),
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout) == {"StatusCode": 200, "ExecutedVersion": "$LATEST"}
    assert json.loads(out.read_text())["event"] == {"from": "cli"}


async def test_an_invocation_gets_a_span_that_continues_the_callers_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = Config.model_validate(
        {
            "functions": FUNCTIONS,
            "admin": {"port": 0},
            "async_queue": {"type": "sqlite", "path": str(tmp_path / "async.db")},
        }
    )
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with (
        running(config, telemetry=Telemetry(tracer_provider=provider)) as app,
        aiohttp.ClientSession(f"http://127.0.0.1:{app.admin.port}") as http,
    ):
        path = "/2015-03-31/functions/echo/invocations"
        async with http.post(
            path, data=b"{}", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
        ) as r:
            assert r.status == 200
            first = await r.json()
        xray = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
        async with http.post(path, data=b"{}", headers={"X-Amzn-Trace-Id": xray}) as r:
            second = await r.json()
    spans = [span for span in exporter.get_finished_spans() if span.name == "invoke echo"]
    assert [span.kind for span in spans] == [trace.SpanKind.SERVER] * 2
    one, two = spans
    assert trace.format_trace_id(one.context.trace_id) == trace_id
    assert one.parent is not None
    assert trace.format_span_id(one.parent.span_id) == "00f067aa0ba902b7"
    assert one.attributes is not None
    assert two.attributes is not None
    assert one.attributes["faas.invocation_id"] == first["request_id"]
    assert (one.attributes["faas.coldstart"], two.attributes["faas.coldstart"]) == (True, False)
    assert one.attributes["faas.trigger"] == "other"
    own = trace.format_span_id(one.context.span_id)
    assert first["trace_header"] == f"Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent={own};Sampled=1", (
        "the handler's _X_AMZN_TRACE_ID names the API's span as its parent"
    )
    assert trace.format_trace_id(two.context.trace_id) == "5759e988bd862e3fe1be46a994272793"
    assert two.parent is not None
    assert trace.format_span_id(two.parent.span_id) == "53995c3f42cd8ad8"
    assert second["trace_header"].startswith("Root=1-5759e988-bd862e3fe1be46a994272793;")
