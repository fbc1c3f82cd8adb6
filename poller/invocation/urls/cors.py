"""Cross-origin resource sharing for a function URL, as its ``cors`` configures it. Pure.

As Lambda documents it (https://docs.aws.amazon.com/lambda/latest/dg/urls-configuration.html#urls-cors):
with ``cors`` set, the URL answers preflight requests itself, and adds the ``Access-Control-*``
headers to every response; where the function sent one of those headers too, the configured one
takes precedence. Headers are added only for a request whose ``Origin`` is allowed, and that
origin is what ``Access-Control-Allow-Origin`` names (also when every origin is allowed, so that
``allow_credentials`` works with ``*``). Which methods and request headers are allowed, the
preflight answer says; the browser enforces it.
"""

from __future__ import annotations

from poller.config.function_url import Cors
from poller.invocation.urls.event import HttpRequest, HttpResponse

ALLOW_ORIGIN = "Access-Control-Allow-Origin"
ALLOW_METHODS = "Access-Control-Allow-Methods"
ALLOW_HEADERS = "Access-Control-Allow-Headers"
ALLOW_CREDENTIALS = "Access-Control-Allow-Credentials"
EXPOSE_HEADERS = "Access-Control-Expose-Headers"
MAX_AGE = "Access-Control-Max-Age"


def is_preflight(request: HttpRequest) -> bool:
    """An OPTIONS request a browser sends before a cross-origin one: with ``Origin`` and
    ``Access-Control-Request-Method``. Other OPTIONS requests go to the function."""
    return (
        request.method == "OPTIONS"
        and request.header("Origin") is not None
        and request.header("Access-Control-Request-Method") is not None
    )


def allowed_origin(cors: Cors, request: HttpRequest) -> str | None:
    """The request's Origin if ``cors`` allows it (origins compare without regard to case)."""
    origin = request.header("Origin")
    if origin is None:
        return None
    allowed = {entry.lower() for entry in cors.allow_origins}
    return origin if "*" in allowed or origin.lower() in allowed else None


def preflight_response(cors: Cors, request: HttpRequest) -> HttpResponse:
    """The answer to a preflight request: 200, no body, and the configuration's headers when the
    origin is allowed (none when it is not: the browser then refuses the request)."""
    origin = allowed_origin(cors, request)
    if origin is None:
        return HttpResponse(200)
    headers = [(ALLOW_ORIGIN, origin)]
    if cors.allow_methods:
        headers.append((ALLOW_METHODS, ",".join(cors.allow_methods)))
    if cors.allow_headers:
        headers.append((ALLOW_HEADERS, ",".join(cors.allow_headers)))
    if cors.allow_credentials:
        headers.append((ALLOW_CREDENTIALS, "true"))
    if cors.max_age is not None:
        headers.append((MAX_AGE, str(cors.max_age)))
    return HttpResponse(200, headers)


def with_cors(cors: Cors, request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """``response`` with the CORS headers of an actual (not preflight) request, in place of any
    the function sent under the same names."""
    origin = allowed_origin(cors, request)
    if origin is None:
        return response
    added = [(ALLOW_ORIGIN, origin)]
    if cors.expose_headers:
        added.append((EXPOSE_HEADERS, ",".join(cors.expose_headers)))
    if cors.allow_credentials:
        added.append((ALLOW_CREDENTIALS, "true"))
    replaced = {name.lower() for name, _ in added}
    kept = [(name, value) for name, value in response.headers if name.lower() not in replaced]
    return HttpResponse(response.status, kept + added, response.body)
