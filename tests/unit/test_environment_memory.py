"""The memory of an environment is that of its whole process group: the leader, what it started,
and what left the leader's tree but not its group (an orphaned daemon)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from support import open_files, wait_for

from poller.runtime.environments import memory
from poller.runtime.environments.memory import MB, ProcessGroupMemory, descendants

# Each process holds HOLD_MB of its own, touched, then waits for its stdin to close.
HOLD_MB = 40
_HOLD = f"x = bytearray({HOLD_MB} * 1024 * 1024); import sys; sys.stdin.read()"
_TREE = f"""
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {_HOLD!r}], stdin=sys.stdin)
# A daemon: forked twice, its parent gone at once, so that init adopts it (same process group).
parent = os.fork()
if parent == 0:
    if os.fork() == 0:
        exec({_HOLD!r})
    os._exit(0)
os.waitpid(parent, 0)
exec({_HOLD!r})
"""


@contextmanager
def process_tree() -> Iterator[subprocess.Popen[bytes]]:
    """A leader in a new session holding HOLD_MB, with a child and an orphaned grandchild that do
    too; all of them end when the leader's stdin closes."""
    leader = subprocess.Popen([sys.executable, "-c", _TREE], stdin=subprocess.PIPE, start_new_session=True)
    try:
        yield leader
    finally:
        assert leader.stdin is not None
        leader.stdin.close()
        leader.wait(timeout=10)


@pytest.fixture
def every_look_rescans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "RESCAN_INTERVAL", 0.0)


@pytest.mark.usefixtures("every_look_rescans")
async def test_the_walk_of_descendants_finds_the_leaders_children() -> None:
    with process_tree() as leader:
        group = ProcessGroupMemory(leader.pid)
        await wait_for(lambda: len(descendants(leader.pid) or ()) >= 2, message="the child started")
        await wait_for(lambda: group.resident() >= 2 * HOLD_MB * MB, message="leader and child counted")
        assert group.peak() >= 2 * HOLD_MB * MB


@pytest.mark.usefixtures("every_look_rescans")
async def test_a_full_scan_finds_the_orphan_that_left_the_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "FULL_SCAN_INTERVAL", 0.0)
    with process_tree() as leader:
        group = ProcessGroupMemory(leader.pid)
        await wait_for(lambda: group.resident() >= 3 * HOLD_MB * MB, message="all three counted")
        assert len(memory.group_members(leader.pid)) == 3
        assert len(descendants(leader.pid) or ()) == 2, "the daemon is not the leader's descendant"


def test_an_ended_leader_has_no_descendants() -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert descendants(finished.pid) is None


STATUS_FILES = r"/proc/\d+/status$"


@pytest.mark.usefixtures("every_look_rescans")
async def test_the_status_files_kept_for_high_water_marks_are_closed_with_their_processes() -> None:
    before = set(open_files(STATUS_FILES))
    with process_tree() as leader:
        group = ProcessGroupMemory(leader.pid)
        # Two processes' worth: the leader's and the child's memory, each touched (not only started).
        await wait_for(lambda: group.peak() >= 2 * HOLD_MB * MB, message="leader and child counted")
        assert group.peak() >= 2 * HOLD_MB * MB, "read again from the files it keeps open"
        assert len(set(open_files(STATUS_FILES)) - before) >= 2, "the leader's and the child's"
    # The leader has ended (its child and the daemon with it, their stdin closed).
    await wait_for(lambda: group.resident() == 0, message="the group has ended")
    assert group.peak() == 0
    assert set(open_files(STATUS_FILES)) - before == set(), "the files of ended processes are closed"
    group.close()


async def test_close_closes_the_status_files() -> None:
    before = set(open_files(STATUS_FILES))
    with process_tree() as leader:
        group = ProcessGroupMemory(leader.pid)
        assert group.peak() > 0
        assert f"/proc/{leader.pid}/status" in set(open_files(STATUS_FILES)) - before
        group.close()
        assert set(open_files(STATUS_FILES)) - before == set()
        assert group.peak() > 0, "peak() opens them again"
        group.close()
