"""The harness's own stand-in brokers, on ports of their own.

The test suite and ``poller dev`` use the default ports (Kafka 9092, kinesalite 4567, moto 4566);
the benchmarks start separate brokers on other ports so that their load never disturbs a test run
and the reverse. A broker that this module starts is stopped when the harness exits; one already
listening on a benchmark port (left by an earlier run) is used and left alone. RabbitMQ is the
exception: the one on 5672 is shared, and every run uses queues of its own.

LocalStack (for SQS: moto's SQS costs O(queue depth) per call) runs in host mode from a Python 3.13
virtualenv under ``.bench/``, which :func:`ensure_localstack` creates on first use, with the pins
below that its host mode needs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from contextlib import AsyncExitStack
from pathlib import Path

from poller.devtools.standins import LOOPBACK, StandIn, StandInError, port_open, start_kafka, start_kinesalite

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".bench"
BROKER_STATE = STATE / "brokers"

KAFKA_PORT = 19092
KINESALITE_PORT = 14567
LOCALSTACK_PORT = 14566
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")

LOCALSTACK_VERSION = "2026.3.0"
# Newer versions of these break LocalStack's imports.
LOCALSTACK_PINS = ["cbor2<5.7", "pyopenssl==24.2.1", "cryptography>=43,<44", "service_identity<24.3"]


def _owned(stack: AsyncExitStack, stand_in: StandIn | None, name: str, port: int) -> None:
    if stand_in is None:
        log.info("%s: using the server already on %s:%d", name, LOOPBACK, port)
    else:
        log.info("%s: started on %s (pid %d)", name, stand_in.address, stand_in.process.pid)
        stack.callback(stand_in.stop)


def kafka(stack: AsyncExitStack) -> str:
    _owned(stack, start_kafka(KAFKA_PORT, BROKER_STATE), "kafka (tansu)", KAFKA_PORT)
    return f"{LOOPBACK}:{KAFKA_PORT}"


def kinesalite(stack: AsyncExitStack) -> str:
    _owned(stack, start_kinesalite(KINESALITE_PORT, BROKER_STATE), "kinesalite", KINESALITE_PORT)
    return f"http://{LOOPBACK}:{KINESALITE_PORT}"


def localstack(stack: AsyncExitStack) -> str | None:
    """LocalStack's SQS on loopback; None (with a logged reason) when it cannot be set up here."""
    url = f"http://{LOOPBACK}:{LOCALSTACK_PORT}"
    if port_open(LOOPBACK, LOCALSTACK_PORT):
        return url if _localstack_healthy(url) else None
    try:
        python = ensure_localstack()
    except StandInError as exc:
        log.warning("LocalStack unavailable: %s", exc)
        return None
    data = STATE / "localstack-data"
    data.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        # hypercorn honours the host part of GATEWAY_LISTEN; the default gateway binds 0.0.0.0.
        "GATEWAY_SERVER": "hypercorn",
        "GATEWAY_LISTEN": f"{LOOPBACK}:{LOCALSTACK_PORT}",
        "SERVICES": "sqs",
        "DNS_ADDRESS": "0",
        "PERSISTENCE": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        "FILESYSTEM_ROOT": str(data),
    }
    BROKER_STATE.mkdir(parents=True, exist_ok=True)
    log_path = BROKER_STATE / "localstack.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [python, "-m", "localstack.runtime.main"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of the harness must not skip its clean stop
        )
    stand_in = StandIn("localstack", LOCALSTACK_PORT, process, log_path)
    deadline = time.monotonic() + 120
    while not _localstack_healthy(url):
        if process.poll() is not None or time.monotonic() > deadline:
            stand_in.stop()
            log.warning("LocalStack did not become healthy; see %s", log_path)
            return None
        time.sleep(0.25)
    _owned(stack, stand_in, "localstack", LOCALSTACK_PORT)
    return url


def _localstack_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_localstack/health", timeout=2) as response:
            body = response.read()
        return b'"sqs": "available"' in body or b'"sqs": "running"' in body
    except OSError:
        return False


def ensure_localstack() -> str:
    """The Python of a LocalStack host-mode virtualenv under .bench/, created if missing (it needs
    Python 3.13 and PyPI; it takes a few minutes once)."""
    venv = STATE / "localstack-venv"
    python = venv / "bin" / "python"
    if (venv / ".ready").exists():
        return str(python)
    base = _python313()
    if base is None:
        raise StandInError("LocalStack needs Python 3.13 (python3.13 or a pyenv 3.13) and none was found")
    log.info("installing LocalStack %s into %s (once; a few minutes)", LOCALSTACK_VERSION, venv)
    try:
        if not python.exists():
            _run([base, "-m", "venv", str(venv)])
        pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
        download = STATE / "localstack-download"
        _run([*pip, "download", "--no-deps", f"localstack-core=={LOCALSTACK_VERSION}", "-d", str(download)])
        wheel = next(download.glob("localstack_core-*.whl"))
        # The runtime extras minus amazon-kclpy, whose build downloads jars from Maven.
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            requirements = [
                line.split(":", 1)[1].split(";")[0].replace(" ", "")
                for line in archive.read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:")
                and re.search(r'extra == "(runtime|base-runtime)"', line)
                and "kclpy" not in line
                and "localstack-core[" not in line
            ]
        _run([*pip, "install", str(wheel), *requirements])
        _run([*pip, "install", *LOCALSTACK_PINS])
    except (subprocess.CalledProcessError, StopIteration, OSError) as exc:
        raise StandInError(f"installing LocalStack failed: {exc}") from exc
    (venv / ".ready").touch()
    return str(python)


def _python313() -> str | None:
    found = shutil.which("python3.13")
    if found and subprocess.run([found, "--version"], capture_output=True, check=False).returncode == 0:
        return found
    for root in (Path.home() / ".pyenv" / "versions").glob("3.13*"):
        candidate = root / "bin" / "python3.13"
        if candidate.exists():
            return str(candidate)
    return None


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sys.stderr)
