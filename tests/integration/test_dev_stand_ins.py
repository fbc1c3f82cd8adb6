"""`poller dev` ends the stand-in brokers it started with it: on Ctrl-C it stops them, and when it
has no time to (a second Ctrl-C, a kill -9) the kernel does, with their parent-death signal."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from support import INTEGRATION, REPO, unique_name, wait_exit, wait_for

from poller.devtools.processes import port_open

pytestmark = pytest.mark.kafka


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def ready(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


def spawn_dev(config: Path) -> subprocess.Popen[bytes]:
    """``poller dev -c config`` in the config's directory (its stand-ins' state goes there), its
    output to ``dev.log`` beside it."""
    with open(config.with_name("dev.log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "poller", "dev", "-c", str(config)],
            cwd=config.parent,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(INTEGRATION), str(REPO)])},
            stdout=log,
            stderr=log,
        )


# A second Ctrl-C makes poller leave with os._exit, as a kill -9 does: no time for the stand-ins.
@pytest.mark.parametrize("end", ["SIGINT", "SIGKILL"])
async def test_the_kafka_stand_in_ends_with_poller_dev(end: str, tmp_path: Path) -> None:
    kafka_port, admin_port = free_port(), free_port()
    config = {
        "connections": {"kafka": {"type": "kafka", "bootstrap_servers": f"127.0.0.1:{kafka_port}"}},
        "functions": {"fn": {"handler": "recorder.collect"}},
        "mappings": {
            "m": {
                "function_name": "fn",
                "source": {"type": "kafka", "connection": "kafka", "topics": [unique_name("dev")]},
            }
        },
        "admin": {"port": admin_port},
    }
    path = tmp_path / "dev.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    process = spawn_dev(path)
    try:
        await wait_for(lambda: ready(admin_port), timeout=90, message="poller dev is ready")
        assert port_open("127.0.0.1", kafka_port), "poller dev started tansu on the config's port"
        if end == "SIGKILL":
            process.kill()
        else:
            process.send_signal(signal.SIGINT)
        await wait_exit(process, 60)
        await wait_for(
            lambda: not port_open("127.0.0.1", kafka_port),
            timeout=15,
            message=f"tansu gone after {end}",
        )
    finally:
        if process.poll() is None:
            process.kill()
