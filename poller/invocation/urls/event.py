"""An HTTP request as a function URL's event, and the function's result as the HTTP response. Pure.

The event is payload format 2.0 as Lambda builds it for a function URL
(https://docs.aws.amazon.com/lambda/latest/dg/urls-invocation.html#urls-payloads): header names in
lower case, repeated headers and query parameters joined by commas, the ``Cookie`` header split
into ``cookies``, a binary body in base64; ``cookies``, ``queryStringParameters`` and ``body`` are
left out when the request has none, as Lambda leaves them out.

The response follows Lambda's rules: a JSON object with ``statusCode`` is the response itself
(``headers``, ``cookies`` as ``Set-Cookie`` each, ``body``, base64-decoded when ``isBase64Encoded``);
any other result is a 200 ``application/json`` whose body is that JSON, written compactly, except
that a string is the body as it is (what AWS answers, as LocalStack's tests recorded it against
AWS: a function returning ``"hello"`` gives the five bytes ``hello``; the guide's example shows it
quoted). A result that claims to be a
response but is not a valid one (a ``statusCode`` that is no HTTP status, headers that are not a
map of strings, a body that is not base64 though it says so) is a 502, as a function error is.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson

from poller.engine.outcome import decode_response

# Lambda's limit on a synchronous invocation's payload: the event, with its body and headers.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
JSON = "application/json"

# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, not to the request: Lambda does not
# pass them on, and poller frames its responses itself.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
)
_NOT_FROM_FUNCTION = _HOP_BY_HOP | {"content-length"}
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Content types whose body the event carries as text (when it is UTF-8); any other, or none, is
# base64, as a form post (application/x-www-form-urlencoded, multipart/form-data) is on Lambda.
_TEXT_SUBTYPES = frozenset({"json", "javascript", "ecmascript", "x-javascript", "xml"})


@dataclass(frozen=True)
class HttpRequest:
    """One request as the listener received it."""

    method: str
    target: str  # the path and query string exactly as sent, e.g. /a%20b?x=1&x=2
    headers: Sequence[tuple[str, str]]  # in order, names as sent, a repeated header repeated
    body: bytes
    source_ip: str
    protocol: str = "HTTP/1.1"

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case)."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True)
class UrlInfo:
    """What the event says of the function URL itself. Lambda's ``apiId`` and ``domainPrefix`` are
    the URL's id; ``domainName`` is the host the caller used."""

    url_id: str
    port: int  # the listener's, for x-forwarded-port
    account_id: str = "anonymous"  # what Lambda puts there when the URL has no authorization
    scheme: str = "http"


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


class MalformedResponse(ValueError):
    """A function's result says it is an HTTP response (it has ``statusCode``) but is not one."""


# The answers that do not come from the function: when it failed (raised, timed out, crashed) or
# returned a malformed response (AWS answers this 502 with this body), when it has no concurrency
# left, and when the request cannot be an invocation payload (with the Invoke API's error names).
FUNCTION_ERROR = HttpResponse(502, [("Content-Type", JSON)], b"Internal Server Error")
FORBIDDEN = HttpResponse(
    403, [("Content-Type", JSON), ("x-amzn-ErrorType", "AccessDeniedException")], b'{"Message":"Forbidden"}'
)
THROTTLED = HttpResponse(
    429,
    [("Content-Type", JSON), ("x-amzn-ErrorType", "TooManyRequestsException")],
    b'{"Message":"Rate Exceeded."}',
)
TOO_LARGE = HttpResponse(
    413,
    [("Content-Type", JSON), ("x-amzn-ErrorType", "RequestTooLargeException")],
    b'{"Message":"Request must be smaller than %d bytes for the InvokeFunction operation"}'
    % MAX_PAYLOAD_BYTES,
)


# --- request -> event ----------------------------------------------------------------------------


def request_event(
    request: HttpRequest,
    url: UrlInfo,
    request_id: str,
    *,
    now: float,
    trace_header: str | None = None,
    signer: str | None = None,
) -> dict[str, Any]:
    """The payload format 2.0 event of ``request``. ``now``: epoch seconds of its arrival;
    ``trace_header``: the X-Ray header of its span, passed on as ``x-amzn-trace-id``; ``signer``:
    the access key id that signed it (``AWS_IAM``), which becomes ``requestContext.authorizer``."""
    path, _, query = request.target.partition("?")
    headers, cookies = _event_headers(request, url, trace_header)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    parameters = _query_parameters(query)
    if parameters:
        event["queryStringParameters"] = parameters
    context: dict[str, Any] = {
        "accountId": url.account_id,
        "apiId": url.url_id,
        "domainName": headers.get("host", ""),
        "domainPrefix": url.url_id,
        "http": {
            "method": request.method,
            "path": path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": request_time(now),
        "timeEpoch": int(now * 1000),
    }
    if signer is not None:
        context["authorizer"] = {"iam": iam_caller(signer, url.account_id)}
    event["requestContext"] = context
    if request.body:
        text = _as_text(request.body, headers.get("content-type"))
        event["body"] = text if text is not None else base64.b64encode(request.body).decode("ascii")
        event["isBase64Encoded"] = text is None
    else:
        event["isBase64Encoded"] = False
    return event


def iam_caller(access_key_id: str, account_id: str) -> dict[str, Any]:
    """``requestContext.authorizer.iam`` of a request signed with poller's one access key: no IAM
    stands behind it, so the key id names the caller and its user (``arn:aws:iam::ACCOUNT:user/KEY``)."""
    return {
        "accessKey": access_key_id,
        "accountId": account_id,
        "callerId": access_key_id,
        "cognitoIdentity": None,
        "principalOrgId": None,
        "userArn": f"arn:aws:iam::{account_id}:user/{access_key_id}",
        "userId": access_key_id,
    }


def request_time(now: float) -> str:
    """``requestContext.time``: ``12/Mar/2020:19:03:58 +0000`` (month names in English whatever
    the locale)."""
    moment = time.gmtime(now)
    return (
        f"{moment.tm_mday:02d}/{_MONTHS[moment.tm_mon - 1]}/{moment.tm_year}:"
        f"{moment.tm_hour:02d}:{moment.tm_min:02d}:{moment.tm_sec:02d} +0000"
    )


def _event_headers(
    request: HttpRequest, url: UrlInfo, trace_header: str | None
) -> tuple[dict[str, str], list[str]]:
    """The event's headers (lower case, repeated ones comma-joined, what the URL adds as Lambda's
    front end adds it) and the cookies of the ``Cookie`` headers."""
    joined: dict[str, list[str]] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        key = name.lower()
        if key == "cookie":
            cookies += [cookie.strip() for cookie in value.split(";") if cookie.strip()]
        elif key not in _HOP_BY_HOP:
            joined.setdefault(key, []).append(value)
    headers = {key: ",".join(values) for key, values in joined.items()}
    forwarded_for = headers.get("x-forwarded-for")
    headers["x-forwarded-for"] = (
        f"{forwarded_for}, {request.source_ip}" if forwarded_for else request.source_ip
    )
    headers["x-forwarded-port"] = str(url.port)
    headers["x-forwarded-proto"] = url.scheme
    if trace_header is not None:
        headers["x-amzn-trace-id"] = trace_header
    return headers, cookies


def _query_parameters(query: str) -> dict[str, str]:
    """Decoded query parameters, a repeated one's values joined by commas."""
    parameters: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parameters[name] = f"{parameters[name]},{value}" if name in parameters else value
    return parameters


def _as_text(body: bytes, content_type: str | None) -> str | None:
    """The body as text when its content type is textual and it is UTF-8; None: base64 it."""
    if content_type is None or not is_text_type(content_type):
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def is_text_type(content_type: str) -> bool:
    """Whether a body of this content type goes into the event as text: ``text/*``, JSON,
    JavaScript and XML (also as a ``+json`` or ``+xml`` suffix)."""
    media = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media.partition("/")
    if kind == "text":
        return True
    return kind == "application" and (
        subtype in _TEXT_SUBTYPES or subtype.endswith("+json") or subtype.endswith("+xml")
    )


# --- result -> response --------------------------------------------------------------------------


def response_of(payload: bytes) -> HttpResponse:
    """The HTTP response of a function's response payload (as its runtime serialised it). Raises
    MalformedResponse when the payload is an object with ``statusCode`` that is no valid response."""
    result = decode_response(payload)
    if isinstance(result, dict) and "statusCode" in result:
        return _declared_response(result)
    body = result.encode("utf-8") if isinstance(result, str) else _compact_json(result)
    return HttpResponse(200, [("Content-Type", JSON)], body)


def _declared_response(result: dict[str, Any]) -> HttpResponse:
    status = _status_of(result["statusCode"])
    headers: list[tuple[str, str]] = []
    declared = result.get("headers")
    if declared is not None:
        if not isinstance(declared, dict):
            raise MalformedResponse("headers is not an object")
        for name, value in declared.items():
            if name.lower() not in _NOT_FROM_FUNCTION:
                headers.append((_header_name(name), _header_value(name, value)))
    if not any(name.lower() == "content-type" for name, _ in headers):
        headers.insert(0, ("Content-Type", JSON))
    headers += [("Set-Cookie", cookie) for cookie in _cookies_of(result.get("cookies"))]
    return HttpResponse(status, headers, _body_of(result.get("body"), result.get("isBase64Encoded") is True))


def _status_of(value: Any) -> int:
    # A number or a numeric string (which AWS takes too: "418" answers 418).
    numeric = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
    code = int(value) if numeric or (isinstance(value, str) and value.strip().isdigit()) else None
    if code is None or not 200 <= code <= 599:
        raise MalformedResponse(f"statusCode {value!r} is not an HTTP status from 200 to 599")
    return code


def _header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise MalformedResponse(f"header name {name!r} is not a valid HTTP header name")
    return name


def _header_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        raise MalformedResponse(f"header {name!r} is not a string")
    if "\r" in text or "\n" in text:
        raise MalformedResponse(f"header {name!r} holds a line break")
    return text


def _cookies_of(cookies: Any) -> Iterable[str]:
    if cookies is None:
        return []
    if isinstance(cookies, str):
        cookies = [cookies]
    if not isinstance(cookies, list) or not all(isinstance(cookie, str) for cookie in cookies):
        raise MalformedResponse("cookies is not a list of strings")
    if any("\r" in cookie or "\n" in cookie for cookie in cookies):
        raise MalformedResponse("a cookie holds a line break")
    return cookies


def _body_of(body: Any, base64_encoded: bool) -> bytes:
    if body is None:
        return b""
    if not isinstance(body, str):
        return _compact_json(body)
    if not base64_encoded:
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedResponse(f"body is not base64 though isBase64Encoded is true: {exc}") from exc


def _compact_json(value: Any) -> bytes:
    """JSON without spaces, as Lambda writes a result back (recorded against AWS: ``{"hello": "world"}``
    from Python's runtime reaches the caller as the 17 bytes ``{"hello":"world"}``)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # integers past 64 bits, which the Python runtime writes and orjson does not
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
