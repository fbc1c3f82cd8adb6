"""``function_url`` in the config file: Terraform's ``aws_lambda_function_url`` keys with their
defaults, what poller cannot do yet refused with a clear line, ports that two listeners would share,
CORS limits as the Lambda API's, and what a reload does when only a function's URL changed."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from poller.config import Config
from poller.config.diff import diff
from poller.config.function_url import Cors, FunctionUrl
from poller.config.loader import load_config
from poller.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "poller.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    return raised.value.problems


def test_a_function_url_with_its_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        functions:
          web:
            handler: handlers.echo.handler
            function_url: {port: 9001, cors: {allow_origins: ["*"], allow_methods: [get, POST]}}
        """,
    )
    url = load_config(path, environ={}).functions["web"].function_url
    assert url == FunctionUrl(
        host="127.0.0.1",
        port=9001,
        authorization_type="NONE",
        invoke_mode="BUFFERED",
        cors=Cors(allow_origins=["*"], allow_methods=["GET", "POST"]),
    )
    assert url.cors is not None
    assert (url.cors.allow_credentials, url.cors.max_age, url.cors.allow_headers) == (False, None, [])


def test_what_poller_cannot_do_yet_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        functions:
          web:
            handler: handlers.echo.handler
            function_url:
              port: 9001
              invoke_mode: RESPONSE_STREAM
        """,
    )
    assert problems(path) == [
        f"{path}:6: functions.web.function_url.invoke_mode: RESPONSE_STREAM is not supported yet: "
        "function URLs answer BUFFERED only",
    ]


def test_aws_iam_needs_the_admin_credentials_that_requests_are_signed_with(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        functions:
          web:
            handler: handlers.echo.handler
            function_url: {port: 9001, authorization_type: AWS_IAM}
        """,
    )
    assert problems(path) == [
        f"{path}:4: functions.web.function_url.authorization_type: AWS_IAM needs admin.credentials: the "
        "access key that requests are signed with",
    ]


def test_each_url_needs_a_port_of_its_own_and_not_the_admin_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        functions:
          a: {handler: handlers.echo.handler, function_url: {port: 9001}}
          b: {handler: handlers.echo.handler, function_url: {port: 9001, host: 0.0.0.0}}
          c: {handler: handlers.echo.handler, function_url: {port: 8080}}
          d: {handler: handlers.echo.handler, function_url: {port: 0}}
          e: {handler: handlers.echo.handler, function_url: {port: 0}}
        admin: {port: 8080}
        """,
    )
    assert problems(path) == [
        f"{path}:3: functions.b.function_url.port: port 9001 is also functions.a.function_url's",
        f"{path}:4: functions.c.function_url.port: port 8080 is the admin port",
    ]


@pytest.mark.parametrize(
    ("cors", "wrong"),
    [
        ({"allow_methods": ["OPTIONS"]}, "unknown method(s) OPTIONS"),
        ({"allow_methods": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "GET"]}, "at most 6 items"),
        ({"max_age": 86401}, "less than or equal to 86400"),
        ({"allow_headers": ["x header"]}, "should match pattern"),
        ({"allow_origins": ["x" * 254]}, "at most 253 characters"),
        ({"allow_origin": ["*"]}, "Extra inputs are not permitted"),
    ],
)
def test_cors_within_the_lambda_apis_limits(tmp_path: Path, cors: dict[str, Any], wrong: str) -> None:
    with pytest.raises(ValueError, match=wrong.replace("(", r"\(").replace(")", r"\)")):
        FunctionUrl.model_validate({"port": 1, "cors": cors})


def config(url: dict[str, Any] | None, handler: str = "handlers.echo.handler") -> Config:
    function: dict[str, Any] = {"handler": handler}
    if url is not None:
        function["function_url"] = url
    return Config.model_validate({"functions": {"web": function}})


def test_a_reload_that_changes_only_the_url_restarts_the_listener_not_the_function() -> None:
    only_url = diff(config({"port": 9001}), config({"port": 9002}))
    assert (only_url.functions_changed, only_url.function_urls_changed) == (set(), {"web"})
    assert not only_url.empty
    added = diff(config(None), config({"port": 9001}))
    assert (added.functions_changed, added.function_urls_changed) == (set(), {"web"})
    code = diff(config({"port": 9001}), config({"port": 9001}, handler="handlers.other.handler"))
    assert (code.functions_changed, code.function_urls_changed) == ({"web"}, set())
