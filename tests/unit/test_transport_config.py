"""Transport security settings (SPEC section 16): what the config accepts and refuses, and what the
connection helpers hand to each client library. Real handshakes: tests/integration/test_transport_security.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from pydantic import ValidationError

from poller.config import AwsConnection, KafkaConnection, RabbitMQConnection
from poller.connections import aws, kafka
from poller.connections.rabbitmq import tls_context
from poller.errors import SourceError


def messages(error: pytest.ExceptionInfo[ValidationError]) -> str:
    return "; ".join(str(item["msg"]) for item in error.value.errors(include_url=False))


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    leaf = ca.issue_cert("poller-client")
    files = {"ca": directory / "ca.pem", "cert": directory / "cert.pem", "key": directory / "key.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    leaf.cert_chain_pems[0].write_to_path(files["cert"])
    leaf.private_key_pem.write_to_path(files["key"])
    return files


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_sasl_ssl_options_carry_the_mechanism_credentials_and_a_verifying_context(
    mechanism: str, pem_files: dict[str, Path]
) -> None:
    connection = KafkaConnection(
        type="kafka",
        bootstrap_servers="k1:9093,k2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,  # type: ignore[arg-type]
        sasl_username="orders",
        sasl_password="the-password",  # type: ignore[arg-type]
        ssl_cafile=str(pem_files["ca"]),
        ssl_certfile=str(pem_files["cert"]),
        ssl_keyfile=str(pem_files["key"]),
    )
    options = kafka.client_options(connection)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("orders", "the-password")
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_kafka_plaintext_has_no_tls_or_sasl() -> None:
    options = kafka.client_options(KafkaConnection(type="kafka", bootstrap_servers="k:9092"))
    assert "ssl_context" not in options
    assert "sasl_mechanism" not in options


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "SASL needs sasl_mechanism"),
        ({"sasl_username": "u"}, "sasl_username: only with security_protocol SASL_PLAINTEXT or SASL_SSL"),
        (
            {"ssl_cafile": "/ca.pem"},
            "ssl_cafile: only for TLS connections, not with security_protocol PLAINTEXT",
        ),
        (
            {"security_protocol": "SSL", "ssl_keyfile": "/key.pem"},
            "ssl_keyfile and ssl_password need ssl_certfile",
        ),
        ({"security_protocol": "TLS"}, "Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"},
            "Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'",
        ),
    ],
)
def test_kafka_security_settings_that_do_not_fit_are_errors(settings: dict[str, str], expected: str) -> None:
    with pytest.raises(ValidationError) as error:
        KafkaConnection.model_validate({"type": "kafka", "bootstrap_servers": "k:9092", **settings})
    assert expected in messages(error)


def test_an_unreadable_tls_file_is_a_clear_non_retriable_error(
    tmp_path: Path, pem_files: dict[str, Path]
) -> None:
    missing = tmp_path / "nowhere.pem"
    connection = KafkaConnection(
        type="kafka", bootstrap_servers="k:9093", security_protocol="SSL", ssl_cafile=str(missing)
    )
    with pytest.raises(SourceError) as raised:
        kafka.client_options(connection)
    assert not raised.value.retriable
    assert str(raised.value) == f"Kafka at k:9093: cannot use ssl_cafile {missing}: No such file or directory"
    not_a_key = RabbitMQConnection(
        type="rabbitmq",
        url="amqps://u:p@h:5671/",  # type: ignore[arg-type]
        ssl_certfile=str(pem_files["cert"]),
        ssl_keyfile=str(pem_files["ca"]),  # a certificate where the key should be
    )
    with pytest.raises(SourceError, match=r"cannot use ssl_certfile .*cert.pem and ssl_keyfile .*ca.pem"):
        tls_context(not_a_key)


def test_rabbitmq_tls_files_need_an_amqps_url(pem_files: dict[str, Path]) -> None:
    with pytest.raises(ValidationError) as error:
        RabbitMQConnection(type="rabbitmq", url="amqp://u:p@h/", ssl_cafile=str(pem_files["ca"]))  # type: ignore[arg-type]
    assert "ssl_cafile: only for TLS connections, not with an amqp:// URL (use amqps://)" in messages(error)
    plain = RabbitMQConnection(type="rabbitmq", url="amqp://u:p@h/")  # type: ignore[arg-type]
    assert tls_context(plain) is None
    secure = RabbitMQConnection(type="rabbitmq", url="amqps://u:p@h/", ssl_cafile=str(pem_files["ca"]))  # type: ignore[arg-type]
    context = tls_context(secure)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_aws_verify_and_credentials_reach_the_client(pem_files: dict[str, Path]) -> None:
    default = aws.client_options(AwsConnection(type="aws"), "sqs")
    assert "verify" not in default
    assert "aws_secret_access_key" not in default
    bundle = AwsConnection(
        type="aws",
        verify=str(pem_files["ca"]),
        access_key_id="AKID",
        secret_access_key="the-secret-key",  # type: ignore[arg-type]
        session_token="the-token",  # type: ignore[arg-type]
    )
    options = aws.client_options(bundle, "sqs")
    assert options["verify"] == str(pem_files["ca"])
    assert (options["aws_access_key_id"], options["aws_secret_access_key"]) == ("AKID", "the-secret-key")
    assert options["aws_session_token"] == "the-token"
    assert aws.client_options(AwsConnection(type="aws", verify=False), "s3")["verify"] is False


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"access_key_id": "AKID"}, "access_key_id and secret_access_key go together"),
        ({"session_token": "t"}, "session_token needs access_key_id and secret_access_key"),
        ({"verify": " "}, "must be true, false or the path of a CA bundle"),
    ],
)
def test_aws_settings_that_do_not_fit_are_errors(settings: dict[str, str], expected: str) -> None:
    with pytest.raises(ValidationError) as error:
        AwsConnection.model_validate({"type": "aws", **settings})
    assert expected in messages(error)
