"""TLS client contexts for Kafka and RabbitMQ connections (SPEC section 16), and what TLS errors mean.

A context verifies the broker's certificate and host name against ``ssl_cafile`` (else the system's
CAs) and presents ``ssl_certfile`` / ``ssl_keyfile`` when the broker asks for a client certificate.
A file that cannot be read is a configuration problem that waiting does not cure: a non-retriable
SourceError naming the key and the file.
"""

from __future__ import annotations

import ssl

from poller.errors import SourceError
from poller.redaction import Secret


def client_context(
    what: str,
    *,
    cafile: str | None,
    certfile: str | None,
    keyfile: str | None,
    password: Secret | None,
) -> ssl.SSLContext:
    """A TLS client context for ``what`` (``"Kafka connection kafka"``). Raises a non-retriable
    SourceError when a file is missing, unreadable or not PEM, or the key does not fit the
    certificate."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise SourceError(f"{what}: cannot use ssl_cafile {cafile}: {_reason(exc)}", retriable=False) from exc
    if certfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile, password.reveal() if password else None)
        except (OSError, ssl.SSLError) as exc:
            files = f"{certfile}" + (f" and ssl_keyfile {keyfile}" if keyfile else "")
            raise SourceError(
                f"{what}: cannot use ssl_certfile {files}: {_reason(exc)}", retriable=False
            ) from exc
    return context


def tls_failure(exc: BaseException) -> str | None:
    """What went wrong in a TLS handshake, in words (``certificate verify failed: unable to get
    local issuer certificate``), or None if ``exc`` is not a TLS error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's certificate was not accepted ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS handshake failed ({exc.reason or exc})"
    return None


def is_refused_handshake(exc: BaseException) -> bool:
    """A certificate that was not accepted, either way round: waiting does not change it."""
    return isinstance(exc, ssl.SSLCertVerificationError) or (
        isinstance(exc, ssl.SSLError) and "CERTIFICATE" in str(exc.reason or "").upper()
    )


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    return exc.strerror or str(exc)
