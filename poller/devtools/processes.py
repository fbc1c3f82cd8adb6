"""The processes behind the stand-in brokers: started in a session of their own with a pid file and
a log in a state directory, waited for until their port answers, and stopped by the object that
started them or, from a script, by their pid files (:func:`stop_recorded`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from poller.errors import PollerError
from poller.runtime.environments.process import die_with

LOOPBACK = "127.0.0.1"
# SIGTERM first so that a broker can close its listener cleanly; SIGKILL only if it ignores that.
STOP_GRACE_SECONDS = 5.0
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 30


class StandInError(PollerError, RuntimeError):
    """A stand-in broker could not be started; the message says why and how to fix it."""


@dataclass
class StandIn:
    """A broker process this module started; the caller owns it and must call :meth:`stop`."""

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    pid_path: Path | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Terminate the process, kill it after ``grace`` seconds, and remove its pid file.

        Safe to call twice. It only ever signals the child held in ``process``, never a pid read
        back from disk, so it cannot hit an unrelated process that reused the pid.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.pid_path is not None:
            # Another start may have rewritten the file since; leave a pid that is not ours.
            if read_pid(self.pid_path) == self.process.pid:
                self.pid_path.unlink(missing_ok=True)
            self.pid_path = None


def port_open(host: str, port: int, timeout: float = 0.25) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds (it cannot tell whose server it is)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def launch(
    name: str,
    argv: Sequence[str],
    port: int,
    state_dir: Path,
    *,
    timeout: float,
    ready: Callable[[], bool] | None = None,
    die_with_starter: bool = False,
) -> StandIn | None:
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"{name}.log"
    pid_path = state_dir / f"{name}.pid"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # poller dev's stand-ins end with it, even when a second Ctrl-C or a kill -9 leaves
            # it no time to stop them; the test harness's outlive each test run, for the next.
            preexec_fn=die_with(os.getpid()) if die_with_starter else None,
        )
    pid_path.write_text(f"{process.pid}\n")
    stand_in = StandIn(name, port, process, log_path, pid_path)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            stand_in.stop()
            if port_open(LOOPBACK, port):
                # Lost a race with another starter, which now serves the port: use theirs.
                return None
            raise StandInError(
                f"{name} exited with code {process.returncode} before listening on {LOOPBACK}:{port}; "
                f"last lines of {log_path}:\n{tail(log_path)}"
            )
        if port_open(LOOPBACK, port) and (ready is None or ready()):
            return stand_in
        if time.monotonic() >= deadline:
            stand_in.stop()
            raise StandInError(
                f"{name} was not ready on {LOOPBACK}:{port} after {timeout:g} s; "
                f"last lines of {log_path}:\n{tail(log_path)}"
            )
        time.sleep(POLL_INTERVAL)


def stop_recorded_processes(
    state_dir: Path, programs: dict[str, str], grace: float = STOP_GRACE_SECONDS
) -> list[str]:
    """Stop every process named by a pid file in ``state_dir``; return what was stopped.

    For scripts and CI traps, where the :class:`StandIn` objects are gone. ``programs`` maps a
    stand-in's name to the program its process runs: a pid whose command line does not run it is not
    signalled (a pid reused by an unrelated process after a crash); its pid file is removed.
    """
    stopped: list[str] = []
    if not state_dir.is_dir():
        return stopped
    for pid_path in sorted(state_dir.glob("*.pid")):
        name = pid_path.stem
        pid = read_pid(pid_path)
        if pid is not None and runs(pid, programs.get(name, name)):
            terminate_pid(pid, grace)
            stopped.append(f"{name} (pid {pid})")
        pid_path.unlink(missing_ok=True)
    return stopped


def find_executable(name: str) -> str | None:
    # A venv's console scripts are not on PATH unless the venv is activated.
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError):
        return False


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read the log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def runs(pid: int, program: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        # Gone, or no /proc to check against: either way, do not signal.
        return False
    head = [arg.decode(errors="replace") for arg in cmdline.split(b"\0")[:2]]
    return any(arg == program or arg.endswith("/" + program) for arg in head)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_pid(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive(pid) and not is_zombie(pid):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(POLL_INTERVAL)


def is_zombie(pid: int) -> bool:
    # A dead child of a still-running parent answers signal 0 until it is reaped.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]
