"""One request limiter per remote store: a steady request rate, and pauses every caller honours."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RequestLimiter:
    """Spaces requests at least `1 / rate_per_s` apart, across every task that shares it.

    Cloudflare allows 1,200 API requests per 5 minutes per account, shared with the dashboard and
    wrangler, and blocks everything for 5 minutes past that: 3 requests/s leaves a quarter of the
    budget for everyone else. `pause_for` parks every caller, e.g. for a 429's Retry-After.
    """

    def __init__(
        self,
        rate_per_s: float = 3.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.interval = 1.0 / rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._next_slot = 0.0
        self._paused_until = 0.0

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def pause_for(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def acquire(self) -> None:
        """Wait for this caller's slot. Slots are handed out in call order, without a lock: the
        bookkeeping happens before the first await, so it is atomic on the event loop."""
        while True:
            now = self._clock()
            slot = max(now, self._next_slot, self._paused_until)
            self._next_slot = slot + self.interval
            if slot > now:
                await self._sleep(slot - now)
            if self._clock() >= self._paused_until:
                return
            # A pause arrived while we slept: queue again behind it.
