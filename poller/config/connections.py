"""The ``connections:`` section (SPEC sections 4 and 16): how to reach each broker, securely.

Every secret in it is a :class:`~poller.redaction.Secret` (a URL with credentials a
:class:`~poller.redaction.SecretUrl`): printed, logged or dumped it shows ``******``; the clients in
:mod:`poller.connections` ask for the value itself. TLS settings apply only to TLS connections, so
that a file named for a connection that would not use it is an error rather than a surprise.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from poller.config.base import Model
from poller.redaction import Secret, SecretUrl, remember_url_password


class KafkaConnection(Model):
    type: Literal["kafka"]
    bootstrap_servers: str = Field(description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="With SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_username: str | None = None
    sasl_password: Secret | None = Field(None, description="Never shown: logs and errors print ******.")
    ssl_cafile: str | None = Field(
        None, description="PEM file of the CAs that signed the brokers' certificates (default: the system's)."
    )
    ssl_certfile: str | None = Field(
        None, description="PEM client certificate, for brokers that ask for one."
    )
    ssl_keyfile: str | None = Field(None, description="PEM private key of ssl_certfile (if not inside it).")
    ssl_password: Secret | None = Field(None, description="Password of an encrypted ssl_keyfile.")
    client_id: str = "poller"

    @model_validator(mode="after")
    def _check_security(self) -> KafkaConnection:
        sasl = self.security_protocol.startswith("SASL")
        given = [key for key in _KAFKA_SASL_KEYS if getattr(self, key) is not None]
        if sasl and len(given) < len(_KAFKA_SASL_KEYS):
            raise ValueError("SASL needs sasl_mechanism, sasl_username and sasl_password")
        if not sasl and given:
            raise ValueError(
                f"{', '.join(given)}: only with security_protocol SASL_PLAINTEXT or SASL_SSL, "
                f"not {self.security_protocol}"
            )
        _check_tls_files(
            self, self.security_protocol.endswith("SSL"), f"security_protocol {self.security_protocol}"
        )
        return self


_KAFKA_SASL_KEYS = ("sasl_mechanism", "sasl_username", "sasl_password")
_TLS_FILE_KEYS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")


def _check_tls_files(connection: KafkaConnection | RabbitMQConnection, tls: bool, plain: str) -> None:
    """The ``ssl_*`` keys apply to TLS connections only, and a key goes with a certificate."""
    given = [key for key in _TLS_FILE_KEYS if getattr(connection, key) is not None]
    if given and not tls:
        raise ValueError(f"{', '.join(given)}: only for TLS connections, not with {plain}")
    if connection.ssl_certfile is None and (
        connection.ssl_keyfile is not None or connection.ssl_password is not None
    ):
        raise ValueError("ssl_keyfile and ssl_password need ssl_certfile")


class RabbitMQConnection(Model):
    type: Literal["rabbitmq"]
    url: SecretUrl = Field(
        description="AMQP URL with credentials and virtual host (amqps:// for TLS); its password is "
        "never shown."
    )
    ssl_cafile: str | None = Field(
        None,
        description="amqps: PEM file of the CAs that signed the broker's certificate (default: the system's).",
    )
    ssl_certfile: str | None = Field(
        None, description="amqps: PEM client certificate, for brokers that ask for one."
    )
    ssl_keyfile: str | None = Field(
        None, description="amqps: PEM private key of ssl_certfile (if not inside it)."
    )
    ssl_password: Secret | None = Field(None, description="amqps: password of an encrypted ssl_keyfile.")

    @field_validator("url", mode="before")
    @classmethod
    def _check_url(cls, url: Any) -> Any:
        if not isinstance(url, str):
            return url  # a SecretUrl already, or a type error for pydantic to report
        # Remembered before anything can fail, so that no error about the URL shows its password.
        remember_url_password(url)
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 (parsing it is the check)
        except ValueError:
            # Not the parser's message: it quotes the part of the URL it could not read.
            raise ValueError(
                "not an AMQP URL: the port is not a number (a password with / ? # or @ must be "
                "percent-encoded)"
            ) from None
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ValueError("must look like amqp://user:password@host:5672/vhost (or amqps://)")
        return url

    @model_validator(mode="after")
    def _check_tls(self) -> RabbitMQConnection:
        _check_tls_files(self, self.url.reveal().startswith("amqps:"), "an amqp:// URL (use amqps://)")
        return self

    @property
    def tls(self) -> bool:
        return self.url.reveal().startswith("amqps:")


class AwsConnection(Model):
    type: Literal["aws"]
    region: str | None = Field(
        None, description="Defaults to AWS_REGION / AWS_DEFAULT_REGION, else us-east-1."
    )
    endpoint_url: str | None = Field(None, description="One endpoint for every AWS service (an emulator).")
    endpoint_urls: dict[str, str] = Field(
        default_factory=dict, description="Per-service endpoints, e.g. {kinesis: URL}; override endpoint_url."
    )
    verify: bool | str = Field(
        True,
        description="TLS verification of the endpoints: true (the system's CAs), false (none: only for "
        "an emulator you trust), or the path of a PEM CA bundle.",
    )
    access_key_id: str | None = Field(
        None, description="With secret_access_key: these credentials instead of the standard AWS chain."
    )
    secret_access_key: Secret | None = Field(None, description="Never shown: logs and errors print ******.")
    session_token: Secret | None = Field(None, description="For temporary credentials.")

    @field_validator("verify")
    @classmethod
    def _check_verify(cls, verify: bool | str) -> bool | str:
        if isinstance(verify, str) and not verify.strip():
            raise ValueError("must be true, false or the path of a CA bundle")
        return verify

    @model_validator(mode="after")
    def _check_credentials(self) -> AwsConnection:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together")
        if self.session_token is not None and self.access_key_id is None:
            raise ValueError("session_token needs access_key_id and secret_access_key")
        return self


Connection = Annotated[KafkaConnection | RabbitMQConnection | AwsConnection, Field(discriminator="type")]
