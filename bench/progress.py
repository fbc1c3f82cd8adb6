"""Progress of a consumer under test, shared with the harness through a memory-mapped file.

Every contender (raw loop, FastStream, the poller's handler) calls :meth:`Progress.add` once per
batch it has consumed. The call costs a few microseconds and no system call, so observing a
consumer does not slow it down, and the harness reads the file as often as it likes.

Throughput is measured over the *steady part* of a run, the same way for every contender: between
the moment the consumer's count first reaches ``lo`` (10 % of the records by default, which puts
group join, partition assignment and start-up behind us) and the moment it first reaches ``hi``
(90 %, before the tail, where only the last partitions still have records). The consumer stamps
both moments itself, with the system-wide monotonic clock and its own process CPU time, so the
harness's polling interval does not blur them.

A poller whose handler runs in execution environments has several processes counting into one
file: there (``AWS_LAMBDA_RUNTIME_API`` is set) each update takes the file's lock and adds to the
count the file holds, and the CPU stamped is that of poller and all its environments (poller is
the environments' parent), read from ``/proc``: what the contender as a whole spent.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

# count, lo, hi (targets set by the harness), then (count, monotonic, cpu) at lo and at hi,
# then the monotonic time of the first and of the last update.
_LAYOUT = struct.Struct("<qqq qdd qdd dd")
_SIZE = _LAYOUT.size
_STAMP = struct.Struct("<qdd")  # count, monotonic time, process CPU time
_TIME = struct.Struct("<d")
_COUNT = struct.Struct("<q")
_AT_LO, _AT_HI, _FIRST, _LAST = 24, 48, 72, 80  # byte offsets in _LAYOUT

ENV = "BENCH_PROGRESS"  # the path of the file, for a contender that is a poller handler


@dataclass(frozen=True)
class Snapshot:
    count: int
    lo: int
    hi: int
    lo_count: int
    lo_time: float
    lo_cpu: float
    hi_count: int
    hi_time: float
    hi_cpu: float
    first_time: float
    last_time: float

    @property
    def steady(self) -> bool:
        """Both ends of the steady part were reached."""
        return self.hi_time > 0 and self.lo_time > 0 and self.hi_count > self.lo_count

    @property
    def rate(self) -> float:
        """Records per second over the steady part."""
        return (self.hi_count - self.lo_count) / (self.hi_time - self.lo_time)

    @property
    def cpu_per_10k(self) -> float:
        """CPU seconds (user + system, all threads) the consumer spent per 10,000 records."""
        return (self.hi_cpu - self.lo_cpu) / (self.hi_count - self.lo_count) * 10_000


def create(path: Path, lo: int, hi: int) -> None:
    """Make a zeroed progress file with the steady part's bounds (the harness, before a run)."""
    path.write_bytes(_LAYOUT.pack(0, lo, hi, 0, 0.0, 0.0, 0, 0.0, 0.0, 0.0, 0.0))


def read(path: Path) -> Snapshot:
    return Snapshot(*_LAYOUT.unpack(path.read_bytes()[:_SIZE]))


class Progress:
    """The consumer's side: count records, stamp the steady part's ends."""

    def __init__(self, path: Path | str) -> None:
        fd = os.open(path, os.O_RDWR)
        # In an execution environment, one of several processes of the same contender.
        self._shared = "AWS_LAMBDA_RUNTIME_API" in os.environ
        try:
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            if self._shared:
                self._fd = fd  # kept for its lock
            else:
                os.close(fd)
        values = _LAYOUT.unpack(self._map[:_SIZE])
        self._lo, self._hi = values[1], values[2]
        self._count = 0
        self._lo_seen = self._hi_seen = False
        self._first = 0.0

    @classmethod
    def from_env(cls) -> Progress | None:
        path = os.environ.get(ENV)
        return cls(path) if path else None

    @property
    def count(self) -> int:
        return self._count

    def add(self, records: int) -> None:
        if self._shared:
            self._add_shared(records)
            return
        now = time.monotonic()
        count = self._count = self._count + records
        if not self._first:
            self._first = now
            _TIME.pack_into(self._map, _FIRST, now)
        if not self._lo_seen and count >= self._lo:
            self._lo_seen = True
            _STAMP.pack_into(self._map, _AT_LO, count, now, time.process_time())
        if not self._hi_seen and count >= self._hi:
            self._hi_seen = True
            _STAMP.pack_into(self._map, _AT_HI, count, now, time.process_time())
        _TIME.pack_into(self._map, _LAST, now)
        _COUNT.pack_into(self._map, 0, count)

    def _add_shared(self, records: int) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            now = time.monotonic()
            (count,) = _COUNT.unpack_from(self._map, 0)
            count += records
            if not _TIME.unpack_from(self._map, _FIRST)[0]:
                _TIME.pack_into(self._map, _FIRST, now)
            if count >= self._lo and not _COUNT.unpack_from(self._map, _AT_LO)[0]:
                _STAMP.pack_into(self._map, _AT_LO, count, now, poller_cpu())
            if count >= self._hi and not _COUNT.unpack_from(self._map, _AT_HI)[0]:
                _STAMP.pack_into(self._map, _AT_HI, count, now, poller_cpu())
            _TIME.pack_into(self._map, _LAST, now)
            _COUNT.pack_into(self._map, 0, count)
            self._count = count
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_and_parent(pid: int) -> tuple[float, int] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[1])  # utime + stime, ppid


def poller_cpu() -> float:
    """CPU seconds of this environment's poller (its parent) and of all the poller's children."""
    poller = os.getppid()
    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _cpu_and_parent(int(entry.name))
            if found is not None and (int(entry.name) == poller or found[1] == poller):
                total += found[0]
    return total
