"""The guards that stop a run before money is wasted: circuit breaker, shared cooldown, spend cap
and drift monitor. Pure logic over injected clocks and sleeps, so each is tested on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal

from knrun.pricing import TICKS_PER_USD, format_usd

BALANCE_SLACK_TICKS = TICKS_PER_USD  # $1

# -- circuit breaker ------------------------------------------------------------------------------


class CircuitBreaker:
    """Trips on credit exhaustion at once, or after `max_consecutive_429` rate limits in a row
    (any success in between resets the count). Once tripped it stays tripped."""

    def __init__(self, max_consecutive_429: int = 50) -> None:
        self.max_consecutive_429 = max_consecutive_429
        self.consecutive_429 = 0
        self.tripped: str | None = None

    def record_rate_limited(self) -> bool:
        self.consecutive_429 += 1
        if self.tripped is None and self.consecutive_429 >= self.max_consecutive_429:
            self.tripped = (
                f"rate-limit storm: {self.consecutive_429} consecutive 429s "
                "(if the account is out of credit, the provider may be saying so as a rate limit)"
            )
        return self.tripped is not None

    def record_success(self) -> None:
        self.consecutive_429 = 0

    def trip_credit_exhausted(self, message: str) -> None:
        if self.tripped is None:
            self.tripped = f"credit exhausted: {message}"


# -- shared cooldown ------------------------------------------------------------------------------


class Cooldown:
    """One pause for every worker: a 429 seen by one worker holds them all back until it ends.

    The pause honours `Retry-After` when the provider sends one; otherwise it backs off from
    `base_s`, doubling with each consecutive 429 up to `max_s`."""

    def __init__(
        self,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        base_s: float = 2.0,
        max_s: float = 60.0,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.base_s = base_s
        self.max_s = max_s
        self.until = 0.0

    def trigger(self, retry_after: float | None, consecutive: int) -> float:
        """Start or extend the pause; returns its length in seconds."""
        if retry_after is not None:
            seconds = min(retry_after, self.max_s)
        else:
            seconds = min(self.base_s * 2 ** max(consecutive - 1, 0), self.max_s)
        self.until = max(self.until, self._clock() + seconds)
        return seconds

    @property
    def active(self) -> bool:
        return self._clock() < self.until

    async def wait(self) -> None:
        while (left := self.until - self._clock()) > 0:
            await self._sleep(left)


# -- spend cap ------------------------------------------------------------------------------------


@dataclass
class SpendCap:
    """Claim only what the cap can still pay for, counting every unit already committed (in
    flight or queued) at its worst case.

    The worst case of one unit is not knowable in advance (reasoning tokens have no cap), so
    knrun uses max(2 x the estimated unit cost, 1.25 x the dearest unit seen so far)."""

    cap_ticks: int
    estimated_unit_ticks: int
    dearest_seen_ticks: int = 0

    def observe(self, unit_ticks: int) -> None:
        self.dearest_seen_ticks = max(self.dearest_seen_ticks, unit_ticks)

    @property
    def worst_case_unit_ticks(self) -> int:
        return max(2 * self.estimated_unit_ticks, self.dearest_seen_ticks * 5 // 4, 1)

    def allowance(self, spent_ticks: int, committed_units: int) -> int:
        """How many more units may be claimed now."""
        headroom = self.cap_ticks - spent_ticks - committed_units * self.worst_case_unit_ticks
        return max(headroom // self.worst_case_unit_ticks, 0)


# -- drift ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftReading:
    units: int
    tracked_ticks: int
    billed_ticks: int
    estimated_unit_ticks: int | None
    balance_drop_ticks: int | None = None  # prepaid balance at start minus now, if known

    @property
    def actual_unit_ticks(self) -> int:
        return self.billed_ticks // self.units if self.units else 0


class DriftMonitor:
    """Every `every` paid units: does knrun's own cost figure agree with the provider's bill, is
    a unit costing what preflight estimated, and is the balance falling as fast as the bill says
    (and no faster)? A difference over `tolerance` halts the run with both figures."""

    def __init__(self, every: int = 100, tolerance: Decimal = Decimal("0.20")) -> None:
        self.every = every
        self.tolerance = tolerance
        self.next_check = every

    def due(self, units: int) -> bool:
        if units >= self.next_check:
            self.next_check = (units // self.every + 1) * self.every
            return True
        return False

    def problems(self, reading: DriftReading) -> list[str]:
        found = []
        if reading.billed_ticks > 0:
            gap = Decimal(abs(reading.tracked_ticks - reading.billed_ticks)) / reading.billed_ticks
            if gap > self.tolerance:
                found.append(
                    f"tracked cost {format_usd(reading.tracked_ticks)} (pricing.toml x usage) vs "
                    f"billed {format_usd(reading.billed_ticks)} after {reading.units} units: "
                    f"{gap:.0%} apart; pricing.toml is wrong for this model"
                )
        estimate = reading.estimated_unit_ticks
        if estimate and reading.units:
            actual = reading.actual_unit_ticks
            over = Decimal(reading.billed_ticks) / reading.units / estimate - 1
            if over > self.tolerance:
                found.append(
                    f"actual cost per unit {format_usd(actual, 6)} vs estimate "
                    f"{format_usd(estimate, 6)}: {over:.0%} over"
                )
        drop = reading.balance_drop_ticks
        # The ledger lags the bill, so only a balance falling FASTER than billed is a finding:
        # something else is spending (another process, requests billed but never answered).
        # The slack absorbs charges of earlier work (a canary) that reached the ledger late.
        limit = reading.billed_ticks * (1 + self.tolerance) + BALANCE_SLACK_TICKS
        if drop is not None and reading.billed_ticks > 0 and drop > limit:
            found.append(
                f"prepaid balance fell {format_usd(drop)} while this run was billed "
                f"{format_usd(reading.billed_ticks)}: something else is spending"
            )
        return found
