"""Time, injected: the engine asks a Clock for the time and for sleeps, so tests can fake both."""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Wall time for record ages, and asyncio sleeps for backoff."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
