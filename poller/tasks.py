"""Background tasks with an owner: every task poller starts runs in its owner's TaskGroup.

A component (a source, a lease coordinator) starts its background tasks through the
:class:`BackgroundTasks` its owner gives it. They run in the owner's TaskGroup, so an error that
one of them did not expect surfaces at once (the group cancels the mapping and raises it), never
at the next poll or never at all; and :meth:`BackgroundTasks.close` cancels and awaits them, so
nothing outlives its owner. No ``create_task`` without an owner: Python keeps only a weak
reference to a task, and an exception of a task that nobody awaits is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BackgroundTasks:
    """The tasks one component started in its owner's TaskGroup."""

    def __init__(self, group: asyncio.TaskGroup, owner: str) -> None:
        self._group = group
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, T], what: str) -> asyncio.Task[T]:
        """Start ``coroutine`` as a task named ``<owner>: <what>``. An exception it raises stops
        the owner's TaskGroup; a task that should outlive its errors must handle them itself."""
        task = self._group.create_task(coroutine, name=f"{self._owner}: {what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        """Tasks still running."""
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel every task still running and wait until all have ended. Never raises what they
        raised (the TaskGroup reports that); a cancellation of the caller itself still propagates."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
