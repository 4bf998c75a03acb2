"""What the send-rate rules count with: a tick of sends and refusals, a known limit, and a rolling
window of what this run sent, as the provider's own windows count it."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_TICK_SENDS = 20  # a tick lasts until it has this many sends (or MAX_TICK_S): fewer is noise
MAX_TICK_S = 10.0
HISTORY_TICKS = 6


@dataclass
class Tick:
    start: float
    rate: float  # the rate in force during the tick
    sent: int = 0
    refused: int = 0
    length: float = 1.0  # seconds, once the tick is over
    sent_at: list[float] = field(default_factory=list)  # in order
    refused_at: list[float] = field(default_factory=list)  # send times of the refused

    def settled(self, lag_s: float) -> Tick:
        """The tick as far as its outcomes are known when it ends: a request sent in its last
        `lag_s` (how long a 429 takes to come back) may yet be refused, so the judged tick stops
        before them (at half its length at most). Judging them as accepted would hide a storm
        whenever 429s come back slowly next to the tick."""
        cut = self.start + max(self.length - lag_s, self.length / 2)
        sent = bisect.bisect_right(self.sent_at, cut)
        refused = sum(1 for at in self.refused_at if at <= cut)
        return Tick(self.start, self.rate, sent, refused, cut - self.start)

    @property
    def accepted(self) -> int:
        return self.sent - self.refused

    @property
    def accepted_rate(self) -> float:
        return self.accepted / self.length

    @property
    def sent_rate(self) -> float:
        return self.sent / self.length

    @property
    def share(self) -> float:
        return self.refused / self.sent if self.sent else 0.0


@dataclass
class Limit:
    per_s: float  # requests per second, or tokens per second
    source: str  # header | claim


class RollingSum:
    """Amounts added in the last `window_s` seconds, as a provider's rolling window counts
    them. A refusal comes back within milliseconds, so its negative entry is nearly in order."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s, self._clock = window_s, clock
        self._entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, at: float, amount: int) -> None:
        self._expire()
        self._entries.append((at, amount))
        self.total += amount

    def _expire(self) -> None:
        horizon = self._clock() - self.window_s
        while self._entries and self._entries[0][0] <= horizon:
            self.total -= self._entries.popleft()[1]

    def wait_for(self, need: int, allowed: float) -> float:
        """Seconds until `need` more fits under `allowed`: the oldest entries leave first. What
        can never fit beside anything goes alone, once the window is empty (never a wait that
        never ends)."""
        self._expire()
        over = self.total + need - allowed
        if over <= 0:
            return 0.0
        freed, now = 0, self._clock()
        if need > allowed:
            if self.total <= 0:
                return 0.0
            return max(self._entries[-1][0] + self.window_s - now, 1e-3)
        for at, amount in self._entries:
            freed += amount
            if freed >= over:
                return max(at + self.window_s - now, 1e-3)
        return self.window_s


def flat(ticks: list[Tick]) -> bool:
    """Accepted per second barely moved while sent per second grew by a third or more: the
    slope of one on the other is under 30% of what random refusals would give."""
    if len(ticks) < 4:
        return False
    xs = [tick.sent_rate for tick in ticks]
    ys = [tick.accepted_rate for tick in ticks]
    if max(xs) < 1.3 * min(xs):
        return False
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
    accepted_share = sum(tick.accepted for tick in ticks) / sum(tick.sent for tick in ticks)
    return slope < 0.3 * accepted_share
