"""Function URLs over real HTTP (SPEC section 13), with a Python function in execution environments
that records what it saw: the payload format 2.0 event a request becomes, the response Lambda's
rules make of the result, base64 both ways, a function error (502), a throttle (429), a body over
the payload limit (413), CORS preflights answered by the listener, the drain at stop, a reload,
the request's span and metrics, and AWS_IAM URLs that take only signed requests."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aws_lambda_powertools.utilities.parser.models import LambdaFunctionUrlModel
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from support import recorded_lines, running, serving, wait_for

from poller.app import App
from poller.config import Config, load_config
from poller.invocation.urls.event import MAX_PAYLOAD_BYTES
from poller.invocation.urls.listener import FunctionUrlError
from poller.observability.tracing import Telemetry

HERE = Path(__file__).parent
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"
ORIGIN = "https://app.example.com"


def function(tmp_path: Path, url: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {
        "runtime": PYTHON,
        "code": str(HERE),
        "handler": "url_handlers.handle",
        "environment": {
            "RECORD_FILE": str(tmp_path / "seen.jsonl"),
            "RELEASE_FILE": str(tmp_path / "release"),
        },
        "function_url": url,
        **settings,
    }


def config_of(tmp_path: Path) -> dict[str, Any]:
    cors = {
        "allow_origins": [ORIGIN],
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["content-type", "x-custom"],
        "expose_headers": ["x-handler"],
        "max_age": 600,
    }
    return {
        "functions": {
            "web": function(tmp_path, {"port": 0, "cors": cors}),
            "narrow": function(tmp_path, {"port": 0}, reserved_concurrent_executions=1),
        },
        "admin": {"port": 0},
    }


def seen(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in recorded_lines(tmp_path / "seen.jsonl")]


@asynccontextmanager
async def urls(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[App, aiohttp.ClientSession]]:
    async with running(Config.model_validate(config_of(tmp_path)), **options) as app:
        await wait_for(lambda: len(app.function_urls.listeners) == 2, message="function URLs listening")
        async with aiohttp.ClientSession() as http:
            yield app, http


def url(app: App, name: str, path: str = "") -> str:
    return app.function_urls.listeners[name].url + path


async def get_json(http: aiohttp.ClientSession, target: str) -> tuple[int, Any]:
    async with http.get(target) as response:
        return response.status, await response.json()


async def test_a_request_reaches_the_handler_as_payload_format_2_and_its_response_comes_back(
    tmp_path: Path,
) -> None:
    async with urls(tmp_path) as (app, http):
        port, url_id = app.function_urls.listeners["web"].port, app.function_urls.listeners["web"].url_id
        async with http.post(
            url(app, "web", "orders/42?expand=items&expand=notes&q=a%20b"),
            json={"quantity": 2},
            headers={
                "X-Custom": "one",
                "Cookie": "session=xyz; lang=en",
                "Origin": ORIGIN,
                "User-Agent": "tests/1",
            },
        ) as response:
            body = await response.json()
            status, headers = response.status, response.headers
    assert status == 201
    assert body == {"saw": "POST /orders/42"}
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Handler"] == "seen"
    assert headers.getall("Set-Cookie") == ["session=abc; Path=/; HttpOnly", "theme=dark"]
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Expose-Headers"] == "x-handler"

    [record] = seen(tmp_path)
    event = record["event"]
    assert headers["x-amzn-RequestId"] == record["request_id"] == event["requestContext"]["requestId"]
    assert (event["version"], event["routeKey"], event["rawPath"]) == ("2.0", "$default", "/orders/42")
    assert event["rawQueryString"] == "expand=items&expand=notes&q=a%20b"
    assert event["queryStringParameters"] == {"expand": "items,notes", "q": "a b"}
    assert event["cookies"] == ["session=xyz", "lang=en"]
    assert event["headers"]["x-custom"] == "one"
    assert event["headers"]["content-type"] == "application/json"
    assert event["headers"]["host"] == f"127.0.0.1:{port}"
    assert event["headers"]["x-forwarded-port"] == str(port)
    assert "cookie" not in event["headers"]
    assert json.loads(event["body"]) == {"quantity": 2}
    assert event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["http"] == {
        "method": "POST",
        "path": "/orders/42",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "tests/1",
    }
    assert (context["routeKey"], context["stage"], context["accountId"]) == (
        "$default",
        "$default",
        "anonymous",
    )
    assert context["domainName"] == f"127.0.0.1:{port}"
    assert context["apiId"] == context["domainPrefix"] == url_id
    LambdaFunctionUrlModel.model_validate(event)


async def test_plain_results_base64_bodies_and_function_errors(tmp_path: Path) -> None:
    binary = bytes(range(256)) * 4
    async with urls(tmp_path) as (app, http):
        async with http.get(url(app, "web", "plain")) as response:
            plain = (response.status, response.headers["Content-Type"], await response.read())
        async with http.post(
            url(app, "web", "reverse"),
            data=binary,
            headers={"Content-Type": "application/octet-stream"},
            expect100=True,  # as curl asks for a body past 1 KB: the listener says continue
        ) as response:
            reversed_ = (response.status, response.headers["Content-Type"], await response.read())
        async with http.post(url(app, "web", "raise"), json={}) as response:
            failed = (response.status, await response.read(), response.headers["x-amzn-RequestId"])
    pid = seen(tmp_path)[0]["pid"]
    assert plain == (200, "application/json", b'{"greeting":"hello","pid":%d}' % pid)
    assert reversed_ == (200, "application/octet-stream", binary[::-1])
    assert failed[:2] == (502, b"Internal Server Error")
    by_path = {record["path"]: record for record in seen(tmp_path)}
    assert by_path["/reverse"]["event"]["isBase64Encoded"] is True
    assert by_path["/raise"]["request_id"] == failed[2]


async def test_a_throttled_function_answers_429_and_a_body_over_the_limit_413(tmp_path: Path) -> None:
    async with urls(tmp_path) as (app, http):
        held = asyncio.create_task(get_json(http, url(app, "narrow", "hold")))
        await wait_for(lambda: any(r["path"] == "/hold" for r in seen(tmp_path)), message="request held")
        async with http.get(url(app, "narrow", "plain")) as response:
            throttled = (response.status, await response.json(), response.headers["x-amzn-ErrorType"])
        (tmp_path / "release").touch()
        assert await held == (200, {"held": True})
        async with http.get(url(app, "narrow", "plain")) as response:
            assert response.status == 200, "concurrency back once the held request finished"
        async with http.post(url(app, "web"), data=io.BytesIO(b"x" * (MAX_PAYLOAD_BYTES + 1))) as response:
            too_large = response.status
    assert throttled == (429, {"Message": "Rate Exceeded."}, "TooManyRequestsException")
    assert too_large == 413
    assert [r["path"] for r in seen(tmp_path)] == ["/hold", "/plain"], "neither reached the handler"


async def test_a_preflight_is_answered_by_the_listener_not_the_function(tmp_path: Path) -> None:
    async with urls(tmp_path) as (app, http):
        async with http.options(
            url(app, "web", "orders"),
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-custom",
            },
        ) as response:
            allowed = (response.status, dict(response.headers))
        async with http.options(
            url(app, "web", "orders"),
            headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
        ) as response:
            refused = (response.status, response.headers.get("Access-Control-Allow-Origin"))
        async with http.options(url(app, "narrow", "orders")) as response:
            plain_options = response.status
    assert allowed[0] == 200
    assert allowed[1]["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed[1]["Access-Control-Allow-Methods"] == "GET,POST"
    assert allowed[1]["Access-Control-Allow-Headers"] == "content-type,x-custom"
    assert allowed[1]["Access-Control-Max-Age"] == "600"
    assert refused == (200, None)
    assert plain_options == 201, "an OPTIONS request without CORS settings goes to the function"
    assert [r["event"]["requestContext"]["http"]["method"] for r in seen(tmp_path)] == ["OPTIONS"]


async def test_a_request_in_flight_finishes_when_the_service_stops(tmp_path: Path) -> None:
    config = Config.model_validate(config_of(tmp_path))
    app = App(config, drain_timeout=10)
    async with serving(app), aiohttp.ClientSession() as http:
        await wait_for(lambda: len(app.function_urls.listeners) == 2, message="function URLs listening")
        target = url(app, "web", "hold")
        held = asyncio.create_task(get_json(http, target))
        await wait_for(lambda: seen(tmp_path), message="request held")
        app.stop()
        await wait_for(lambda: not app.function_urls.listeners, message="listeners closing")
        (tmp_path / "release").touch()
        assert await held == (200, {"held": True}), "the request in flight finished"
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(target):
            pass


async def test_a_reload_swaps_the_function_under_its_url_and_moves_a_url_whose_port_changed(
    tmp_path: Path,
) -> None:
    document = config_of(tmp_path)
    path = tmp_path / "poller.yaml"
    path.write_text(yaml.safe_dump(document))
    app = App(load_config(path), drain_timeout=10, config_path=path)
    async with serving(app), aiohttp.ClientSession() as http:
        await wait_for(lambda: len(app.function_urls.listeners) == 2, message="function URLs listening")
        web, narrow = app.function_urls.listeners["web"], app.function_urls.listeners["narrow"]
        async with http.get(url(app, "web", "plain")) as response:
            assert (await response.json())["greeting"] == "hello"
        old_port = narrow.port
        document["functions"]["web"]["environment"]["GREETING"] = "reloaded"
        document["functions"]["narrow"]["function_url"] = {"port": 0, "cors": {"allow_origins": ["*"]}}
        path.write_text(yaml.safe_dump(document))
        assert await app.reload()
        assert app.function_urls.listeners["web"] is web, "the same listener, the new function under it"
        assert web.function is app.functions["web"]
        moved = app.function_urls.listeners["narrow"]
        assert moved is not narrow
        assert moved.function is app.functions["narrow"]
        async with http.get(url(app, "web", "plain")) as response:
            assert (await response.json())["greeting"] == "reloaded"
        async with http.get(url(app, "narrow", "plain"), headers={"Origin": "https://x.example"}) as response:
            assert response.headers["Access-Control-Allow-Origin"] == "https://x.example"
        if moved.port != old_port:
            with pytest.raises(aiohttp.ClientConnectionError):
                async with http.get(f"http://127.0.0.1:{old_port}/plain"):
                    pass


async def test_a_request_is_a_server_span_with_the_invocations_attributes_and_is_counted(
    tmp_path: Path,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with urls(tmp_path, telemetry=Telemetry(tracer_provider=provider)) as (app, http):
        caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        async with http.get(url(app, "web", "plain?secret=1"), headers={"traceparent": caller}) as response:
            request_id = response.headers["x-amzn-RequestId"]
            trace_header = response.headers["X-Amzn-Trace-Id"]
        async with http.get(url(app, "web", "raise")) as response:
            assert response.status == 502
        async with http.get(f"http://127.0.0.1:{app.admin.port}/metrics") as response:
            metrics = await response.text()
    spans = {span.attributes["url.path"]: span for span in exporter.get_finished_spans() if span.attributes}
    plain, failed = spans["/plain"], spans["/raise"]
    assert (plain.name, plain.kind) == ("GET", SpanKind.SERVER)
    assert plain.parent is not None
    assert f"{plain.parent.span_id:016x}" == "b7ad6b7169203331", "the caller's trace continues"
    assert plain.attributes is not None
    assert failed.attributes is not None
    assert plain.attributes["http.request.method"] == "GET"
    assert plain.attributes["http.response.status_code"] == 200
    assert plain.attributes["faas.invoked_name"] == "web"
    assert plain.attributes["faas.invocation_id"] == request_id
    assert plain.attributes["faas.coldstart"] is True
    assert failed.attributes["faas.coldstart"] is False, "the environment stayed warm"
    assert failed.attributes["http.response.status_code"] == 502
    assert failed.attributes["error.type"] == "RuntimeError"
    assert failed.status.status_code is StatusCode.ERROR
    assert plain.context is not None
    assert f"{plain.context.trace_id:032x}"[:8] in trace_header, "the X-Ray header names the span's trace"
    [handled] = [r for r in seen(tmp_path) if r["path"] == "/plain"]
    assert handled["event"]["headers"]["x-amzn-trace-id"] == trace_header
    assert 'poller_function_url_requests_total{function="web",status="2xx"} 1.0' in metrics
    assert 'poller_function_url_requests_total{function="web",status="5xx"} 1.0' in metrics


async def test_a_url_that_cannot_listen_stops_the_start_with_one_clear_error(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        document = config_of(tmp_path)
        document["functions"]["web"]["function_url"] = {"port": port}
        document["functions"]["web"]["provisioned_concurrent_executions"] = 1  # started before the URL
        app = App(Config.model_validate(document), drain_timeout=5)
        with pytest.raises(ExceptionGroup) as raised:
            await asyncio.wait_for(app.run(), 30)
    finally:
        taken.close()
    [error] = raised.value.exceptions
    assert isinstance(error, FunctionUrlError)
    assert str(error).startswith(f"function web: function URL cannot listen on 127.0.0.1:{port}: ")
    assert app.functions["web"].pool is not None
    assert sum(app.functions["web"].pool.stats.init_counts) == 1, "the provisioned environment had started"
    assert app.functions["web"].pool.environments() == [], "its provisioned environment was stopped"


def signed(method: str, target: str, body: bytes, key: str, secret: str) -> dict[str, str]:
    """The headers of a request signed as AWS's SDKs sign a function URL request (SigV4, lambda)."""
    request = AWSRequest(method=method, url=target, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(key, secret), "lambda", "us-east-1").add_auth(request)
    return dict(request.headers.items())


async def test_an_aws_iam_url_invokes_only_requests_signed_with_the_admin_credentials(
    tmp_path: Path,
) -> None:
    key, secret = "AKIAPOLLERTESTKEY", "url-signing-secret-value"
    config = {
        "functions": {"private": function(tmp_path, {"port": 0, "authorization_type": "AWS_IAM"})},
        "admin": {"port": 0, "credentials": {"access_key_id": key, "secret_access_key": secret}},
    }
    async with running(Config.model_validate(config)) as app, aiohttp.ClientSession() as http:
        await wait_for(lambda: app.function_urls.listeners, message="the URL listening")
        target, body = url(app, "private", "plain?x=1"), b'{"a": 1}'
        async with http.post(target, data=body) as response:
            assert response.status == 403, "unsigned"
            assert await response.json() == {"Message": "Forbidden"}
        wrong = signed("POST", target, body, key, "another-secret-value")
        async with http.post(target, data=body, headers=wrong) as response:
            assert response.status == 403, "signed with another secret"
        async with http.post(
            target, data=body, headers=signed("POST", target, body, key, secret)
        ) as response:
            assert response.status == 200
            assert (await response.json())["greeting"] == "hello"
    [record] = seen(tmp_path)  # only the signed request reached the function
    context = record["event"]["requestContext"]
    assert context["authorizer"]["iam"]["accessKey"] == key
    assert context["accountId"] != "anonymous"
    LambdaFunctionUrlModel.model_validate(record["event"])
