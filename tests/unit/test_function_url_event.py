"""A function URL's conversions, without a listener: an HTTP request as the payload format 2.0
event (checked against aws-lambda-go's fixture of Lambda's event and Powertools' parser model, field
by field), and a function's result as the HTTP response, by Lambda's rules."""

from __future__ import annotations

import base64
import copy
import json
import locale
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aws_lambda_powertools.utilities.parser.models import LambdaFunctionUrlModel

from handlers import web
from poller.invocation.urls.event import (
    HttpRequest,
    MalformedResponse,
    UrlInfo,
    request_event,
    request_time,
    response_of,
)

FIXTURES = Path(__file__).parent / "fixtures" / "aws_lambda_go"
URL = UrlInfo(url_id="a1b2c3d4e5f60718293a4b5c6d7e8f90", port=9001)
NOW = 1583348638.390


def fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return loaded


def event_of(
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    method: str = "GET",
    **options: Any,
) -> dict[str, Any]:
    request = HttpRequest(method, target, headers or [("Host", "127.0.0.1:9001")], body, "10.0.0.7")
    return request_event(request, URL, "req-1", now=NOW, **options)


# --- request -> event ----------------------------------------------------------------------------


def test_the_documented_request_gives_lambdas_event() -> None:
    """The request behind aws-lambda-go's ``lambda-urls-request.json``: what differs is only what
    the URL itself is (its id and host, no IAM caller) and what Lambda's front end adds."""
    lambdas = fixture("lambda-urls-request.json")
    request = HttpRequest(
        "POST",
        "/my/path?parameter1=value1&parameter1=value2&parameter2=value",
        [
            ("Host", "127.0.0.1:9001"),
            ("Header1", "value1"),
            ("header2", "value1"),
            ("HEADER2", "value2"),
            ("Cookie", "cookie1; cookie2"),
            ("User-Agent", "agent"),
            ("Content-Type", "text/plain"),
            ("Connection", "keep-alive"),
        ],
        b"Hello from client!",
        "123.123.123.123",
    )
    event = request_event(request, URL, "id", now=lambdas["requestContext"]["timeEpoch"] / 1000)

    expected = copy.deepcopy(lambdas)
    # This version of the fixture leaves routeKey out, and the context's routeKey and stage; Lambda
    # sends them (the guide's example, and Powertools' fixture recorded from Lambda, have them).
    expected = {"version": expected.pop("version"), "routeKey": "$default", **expected}
    context = expected["requestContext"]
    del context["authorizer"]  # the IAM caller, there only with AWS_IAM
    context.update(
        accountId="anonymous",  # Lambda's value without authorization
        apiId=URL.url_id,
        domainPrefix=URL.url_id,
        domainName="127.0.0.1:9001",
        routeKey="$default",
        stage="$default",
        # The fixture's time is not its timeEpoch's (2020-03-04T19:03:58.390Z).
        time="04/Mar/2020:19:03:58 +0000",
    )
    expected["headers"].update(
        {
            "host": "127.0.0.1:9001",
            "user-agent": "agent",
            "content-type": "text/plain",
            "x-forwarded-for": "123.123.123.123",
            "x-forwarded-port": "9001",
            "x-forwarded-proto": "http",
        }
    )
    assert event == expected
    assert list(event) == [
        "version",
        "routeKey",
        "rawPath",
        "rawQueryString",
        "cookies",
        "headers",
        "queryStringParameters",
        "requestContext",
        "body",
        "isBase64Encoded",
    ]


def test_powertools_parses_the_event_field_by_field() -> None:
    event = event_of(
        "/orders/7?expand=items",
        [("Host", "127.0.0.1:9001"), ("User-Agent", "curl/8.5"), ("Content-Type", "application/json")],
        b'{"quantity": 2}',
        method="PUT",
        trace_header="Root=1-5e1b4151-5ac6c58f5b5daa6532e4f2ea;Parent=53995c3f42cd8ad8;Sampled=1",
    )
    parsed = LambdaFunctionUrlModel.model_validate(event)
    assert (parsed.version, parsed.routeKey, parsed.rawPath, parsed.rawQueryString) == (
        "2.0",
        "$default",
        "/orders/7",
        "expand=items",
    )
    assert parsed.cookies is None
    assert parsed.queryStringParameters == {"expand": "items"}
    assert parsed.body == '{"quantity": 2}'
    assert parsed.isBase64Encoded is False
    assert parsed.headers["x-amzn-trace-id"].startswith("Root=1-5e1b4151-")
    context = parsed.requestContext
    assert (context.accountId, context.apiId, context.domainPrefix) == ("anonymous", URL.url_id, URL.url_id)
    assert (context.domainName, context.requestId, context.routeKey, context.stage) == (
        "127.0.0.1:9001",
        "req-1",
        "$default",
        "$default",
    )
    assert context.time == "04/Mar/2020:19:03:58 +0000"
    assert int(context.timeEpoch.timestamp() * 1000) == 1583348638390
    http = context.http
    assert (http.method, http.path, http.protocol, str(http.sourceIp), http.userAgent) == (
        "PUT",
        "/orders/7",
        "HTTP/1.1",
        "10.0.0.7/32",
        "curl/8.5",
    )


def test_a_request_without_query_cookies_or_body_leaves_those_keys_out() -> None:
    event = event_of("/")
    assert set(event) == {
        "version",
        "routeKey",
        "rawPath",
        "rawQueryString",
        "headers",
        "requestContext",
        "isBase64Encoded",
    }
    assert (event["rawPath"], event["rawQueryString"], event["isBase64Encoded"]) == ("/", "", False)
    assert event["requestContext"]["http"]["userAgent"] == ""
    LambdaFunctionUrlModel.model_validate(event)


def test_headers_lower_case_repeated_ones_comma_joined_hop_by_hop_ones_dropped() -> None:
    event = event_of(
        "/",
        [
            ("Host", "h"),
            ("X-Multi", "a"),
            ("x-multi", "b, c"),
            ("ExTrA-HeadErs", "With WeiRd CapS"),
            ("Connection", "keep-alive"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    )
    headers = event["headers"]
    assert headers["x-multi"] == "a,b, c"
    assert headers["extra-headers"] == "With WeiRd CapS", "names lower-cased, values as sent"
    assert not {"connection", "keep-alive", "transfer-encoding"} & set(headers)
    assert headers["x-forwarded-for"] == "203.0.113.9, 10.0.0.7", "the peer appended to a proxy's list"


def test_query_parameters_decoded_and_comma_joined_the_raw_path_and_query_as_sent() -> None:
    event = event_of("/pa2%2Fth/1?q=query&multiQuery=foo&multiQuery=%2Fbar&empty=&flag")
    assert event["rawPath"] == "/pa2%2Fth/1"
    assert event["requestContext"]["http"]["path"] == "/pa2%2Fth/1"
    assert event["rawQueryString"] == "q=query&multiQuery=foo&multiQuery=%2Fbar&empty=&flag"
    assert event["queryStringParameters"] == {"q": "query", "multiQuery": "foo,/bar", "empty": "", "flag": ""}


def test_cookies_split_from_every_cookie_header_and_not_among_the_headers() -> None:
    event = event_of("/", [("Host", "h"), ("Cookie", "a=1; b=2"), ("cookie", "c=3;")])
    assert event["cookies"] == ["a=1", "b=2", "c=3"]
    assert "cookie" not in event["headers"]


@pytest.mark.parametrize(
    ("content_type", "body", "as_text"),
    [
        ("text/plain; charset=utf-8", "héllo".encode(), True),
        ("application/json", b'{"a": 1}', True),
        ("application/vnd.api+json", b"{}", True),
        ("application/xml", b"<a/>", True),
        ("application/javascript", b"f()", True),
        ("text/plain", b"\xff\xfe not UTF-8", False),
        ("application/octet-stream", b"\x00\xff\x80\n", False),
        ("image/png", b"\x89PNG", False),
        ("application/x-www-form-urlencoded", b"a=1&b=2", False),
        ("multipart/form-data; boundary=x", b"--x--", False),
        (None, b"no content type", False),
    ],
)
def test_a_body_is_text_only_for_textual_content_types_else_base64(
    content_type: str | None, body: bytes, as_text: bool
) -> None:
    headers = [("Host", "h")] + ([("Content-Type", content_type)] if content_type else [])
    event = event_of("/", headers, body, method="POST")
    assert event["isBase64Encoded"] is not as_text
    decoded = event["body"].encode() if as_text else base64.b64decode(event["body"])
    assert decoded == body


def test_the_time_is_in_lambdas_format_whatever_the_locale() -> None:
    previous = locale.setlocale(locale.LC_TIME)
    try:
        for name in ("de_DE.UTF-8", "fr_FR.UTF-8", "C.UTF-8"):
            try:
                locale.setlocale(locale.LC_TIME, name)
                break
            except locale.Error:
                continue
        moment = time.mktime((2021, 9, 7, 22, 50, 22, 0, 0, 0)) - time.timezone
        assert request_time(moment) == "07/Sep/2021:22:50:22 +0000"
        assert request_time(0) == "01/Jan/1970:00:00:00 +0000"
    finally:
        locale.setlocale(locale.LC_TIME, previous)


# --- result -> response --------------------------------------------------------------------------


def test_the_documented_response_gives_its_status_headers_cookies_and_body() -> None:
    payload = (FIXTURES / "lambda-urls-response.json").read_bytes()
    response = response_of(payload)
    assert response.status == 201
    assert response.headers == [
        ("Content-Type", "application/json"),
        ("My-Custom-Header", "Custom Value"),
        ("Set-Cookie", "Cookie_1=Value1; Expires=21 Oct 2021 07:48 GMT"),
        ("Set-Cookie", "Cookie_2=Value2; Max-Age=78000"),
    ]
    assert response.body == b'{ "message": "Hello, world!" }'


@pytest.mark.parametrize(
    ("payload", "body"),
    [
        # What AWS answers for each (LocalStack's AWS-validated snapshots of a Python function).
        (b'{"hello": "world"}', b'{"hello":"world"}'),
        (b'["hello", 3, true]', b'["hello",3,true]'),
        (b'"hello"', b"hello"),
        (b"3", b"3"),
        (b"3.1", b"3.1"),
        (b"true", b"true"),
        (b"null", b"null"),
        (
            b'{"body": "not a response", "headers": {"a": "b"}}',
            b'{"body":"not a response","headers":{"a":"b"}}',
        ),
        (b"plain text a custom runtime posted", b"plain text a custom runtime posted"),
    ],
)
def test_a_result_without_status_code_is_a_200_json_body(payload: bytes, body: bytes) -> None:
    response = response_of(payload)
    assert (response.status, response.headers, response.body) == (
        200,
        [("Content-Type", "application/json")],
        body,
    )


def test_a_declared_response_defaults_and_conversions() -> None:
    response = response_of(json.dumps({"statusCode": "418", "body": "i'm a teapot"}).encode())
    assert (response.status, response.body) == (418, b"i'm a teapot"), "a numeric string, as AWS takes it"
    assert response.headers == [("Content-Type", "application/json")]
    assert response_of(b'{"statusCode": 204}').body == b""
    typed = response_of(
        json.dumps(
            {
                "statusCode": 200.0,
                "headers": {
                    "content-type": "text/html",
                    "X-Count": 3,
                    "X-Flag": True,
                    "Content-Length": "99",
                },
                "body": {"an": "object"},
                "cookies": "one=1",
            }
        ).encode()
    )
    assert typed.status == 200
    assert typed.headers == [
        ("content-type", "text/html"),
        ("X-Count", "3"),
        ("X-Flag", "true"),
        ("Set-Cookie", "one=1"),
    ], "the function's own content-type kept, its content-length left to the listener"
    assert typed.body == b'{"an":"object"}'


def test_a_base64_body_is_decoded() -> None:
    binary = bytes(range(256))
    payload = {"statusCode": 200, "body": base64.b64encode(binary).decode(), "isBase64Encoded": True}
    assert response_of(json.dumps(payload).encode()).body == binary
    as_text = {"statusCode": 200, "body": "aGk=", "isBase64Encoded": False}
    assert response_of(json.dumps(as_text).encode()).body == b"aGk="


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"statusCode": "abc"}, "statusCode 'abc'"),
        ({"statusCode": 99}, "statusCode 99"),
        ({"statusCode": 600}, "statusCode 600"),
        ({"statusCode": True}, "statusCode True"),
        ({"statusCode": 200.5}, "statusCode 200.5"),
        ({"statusCode": None}, "statusCode None"),
        ({"statusCode": 200, "headers": ["a"]}, "headers is not an object"),
        ({"statusCode": 200, "headers": {"a": ["b"]}}, "header 'a' is not a string"),
        ({"statusCode": 200, "headers": {"a": "b\r\nX-Injected: 1"}}, "line break"),
        ({"statusCode": 200, "headers": {"bad name": "b"}}, "not a valid HTTP header name"),
        ({"statusCode": 200, "cookies": [1]}, "cookies is not a list of strings"),
        ({"statusCode": 200, "body": "not base64!", "isBase64Encoded": True}, "not base64"),
    ],
)
def test_a_malformed_response_is_refused(result: dict[str, Any], problem: str) -> None:
    with pytest.raises(MalformedResponse, match=problem.replace("(", r"\(")):
        response_of(json.dumps(result).encode())


def test_the_example_handler_answers_get_and_post_through_the_conversions() -> None:
    context = SimpleNamespace(aws_request_id="req-9")
    hello = web.handler(event_of("/hello?name=Ada"), context)
    greeting = response_of(orjson.dumps(hello))
    assert (greeting.status, greeting.header("content-type"), greeting.body) == (
        200,
        "text/plain",
        b"hello, Ada\n",
    )
    posted = event_of(
        "/echo", [("Host", "h"), ("Content-Type", "application/json")], b'{"a": 1}', method="POST"
    )
    echo = response_of(orjson.dumps(web.handler(posted, context)))
    assert (echo.status, json.loads(echo.body)) == (200, {"echo": {"a": 1}, "requestId": "req-9"})
    refused = response_of(orjson.dumps(web.handler(event_of("/", method="DELETE"), context)))
    assert (refused.status, refused.header("allow")) == (405, "GET, POST")
