"""The resident memory of an environment: the sum over the processes of its process group.

Lambda limits an environment's memory with a cgroup. Poller cannot count on owning one (a host may
own the cgroup it runs in, and ``RLIMIT_AS`` counts address space, which V8 reserves by the
gigabyte), so it samples resident set sizes from ``/proc`` and kills past the limit. The kernel's
own high-water mark of each process (``VmHWM``) catches what a sample missed between two looks.

A process group's members are found by scanning ``/proc`` (the kernel keeps no list of a group's
processes), which costs a read per process on the machine: that is done every
:data:`RESCAN_INTERVAL` seconds only; in between, the members known are sampled, which for the
usual environment (one process) is one small read.
"""

from __future__ import annotations

import os
import time

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024
RESCAN_INTERVAL = 1.0  # seconds between scans of /proc for the group's members


class ProcessGroupMemory:
    """Samples the memory of the process group ``pgid`` (its leader's pid)."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self._members: set[int] = {pgid}
        self._scanned = 0.0

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
        return sum(_high_water_kb(pid) * 1024 for pid in list(self._members))

    def _rescan_if_due(self) -> None:
        now = time.monotonic()
        if now - self._scanned >= RESCAN_INTERVAL:
            self._scanned = now
            self._members = group_members(self.pgid) | {self.pgid}


def group_members(pgid: int) -> set[int]:
    """The pids of every process whose process group is ``pgid``."""
    members = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
        except OSError:
            continue  # ended meanwhile
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.add(int(entry))
    return members


def _resident_pages(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm", "rb") as file:
            return int(file.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _high_water_kb(pid: int) -> int:
    # Read once per invocation: one read and a search, not a Python loop over the file's lines.
    try:
        with open(f"/proc/{pid}/status", "rb") as file:
            status = file.read()
        start = status.index(b"VmHWM:") + 6
        return int(status[start : status.index(b"kB", start)])
    except (OSError, ValueError):
        return 0
