"""Time, injected: the engine asks a Clock for the time and for sleeps, so tests can fake both."""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Wall time for record ages, and asyncio sleeps for backoff. A test clock overrides
    :meth:`now` and :meth:`sleep`; :meth:`wait` is built on them."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, seconds: float, *, until: asyncio.Event) -> bool:
        """Sleep for ``seconds`` unless ``until`` is set first; True if the whole time passed."""
        if until.is_set():
            return False
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        stopper = asyncio.ensure_future(until.wait())
        try:
            await asyncio.wait([sleeper, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()
        return not until.is_set()


async def first_of(*events: asyncio.Event, within: float | None = None) -> bool:
    """Wait until any event is set or ``within`` seconds pass (real time); True if an event was set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return bool(done)
