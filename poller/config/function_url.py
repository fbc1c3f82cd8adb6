"""A function's URL (SPEC section 13): an HTTP listener that invokes the function with every request.

Keys as Terraform's ``aws_lambda_function_url`` names them; the limits of ``cors`` are those of the
Lambda API's ``Cors`` type (https://docs.aws.amazon.com/lambda/latest/api/API_Cors.html). Where
Lambda gives a function URL a generated ``https://<url-id>.lambda-url.<region>.on.aws`` address,
poller listens on ``host`` and ``port``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, field_validator

from poller.config.base import Model

# The methods a Cors configuration may allow: Lambda takes at most six, of at most six characters
# each, so OPTIONS (answered by the listener itself when cors is set) is not among them.
CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})

_Header = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
_Origin = Annotated[str, Field(min_length=1, max_length=253)]


class Cors(Model):
    """What ``Access-Control-*`` headers the listener sends, and so which other origins a browser
    lets call the function. Preflight requests (OPTIONS with ``Access-Control-Request-Method``)
    are answered by the listener and never reach the function."""

    allow_credentials: bool = Field(
        False, description="Send Access-Control-Allow-Credentials: true (cookies and authorization)."
    )
    allow_headers: list[_Header] = Field(
        default_factory=list,
        max_length=100,
        description='Request headers a caller may send, e.g. ["content-type", "x-custom-header"], or ["*"].',
    )
    allow_methods: list[str] = Field(
        default_factory=list,
        max_length=6,
        description='Methods a caller may use: GET, HEAD, POST, PUT, PATCH, DELETE, or ["*"].',
    )
    allow_origins: list[_Origin] = Field(
        default_factory=list,
        max_length=100,
        description='Origins that may call the function, e.g. ["https://www.example.com"], or ["*"] for any. '
        "A caller's Origin that matches is sent back in Access-Control-Allow-Origin.",
    )
    expose_headers: list[_Header] = Field(
        default_factory=list,
        max_length=100,
        description="Response headers a browser lets the caller's script read (Access-Control-Expose-Headers).",
    )
    max_age: int | None = Field(
        None,
        ge=0,
        le=86400,
        description="Seconds a browser may cache a preflight answer (Access-Control-Max-Age).",
    )

    @field_validator("allow_methods")
    @classmethod
    def _check_methods(cls, methods: list[str]) -> list[str]:
        upper = [method.upper() for method in methods]
        unknown = [method for method in upper if method != "*" and method not in CORS_METHODS]
        if unknown:
            raise ValueError(
                f"unknown method(s) {', '.join(unknown)}: use GET, HEAD, POST, PUT, PATCH, DELETE or *"
            )
        return upper


class FunctionUrl(Model):
    host: str = Field("127.0.0.1", description="Address to listen on; 0.0.0.0 in a container.")
    port: int = Field(
        ge=0,
        le=65535,
        description="Port to listen on, one per function; 0 picks a free port (it is logged).",
    )
    authorization_type: Literal["NONE", "AWS_IAM"] = Field(
        "NONE",
        description="NONE: anyone who reaches the port may invoke the function. AWS_IAM: only requests "
        "signed (SigV4, service lambda) with admin.credentials.",
    )
    cors: Cors | None = Field(None, description="Cross-origin resource sharing; none when omitted.")
    invoke_mode: Literal["BUFFERED", "RESPONSE_STREAM"] = Field(
        "BUFFERED",
        description="BUFFERED: the response is sent once the function returned. RESPONSE_STREAM is not "
        "supported yet.",
    )

    @field_validator("invoke_mode")
    @classmethod
    def _check_invoke_mode(cls, value: str) -> str:
        if value == "RESPONSE_STREAM":
            raise ValueError("RESPONSE_STREAM is not supported yet: function URLs answer BUFFERED only")
        return value


def function_url_errors(
    urls: Mapping[str, FunctionUrl | None], admin_port: int, *, has_credentials: bool
) -> list[tuple[tuple[str | int, ...], str]]:
    """What the function URLs of one poller cannot all have, as (key path, message) pairs: each
    needs a port of its own, other than the admin server's (0, a free port, never collides), and
    AWS_IAM needs the credentials requests are signed with."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    owners: dict[int, str] = {}
    for name, url in urls.items():
        if url is not None and url.authorization_type == "AWS_IAM" and not has_credentials:
            errors.append(
                (
                    ("functions", name, "function_url", "authorization_type"),
                    "AWS_IAM needs admin.credentials: the access key that requests are signed with",
                )
            )
        if url is None or url.port == 0:
            continue
        path: tuple[str | int, ...] = ("functions", name, "function_url", "port")
        if url.port == admin_port:
            errors.append((path, f"port {url.port} is the admin port"))
        elif url.port in owners:
            errors.append((path, f"port {url.port} is also functions.{owners[url.port]}.function_url's"))
        else:
            owners[url.port] = name
    return errors
