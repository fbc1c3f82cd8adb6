"""Secrets never leak (SPEC section 16): the secret types of the config and the redaction of text,
checked on every way out that does not need a broker (log lines, errors, spans, config errors, the
JSON Schema). The broker-backed end-to-end check is tests/integration/test_secrets.py."""

from __future__ import annotations

import io
import json
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from support import logging_to

from poller.config import AwsConnection, KafkaConnection, RabbitMQConnection, load_config
from poller.config.schema import config_json_schema
from poller.errors import ConfigError, DestinationError, SourceError
from poller.observability.logs import JsonFormatter, TextFormatter
from poller.observability.tracing import Telemetry, record_error
from poller.redaction import MASK, REVEAL, RedactingFilter, Secret, SecretUrl, redact, remember

PASSWORD = "kafka-sasl-Pa55word"
AMQP_PASSWORD = "amqp-Pa55/word"  # a "/" that the URL must percent-encode
AMQP_URL = "amqp://orders:amqp-Pa55%2Fword@rabbit.internal:5672/prod"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def kafka(**overrides: object) -> KafkaConnection:
    settings: dict[str, object] = {
        "type": "kafka",
        "bootstrap_servers": "kafka:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "orders",
        "sasl_password": PASSWORD,
    }
    return KafkaConnection.model_validate(settings | overrides)


def test_a_secret_renders_masked_everywhere_but_reveal() -> None:
    connection = kafka()
    assert isinstance(connection.sasl_password, Secret)
    assert connection.sasl_password.reveal() == PASSWORD
    for text in (
        str(connection),
        repr(connection),
        f"{connection.sasl_password}",
        connection.model_dump_json(),
        json.dumps(connection.model_dump(mode="json")),
    ):
        assert PASSWORD not in text
        assert MASK in text
    # Equality compares the values, so that two loads of one file are the same config.
    assert connection == kafka()
    assert connection != kafka(sasl_password="another-password")


def test_a_url_secret_shows_the_url_with_its_password_masked() -> None:
    connection = RabbitMQConnection(type="rabbitmq", url=AMQP_URL)  # type: ignore[arg-type]
    assert isinstance(connection.url, SecretUrl)
    assert str(connection.url) == f"amqp://orders:{MASK}@rabbit.internal:5672/prod"
    assert connection.url.reveal() == AMQP_URL
    for text in (repr(connection), connection.model_dump_json()):
        assert "Pa55" not in text
    assert connection.model_dump(mode="json")["url"] == f"amqp://orders:{MASK}@rabbit.internal:5672/prod"
    # Writing a config back out to a file (the tests do) takes asking for the secrets by name.
    revealed = connection.model_dump(mode="json", context=REVEAL)["url"]
    assert revealed == AMQP_URL


def test_redact_masks_remembered_values_in_either_encoding_and_url_credentials() -> None:
    RabbitMQConnection(type="rabbitmq", url=AMQP_URL)  # type: ignore[arg-type]
    text = redact(
        f"login with {AMQP_PASSWORD} or amqp-Pa55%2Fword failed; tried https://bob:hunter2@example.com/x"
    )
    assert "Pa55" not in text
    assert "hunter2" not in text
    assert text == f"login with {MASK} or {MASK} failed; tried https://bob:{MASK}@example.com/x"


def test_short_values_are_masked_inside_urls_only() -> None:
    remember("abc")  # below the minimum: masking every "abc" would wreck the logs
    assert redact("abcdef amqp://u:abc@h/") == f"abcdef amqp://u:{MASK}@h/"


def test_aws_credentials_in_the_config_are_secrets() -> None:
    connection = AwsConnection(type="aws", access_key_id="AKIDEXAMPLE", secret_access_key=AWS_SECRET)  # type: ignore[arg-type]
    assert AWS_SECRET not in repr(connection)
    assert redact(f"signature computed with {AWS_SECRET}") == f"signature computed with {MASK}"


def test_poller_errors_redact_their_messages() -> None:
    kafka()
    error = SourceError(f"cannot connect to amqp://u:topsecret@h/ with {PASSWORD}")
    assert str(error) == f"cannot connect to amqp://u:{MASK}@h/ with {MASK}"
    assert PASSWORD not in str(DestinationError(f"refused {PASSWORD}"))
    problems = ConfigError([f"x.yaml:3: bad value {PASSWORD}"])
    assert PASSWORD not in str(problems)
    assert PASSWORD not in "".join(problems.problems)


@pytest.fixture
def log_stream() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    with logging_to(handler, "poller.test.redaction") as logger:
        yield logger, stream, handler


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_log_lines_and_tracebacks_carry_no_secret(
    formatter: logging.Formatter, log_stream: tuple[logging.Logger, io.StringIO, logging.Handler]
) -> None:
    logger, stream, handler = log_stream
    handler.setFormatter(formatter)
    kafka()
    logger.warning("connecting with %s to %s", PASSWORD, "amqp://u:also-secret@h:5672/")
    try:
        raise RuntimeError(f"client said: bad password {PASSWORD} for amqp://u:also-secret@h/")
    except RuntimeError:
        logger.exception("it failed")
    output = stream.getvalue()
    assert PASSWORD not in output
    assert "also-secret" not in output
    assert output.count(MASK) >= 4
    assert "RuntimeError" in output  # the traceback is still there, only masked


def test_spans_record_errors_redacted() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider)
    kafka()
    with telemetry.tracer.start_as_current_span("attempt") as span:
        record_error(
            span, "Handler.Error", f"db login {PASSWORD} refused", f"at amqp://u:x-secret@h/ {PASSWORD}"
        )
    with pytest.raises(ValueError, match="refused"), telemetry._span("send x", SpanKind.PRODUCER, {}):
        raise ValueError(f"destination refused {PASSWORD}")
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    for span in spans:
        texts = [span.status.description or ""] + [
            str(value) for event in span.events for value in (event.attributes or {}).values()
        ]
        assert not any(PASSWORD in text or "x-secret" in text for text in texts), texts
        assert any(MASK in text for text in texts)


def test_config_errors_never_quote_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    unencoded = "amqp://orders:amqp-Pa55/word@rabbit.internal:5672/prod"  # breaks the URL
    path.write_text(
        textwrap.dedent(f"""\
        connections:
          rabbit: {{type: rabbitmq, url: "{unencoded}"}}
          kafka: {{type: kafka, bootstrap_servers: "k:9092", security_protocol: SASL_PLAINTEXT,
                   sasl_mechanism: PLAIN, sasl_username: orders, sasl_password: "{PASSWORD}",
                   ssl_cafile: /ca.pem}}
          aws: {{type: aws, access_key_id: AKID, secret_access_key: "{AWS_SECRET}", verify: ""}}
        """)
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, check_handlers=False)
    text = str(raised.value)
    for secret in ("Pa55", PASSWORD, AWS_SECRET):
        assert secret not in text
    assert "connections.rabbit.url: not an AMQP URL" in text
    assert "ssl_cafile: only for TLS connections" in text
    assert "connections.aws.verify" in text


def test_the_json_schema_marks_secrets() -> None:
    definitions = config_json_schema()["$defs"]
    password = definitions["KafkaConnection"]["properties"]["sasl_password"]["anyOf"][0]
    assert password == {"type": "string", "format": "password", "writeOnly": True}
    assert definitions["RabbitMQConnection"]["properties"]["url"]["type"] == "string"


def test_a_password_read_as_a_number_says_how_to_fix_it(tmp_path: Path) -> None:
    path = tmp_path / "digits.yaml"
    path.write_text(
        "connections:\n"
        "  kafka: {type: kafka, bootstrap_servers: k:9092, security_protocol: SASL_PLAINTEXT,\n"
        "          sasl_mechanism: PLAIN, sasl_username: u, sasl_password: ${PIN}}\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={"PIN": "80417362"}, check_handlers=False)
    assert raised.value.problems == [
        f'{path}:3: connections.kafka.sasl_password: must be text: quote the value ("${{VAR}}")'
    ]
