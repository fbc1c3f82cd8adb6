"""CORS of a function URL as ``cors`` configures it, without a listener: which requests are
preflights, what a preflight is answered, and the headers added to (and replaced in) a response."""

from __future__ import annotations

from poller.config.function_url import Cors
from poller.invocation.urls.cors import is_preflight, preflight_response, with_cors
from poller.invocation.urls.event import HttpRequest, HttpResponse

CORS = Cors(
    allow_origins=["https://app.example.com"],
    allow_methods=["GET", "POST"],
    allow_headers=["content-type", "x-custom-header"],
    expose_headers=["x-request-total"],
    allow_credentials=True,
    max_age=300,
)


def request(method: str = "GET", **headers: str) -> HttpRequest:
    pairs = [(name.replace("_", "-"), value) for name, value in headers.items()]
    return HttpRequest(method, "/", pairs, b"", "127.0.0.1")


def test_a_preflight_is_an_options_request_with_origin_and_requested_method() -> None:
    assert is_preflight(request("OPTIONS", Origin="https://a", Access_Control_Request_Method="POST"))
    assert not is_preflight(request("OPTIONS", Origin="https://a")), "an ordinary OPTIONS: the function's"
    assert not is_preflight(request("OPTIONS", Access_Control_Request_Method="POST"))
    assert not is_preflight(request("POST", Origin="https://a", Access_Control_Request_Method="POST"))


def test_a_preflight_from_an_allowed_origin_gets_the_configuration() -> None:
    answer = preflight_response(
        CORS, request("OPTIONS", Origin="https://APP.example.com", Access_Control_Request_Method="POST")
    )
    assert answer == HttpResponse(
        200,
        [
            ("Access-Control-Allow-Origin", "https://APP.example.com"),
            ("Access-Control-Allow-Methods", "GET,POST"),
            ("Access-Control-Allow-Headers", "content-type,x-custom-header"),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Max-Age", "300"),
        ],
    )


def test_a_preflight_from_another_origin_gets_no_cors_headers() -> None:
    answer = preflight_response(
        CORS, request("OPTIONS", Origin="https://evil.example", Access_Control_Request_Method="GET")
    )
    assert answer == HttpResponse(200)


def test_any_origin_is_echoed_and_unset_settings_send_nothing() -> None:
    answer = preflight_response(
        Cors(allow_origins=["*"]),
        request("OPTIONS", Origin="http://localhost:3000", Access_Control_Request_Method="PUT"),
    )
    assert answer.headers == [("Access-Control-Allow-Origin", "http://localhost:3000")]


def test_a_response_gets_the_cors_headers_in_place_of_the_functions_own() -> None:
    functions = HttpResponse(
        201,
        [
            ("Content-Type", "text/plain"),
            ("access-control-allow-origin", "*"),
            ("Access-Control-Expose-Headers", "x-other"),
        ],
        b"made",
    )
    answer = with_cors(CORS, request("POST", Origin="https://app.example.com"), functions)
    assert answer == HttpResponse(
        201,
        [
            ("Content-Type", "text/plain"),
            ("Access-Control-Allow-Origin", "https://app.example.com"),
            ("Access-Control-Expose-Headers", "x-request-total"),
            ("Access-Control-Allow-Credentials", "true"),
        ],
        b"made",
    )


def test_a_response_without_an_allowed_origin_is_left_as_the_function_made_it() -> None:
    functions = HttpResponse(200, [("Access-Control-Allow-Origin", "*")], b"")
    assert with_cors(CORS, request("GET"), functions) is functions
    assert with_cors(CORS, request("GET", Origin="https://evil.example"), functions) is functions
