"""AWS Signature Version 4 checks of the requests that poller's Invoke API receives (SPEC section 16).

AWS defines the signature at https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv.html.
The check does not sign anything itself: it recomputes the signature with botocore's own SigV4
signer over the request exactly as it arrived (the method, the path and query as sent, the headers
that the ``Authorization`` header says were signed, the SHA-256 of the body) and compares the two
in constant time. The path is taken still percent-encoded, as the client signed it: botocore's
signer encodes it once more, as SigV4 wants for every service but S3, on both sides.

What is refused, and with what, follows AWS: no ``Authorization`` header is
``MissingAuthenticationTokenException``; one that is not a SigV4 header, or lacks its date,
``IncompleteSignatureException``; an unknown access key id ``UnrecognizedClientException``; a
signature that does not match, a scope for another service, or a date more than 15 minutes
from now ``InvalidSignatureException``. All of them are 403s.
"""

from __future__ import annotations

import hmac
import time
from calendar import timegm
from collections.abc import Callable
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials
from multidict import MultiMapping

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_SECONDS = 15 * 60  # AWS refuses a signature dated further than this from its own clock
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
CONTENT_SHA256_HEADER = "x-amz-content-sha256"


@dataclass(frozen=True)
class SignatureRejected:
    """Why a request's signature was refused: AWS's error name and message (a 403)."""

    code: str
    message: str


@dataclass(frozen=True)
class _Authorization:
    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


class SignatureVerifier:
    """Checks that requests were signed with one access key (``access_key_id`` and
    ``secret_access_key``) for ``service``, in any region. ``clock`` gives the time in epoch
    seconds (injected by tests)."""

    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        *,
        service: str = "lambda",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.access_key_id = access_key_id
        self._credentials = Credentials(access_key_id, secret_access_key)
        self._service = service
        self._clock = clock

    def verify(
        self, method: str, raw_path: str, headers: MultiMapping[str], payload_sha256: str
    ) -> SignatureRejected | None:
        """None if the request (``raw_path``: path and query as they arrived, still
        percent-encoded; ``payload_sha256``: hex SHA-256 of its body) carries a valid signature of
        this key, else why not."""
        header = headers.get("Authorization")
        if not header:
            return SignatureRejected("MissingAuthenticationTokenException", "Missing Authentication Token")
        authorization = _parse(header)
        if isinstance(authorization, SignatureRejected):
            return authorization
        amz_date = headers.get("X-Amz-Date")
        if not amz_date:
            return SignatureRejected(
                "IncompleteSignatureException",
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
            )
        rejected = self._check_scope(authorization, amz_date)
        if rejected is not None:
            return rejected
        if headers.get("X-Amz-Security-Token") is not None:
            # Temporary credentials: poller knows one long-term key, never a session of it.
            return _unrecognized()
        declared = headers.get(CONTENT_SHA256_HEADER)
        if declared is not None and declared != payload_sha256:
            # The signature would cover the declared hash, not the body that came.
            return SignatureRejected(
                "InvalidSignatureException",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        request = AWSRequest(
            method=method, url=f"http://signed{raw_path}", headers=_signed(headers, authorization)
        )
        request.context["timestamp"] = amz_date
        signer = _ReceivedRequestSigner(
            self._credentials, authorization.service, authorization.region, payload_sha256
        )
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected.encode(), authorization.signature.encode()):
            return SignatureRejected(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check "
                "your AWS Secret Access Key and signing method. Consult the service documentation for "
                "details.",
            )
        return None

    def _check_scope(self, authorization: _Authorization, amz_date: str) -> SignatureRejected | None:
        if not hmac.compare_digest(authorization.access_key_id.encode(), self.access_key_id.encode()):
            return _unrecognized()
        if authorization.service != self._service:
            return SignatureRejected(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{self._service}'.",
            )
        if "host" not in authorization.signed_headers:
            return SignatureRejected(
                "InvalidSignatureException",
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            )
        try:
            signed_at = timegm(time.strptime(amz_date, AMZ_DATE_FORMAT))
        except ValueError:
            return SignatureRejected(
                "IncompleteSignatureException",
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'. See http://en.wikipedia.org/wiki/ISO_8601",
            )
        if authorization.date != amz_date[:8]:
            return SignatureRejected(
                "InvalidSignatureException",
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{authorization.date}' != '{amz_date[:8]}', from '{amz_date}'.",
            )
        now = self._clock()
        if signed_at < now - MAX_SKEW_SECONDS:
            return SignatureRejected(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than {_amz(now - MAX_SKEW_SECONDS)} "
                f"({_amz(now)} - 15 min.)",
            )
        if signed_at > now + MAX_SKEW_SECONDS:
            return SignatureRejected(
                "InvalidSignatureException",
                f"Signature not yet current: {amz_date} is still later than {_amz(now + MAX_SKEW_SECONDS)} "
                f"({_amz(now)} + 15 min.)",
            )
        return None


class _ReceivedRequestSigner(SigV4Auth):  # type: ignore[misc]  # botocore is untyped
    """botocore's signer, told which headers the client signed and what its body hashed to, rather
    than choosing them as it does for a request it sends."""

    def __init__(self, credentials: Credentials, service: str, region: str, payload_sha256: str) -> None:
        super().__init__(credentials, service, region)
        self._payload_sha256 = payload_sha256

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return request.headers

    def payload(self, request: AWSRequest) -> str:
        return self._payload_sha256


def _signed(headers: MultiMapping[str], authorization: _Authorization) -> HTTPHeaders:
    """The headers the client signed, each value as many times as it came (a header named but not
    sent is left out, so the signature cannot match)."""
    signed = HTTPHeaders()
    for name in authorization.signed_headers:
        for value in headers.getall(name, []):
            signed[name] = value  # HTTPHeaders appends: repeated headers stay repeated
    return signed


def _parse(header: str) -> _Authorization | SignatureRejected:
    """``AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b,
    Signature=HEX``."""
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        return SignatureRejected(
            "IncompleteSignatureException",
            f"Authorization header must use the {ALGORITHM} algorithm (AWS Signature Version 4).",
        )
    fields = {}
    for part in rest.split(","):
        key, equals, value = part.strip().partition("=")
        if not equals:
            return SignatureRejected(
                "IncompleteSignatureException",
                "Invalid key=value pair (missing equal-sign) in Authorization header.",
            )
        fields[key] = value
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if not fields.get(name)]
    if missing:
        return SignatureRejected(
            "IncompleteSignatureException",
            " ".join(f"Authorization header requires '{name}' parameter." for name in missing),
        )
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        return SignatureRejected(
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, "
            f"got '{fields['Credential']}'",
        )
    return _Authorization(
        access_key_id=scope[0],
        date=scope[1],
        region=scope[2],
        service=scope[3],
        signed_headers=tuple(fields["SignedHeaders"].lower().split(";")),
        signature=fields["Signature"],
    )


def _unrecognized() -> SignatureRejected:
    return SignatureRejected(
        "UnrecognizedClientException", "The security token included in the request is invalid."
    )


def _amz(seconds: float) -> str:
    return time.strftime(AMZ_DATE_FORMAT, time.gmtime(seconds))
