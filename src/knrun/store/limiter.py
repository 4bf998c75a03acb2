"""One request budget for a remote store: a steady rate, shared with the account's other runners,
slowed by what Cloudflare says is left, and pauses every caller honours."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

_ITEM = re.compile(r"r=(?P<r>\d+)\s*;\s*t=(?P<t>\d+)")
_QUOTA = re.compile(r"q=(?P<q>\d+)")


class RequestLimiter:
    """Spaces requests at least `1 / rate_per_s` apart, across every task that shares it.

    Cloudflare allows 1,200 API requests per 5 minutes per account, shared with the dashboard,
    wrangler and every other runner, and blocks everything for 5 minutes past that. So:
    - 3 requests/s is the whole of knrun's share, and `share(n)` divides it among n live
      runners (they find each other in the runs table);
    - `observe` reads Cloudflare's `Ratelimit` header ("default";r=<left>;t=<seconds>) and
      spaces requests so that what is left lasts until the window resets, keeping a reserve
      for everyone else;
    - `pause_for` parks every caller, e.g. for a 429's Retry-After.
    """

    def __init__(
        self,
        rate_per_s: float = 3.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        reserve: float = 0.1,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.base_interval = 1.0 / rate_per_s
        self.interval = self.base_interval
        self.reserve = reserve  # the share of the account's quota left to others
        self._clock = clock
        self._sleep = sleep
        self._runners = 1
        self._budget_interval = 0.0  # from the Ratelimit header
        self._next_slot = 0.0
        self._paused_until = 0.0

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def pause_for(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def share(self, runners: int) -> None:
        """`runners` live runners spend one budget: each takes its part of the rate."""
        self._runners = max(1, runners)
        self._update()

    def observe(self, ratelimit: str | None, policy: str | None = None) -> None:
        """What the account has left, from Cloudflare's rate-limit headers (absent: nothing)."""
        if not ratelimit:
            return
        items = [(int(m["r"]), int(m["t"])) for m in _ITEM.finditer(ratelimit)]
        if not items:
            return
        left, reset_s = min(items)
        quota = max((int(m["q"]) for m in _QUOTA.finditer(policy or "")), default=1200)
        usable = left - quota * self.reserve
        if usable <= 0:
            self.pause_for(float(max(reset_s, 1)))  # let the window roll on for everyone
            self._budget_interval = 0.0
        else:
            self._budget_interval = reset_s / usable
        self._update()

    def _update(self) -> None:
        self.interval = max(self.base_interval * self._runners, self._budget_interval)

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
