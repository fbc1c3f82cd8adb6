"""An environment's process: spawned in a process group of its own, dying with poller, its exit
watched through a pidfd and its output read from one pipe, both on the event loop (no thread and
no task per environment, with asyncio's loop and with uvloop alike).

Linux only: the parent-death signal is ``prctl(PR_SET_PDEATHSIG)``. Where ``pidfd_open`` is
missing (a kernel before 5.3, a seccomp profile or a sandbox that refuses it, valgrind), a thread
per environment waits for its exit instead, without reaping it: the group is killed before the
leader is reaped, either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_READ_CHUNK = 64 * 1024
# Resolved once in poller, so that the forked child only calls it (no loading, no allocation).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def describe_exit(returncode: int) -> str:
    """An exit as Lambda words it (Go's ``ProcessState.String``): ``exit status 3``, ``signal: killed``."""
    if returncode < 0:
        name = signal.strsignal(-returncode) or f"signal {-returncode}"
        return f"signal: {name.lower()}"
    return f"exit status {returncode}"


class EnvironmentProcess:
    """The root process of one environment, the leader of its process group.

    :attr:`exited` resolves with the return code (negative: killed by that signal) once the
    process ended; by then every other process of its group has been killed too, and what it
    wrote before it ended has gone to ``on_output``."""

    def __init__(
        self, popen: subprocess.Popen[bytes], output: int, on_output: Callable[[bytes], None]
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._popen = popen
        self.pid = popen.pid
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self._on_output = on_output
        self._output: int | None = output
        self._loop.add_reader(output, self.read_output)
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError as exc:  # ENOSYS or EPERM: no pidfds here
            _say_once_that_pidfds_are_missing(str(exc))
            threading.Thread(target=self._wait_for_exit, name=f"environment-{self.pid}", daemon=True).start()
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        on_output: Callable[[bytes], None],
        pass_fds: Sequence[int] = (),
    ) -> EnvironmentProcess:
        """Start ``argv`` as a new session (its own process group) whose stdout and stderr go, in
        the order they were written, to ``on_output``. Call it from the event loop's thread: the
        parent-death signal is armed for the thread that forks. Raises OSError when the program
        cannot be started (missing, not executable). ``pass_fds``: descriptors it inherits."""
        read_end, write_end = os.pipe()
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=write_end,
                stderr=write_end,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
                preexec_fn=die_with(os.getpid()),  # only a prctl call and a getppid
                close_fds=True,
                pass_fds=tuple(pass_fds),
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        return cls(popen, read_end, on_output)

    @property
    def running(self) -> bool:
        return not self.exited.done()

    def read_output(self) -> None:
        """Pass on whatever the process wrote that is still in the pipe. The environment calls it
        when an answer arrives too, so that every line a handler printed before it answered is
        logged as part of its invocation."""
        fd = self._output
        while fd is not None:
            try:
                data = os.read(fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if not data:  # every writer is gone
                self._close_output()
                return
            self._on_output(data)

    def kill(self) -> None:
        """SIGKILL every process of the environment's group, at once."""
        self._signal_group(signal.SIGKILL)

    async def stop(self, grace: float) -> int:
        """SIGTERM the group, SIGKILL it after ``grace`` seconds; return the exit code."""
        if self.running:
            self._signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    return await asyncio.shield(self.exited)
            except TimeoutError:
                self.kill()
        return await self.exited

    def _signal_group(self, signum: int) -> None:
        # While the leader is not reaped (exited is not done) its pid is still its group's id:
        # the signal cannot reach anybody else's processes.
        if self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def _wait_for_exit(self) -> None:
        """The watch where there is no pidfd, on a thread of its own: wait until the process has
        exited, leaving it to be reaped by :meth:`_on_exit` (``WNOWAIT``), on the loop."""
        with contextlib.suppress(ChildProcessError):  # reaped already: nothing to wait for
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        # Before reaping, while the group id is surely this environment's: nothing of it may keep
        # running (a child the handler forked, a process of a bootstrap).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        returncode = self._popen.wait()  # exited: returns at once
        self.read_output()
        self._close_output()
        self.exited.set_result(returncode)

    def _close_output(self) -> None:
        if self._output is not None:
            self._loop.remove_reader(self._output)
            os.close(self._output)
            self._output = None


@functools.cache
def _say_once_that_pidfds_are_missing(reason: str) -> None:
    log.info("pidfd_open is not available here (%s): a thread per environment waits for its exit", reason)


def die_with(parent: int) -> Callable[[], None]:
    """The child's first act after fork: ask the kernel for SIGKILL when its parent ``parent``
    (poller) dies, even by ``kill -9``, and leave at once if it died before that was armed."""

    def arm() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm
