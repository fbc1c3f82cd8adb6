"""The resident memory of an environment: the sum over the processes of its process group.

Lambda limits an environment's memory with a cgroup. Poller cannot count on owning one (a host may
own the cgroup it runs in, and ``RLIMIT_AS`` counts address space, which V8 reserves by the
gigabyte), so it samples resident set sizes from ``/proc`` and kills past the limit. The kernel's
own high-water mark of each process (``VmHWM``) catches what a sample missed between two looks.

The kernel keeps no list of a group's processes. Its members are found every
:data:`RESCAN_INTERVAL` seconds by walking the leader's descendants (``/proc/PID/task/TID/children``:
a few reads for the usual environment of one process), keeping the members found before that are
still in the group (a child that was orphaned, e.g. a daemon, leaves the leader's tree but not its
group). Only every :data:`FULL_SCAN_INTERVAL` seconds, or where the kernel has no ``children``
files, is the whole of ``/proc`` read, a read per process on the machine: with many environments
on a busy host, scanning it every second for each of them would cost more than the functions.

The high-water marks are read after every invocation, so each member's ``status`` file stays open
and is read again from its start: in a busy poller, opening and closing it took about 15 of the
35 µs that a read per invocation cost (measured); and the open file is bound to the process it was
opened for, not to a pid that the kernel may give another.
"""

from __future__ import annotations

import os
import time

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024
RESCAN_INTERVAL = 1.0  # seconds between looks for the group's members among the leader's descendants
FULL_SCAN_INTERVAL = 30.0  # seconds between scans of all of /proc for them
_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


class ProcessGroupMemory:
    """Samples the memory of the process group ``pgid`` (its leader's pid)."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self._members: set[int] = {pgid}
        self._status: dict[int, int] = {}  # pid -> descriptor of its /proc/PID/status, opened by peak()
        self._scanned = 0.0
        # A new group holds the leader alone, which the walk of its descendants finds.
        self._fully_scanned = time.monotonic()

    def resident(self) -> int:
        """Bytes resident in the group's processes now (0 once they are all gone)."""
        self._rescan_if_due()
        total = 0
        for pid in list(self._members):
            pages = _resident_pages(pid)
            if pages is None:
                self._members.discard(pid)
            else:
                total += pages * PAGE_SIZE
        return total

    def peak(self) -> int:
        """The sum of the group's live processes' high-water marks of resident memory, in bytes."""
        self._rescan_if_due()
        for pid in set(self._status) - self._members:
            os.close(self._status.pop(pid))
        return sum(self._high_water_kb(pid) * 1024 for pid in list(self._members))

    def close(self) -> None:
        """Close the ``status`` files that :meth:`peak` keeps open (it opens them again if called)."""
        for descriptor in self._status.values():
            os.close(descriptor)
        self._status.clear()

    def _high_water_kb(self, pid: int) -> int:
        # One pread and a search, not a Python loop over the file's lines.
        try:
            descriptor = self._status.get(pid)
            if descriptor is None:
                descriptor = self._status[pid] = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
            status = os.pread(descriptor, 16384, 0)
            start = status.index(b"VmHWM:") + 6
            return int(status[start : status.index(b"kB", start)])
        except (OSError, ValueError):  # gone, or a zombie (whose file reads without VmHWM)
            if pid in self._status:
                os.close(self._status.pop(pid))
            return 0

    def _rescan_if_due(self) -> None:
        now = time.monotonic()
        if now - self._scanned < RESCAN_INTERVAL:
            return
        self._scanned = now
        found = descendants(self.pgid)
        if found is None or now - self._fully_scanned >= FULL_SCAN_INTERVAL:
            self._fully_scanned = now
            self._members = group_members(self.pgid) | {self.pgid}
            return
        known = {pid for pid in self._members - found if _process_group(pid) == self.pgid}
        self._members = {pid for pid in found if _process_group(pid) == self.pgid} | known | {self.pgid}


def group_members(pgid: int) -> set[int]:
    """The pids of every process whose process group is ``pgid``: a read per process on the host."""
    return {
        int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _process_group(int(entry)) == pgid
    }


def descendants(pid: int) -> set[int] | None:
    """``pid`` and the pids of its children, their children and so on; None where the kernel
    keeps no ``children`` files (``CONFIG_PROC_CHILDREN``) or ``pid`` is gone."""
    if not _CHILDREN_FILES or not os.path.exists(f"/proc/{pid}"):
        return None
    found: set[int] = set()
    waiting = [pid]
    while waiting:
        parent = waiting.pop()
        found.add(parent)
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # ended meanwhile
        for thread in threads:
            try:
                with open(f"/proc/{parent}/task/{thread}/children", "rb") as file:
                    children = [int(child) for child in file.read().split()]
            except OSError:
                continue  # the thread ended meanwhile
            waiting.extend(child for child in children if child not in found)
    return found


def _process_group(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None  # ended meanwhile
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    return int(fields[2]) if len(fields) > 2 else None


def _resident_pages(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            return int(file.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
