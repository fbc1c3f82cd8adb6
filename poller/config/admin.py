"""The admin server's settings (SPEC sections 8, 13 and 16): where it listens, the bearer token of
its endpoints, and the credentials that requests to its Lambda Invoke API must be signed with."""

from __future__ import annotations

from pydantic import Field, field_validator

from poller.config.base import Model
from poller.redaction import Secret

# A signature's credential scope is KEY/DATE/REGION/SERVICE/aws4_request: no slash in the key id.
ACCESS_KEY_ID_PATTERN = r"^[^/\s]{1,128}$"


class AdminCredentials(Model):
    access_key_id: str = Field(
        pattern=ACCESS_KEY_ID_PATTERN,
        description="The access key id that signed Invoke API requests name (AWS's are AKIA... "
        "style; any text without a slash or space will do).",
    )
    secret_access_key: Secret = Field(
        description="Its secret, e.g. ${POLLER_SECRET_ACCESS_KEY}; never logged."
    )

    @field_validator("secret_access_key")
    @classmethod
    def _not_empty(cls, secret: Secret) -> Secret:
        if not secret:
            raise ValueError("must not be empty")
        return secret


class Admin(Model):
    host: str = Field("127.0.0.1", description="Loopback by default; 0.0.0.0 in a container.")
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port (it is logged).")
    token: Secret | None = Field(
        None,
        description="Bearer token every endpoint but /healthz and /readyz requires, e.g. "
        "${POLLER_ADMIN_TOKEN}. The Invoke API needs it too, unless credentials are set.",
    )
    credentials: AdminCredentials | None = Field(
        None,
        description="The Lambda Invoke API (POST /2015-03-31/functions/NAME/invocations) accepts only "
        "requests signed with these (AWS Signature Version 4, service lambda, any region); the bearer "
        "token then does not apply to it.",
    )
