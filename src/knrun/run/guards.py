"""The guards that stop a run before money is wasted: circuit breaker, spend cap, failure
rate and drift monitor. Pure logic over injected clocks and sleeps, so each is tested on
its own. Money comes in as `Money` (every request billed, unbilled or possibly billed)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import Decimal

from knrun.pricing import format_usd
from knrun.store.types import AttemptRefund, Money

# Shares past which a run cannot vouch for its own money figures.
UNBILLED_SHARE = Decimal("0.05")  # replies without cost_in_usd_ticks
POSSIBLE_SHARE = Decimal("0.10")  # requests that timed out or were dropped after sending
MIN_SAMPLE = 20  # requests seen before a share means anything
# Charges of earlier work (the last units of a previous run) that may still reach the prepaid
# balance during this run; a go run adds its receipt's canary to this.
BALANCE_SLACK_TICKS = 10**9  # $0.10

# -- circuit breaker ------------------------------------------------------------------------------


class CircuitBreaker:
    """Trips on credit exhaustion at once, or after `max_rounds` rate-limit rounds in a row (a
    success in between resets the count). A round is one burst: every 429 for a request sent
    before the round began belongs to it, so fifty requests in flight answered 429 together are
    one round, not fifty; and a round lasts at least `min_round_s`, doubling with each round in
    a row up to `max_round_s`, so requests backing off each on its own time do not each open
    one, and ten rounds are minutes of nothing accepted, as the backoffs are. Once tripped it
    stays tripped."""

    def __init__(
        self, max_rounds: int = 10, min_round_s: float = 0.0, max_round_s: float = 30.0
    ) -> None:
        self.max_rounds, self.min_round_s, self.max_round_s = max_rounds, min_round_s, max_round_s
        self.rounds = 0
        self._round_began = float("-inf")
        self.tripped: str | None = None

    def record_rate_limited(self, sent_at: float, now: float) -> bool:
        """Count a 429 for a request sent at `sent_at`; True when it opens a new round."""
        length = min(self.min_round_s * 2 ** max(self.rounds - 1, 0), self.max_round_s)
        if sent_at < self._round_began or now < self._round_began + length:
            return False  # in flight when this round began, or within it: part of it
        self.rounds += 1
        self._round_began = now
        if self.tripped is None and self.rounds >= self.max_rounds:
            self.tripped = (
                f"rate-limit storm: {self.rounds} rounds of 429s in a row with no success "
                "between them"
            )
        return True

    def record_success(self) -> None:
        self.rounds = 0

    def trip_credit_exhausted(self, message: str) -> None:
        if self.tripped is None:
            self.tripped = f"credit exhausted: {message}"


# -- spend cap ------------------------------------------------------------------------------------


@dataclass
class SpendCap:
    """Claim only what the cap can still pay for, counting every unit already committed (in
    flight or queued) at its worst case, and every possibly-billed request at its worst case.

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


# -- failure rate ---------------------------------------------------------------------------------


class FailureRate:
    """Stops a run whose paid replies mostly fail (a model update, a proxy, a new slice of the
    corpus): each such reply was paid for, and the next hundred would be too. Trips when at
    least `share` of the last `window` replies failed (once `min_replies` have come), or
    `streak` replies in a row failed for the same reason."""

    def __init__(
        self, window: int = 50, share: float = 0.5, min_replies: int = MIN_SAMPLE, streak: int = 20
    ) -> None:
        self.share, self.min_replies, self.streak = share, min_replies, streak
        self._recent: deque[tuple[str | None, AttemptRefund | None]] = deque(maxlen=window)
        self._streak: tuple[str | None, int] = (None, 0)
        self.tripped: str | None = None

    def record(self, reason: str | None, refund: AttemptRefund | None = None) -> str | None:
        """One paid reply: `reason` None when it was usable. Returns the trip message once."""
        self._recent.append((reason, refund))
        same, count = self._streak
        self._streak = (reason, count + 1 if reason is not None and reason == same else 1)
        if self.tripped is not None:
            return None
        failed = sum(1 for why, _ in self._recent if why is not None)
        if reason is not None and self._streak[1] >= self.streak:
            self.tripped = f"failure rate: {self._streak[1]} replies in a row failed ({reason})"
        elif len(self._recent) >= self.min_replies and failed >= self.share * len(self._recent):
            self.tripped = (
                f"failure rate: {failed} of the last {len(self._recent)} paid replies failed "
                f"({self._top_reasons()})"
            )
        return self.tripped

    def window_refunds(self) -> list[AttemptRefund]:
        """The attempts of the failures that tripped the guard: the run's fault, not theirs."""
        return [refund for why, refund in self._recent if why is not None and refund is not None]

    def _top_reasons(self) -> str:
        counts: dict[str, int] = {}
        for why, _ in self._recent:
            if why is not None:
                counts[why] = counts.get(why, 0) + 1
        return ", ".join(f"{why} {n}" for why, n in sorted(counts.items(), key=lambda i: -i[1]))


# -- drift ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftReading:
    units: int
    money: Money
    estimated_unit_ticks: int | None
    balance_drop_ticks: int | None = None  # prepaid balance at start minus now, if read
    balance_slack_ticks: int = 0  # charges of earlier work that may reach the ledger late
    in_flight_ticks: int = 0  # requests accepted (so billed) but not answered yet, at worst


class DriftMonitor:
    """Every `every` paid units: does knrun's own cost figure agree with the provider's bill, is
    a unit costing what preflight estimated, is the balance falling as fast as the bill says
    (and no faster), and can the run vouch for its figures at all (bills missing, requests
    possibly billed unseen)? A difference over `tolerance` halts the run with both figures."""

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
        money = reading.money
        found = []
        if money.billed_ticks > 0:
            tracked, billed = money.billed_tracked_ticks, money.billed_ticks
            gap = Decimal(abs(tracked - billed)) / billed
            if gap > self.tolerance:
                found.append(
                    f"tracked cost {format_usd(tracked)} (pricing.toml x usage) vs "
                    f"billed {format_usd(billed)} after {money.replies} replies: "
                    f"{gap:.0%} apart; pricing.toml is wrong for this model"
                )
        estimate = reading.estimated_unit_ticks
        if estimate and reading.units:
            actual = money.spent_ticks // reading.units
            over = Decimal(money.spent_ticks) / reading.units / estimate - 1
            if over > self.tolerance:
                found.append(
                    f"actual cost per unit {format_usd(actual, 6)} vs estimate "
                    f"{format_usd(estimate, 6)}: {over:.0%} over"
                )
        if money.requests >= MIN_SAMPLE and money.possible_share > POSSIBLE_SHARE:
            found.append(
                f"{money.possible_requests} of {money.requests} requests timed out or were "
                "dropped after they were sent: xAI bills those it computed, so they may have "
                f"cost up to {format_usd(money.possible_ticks)} unseen"
            )
        found += self._balance_problems(reading)
        return found

    def unbilled_alarm(self, money: Money) -> bool:
        """Too many replies without a bill for the run to see its own spend."""
        return money.replies >= MIN_SAMPLE and money.unbilled_share > UNBILLED_SHARE

    def _balance_problems(self, reading: DriftReading) -> list[str]:
        """The ledger lags the bill, so only a balance falling FASTER than the run can account
        for is a finding. Everything counts at its dearest: unbilled replies at pricing.toml's
        prices and possibly-billed requests at their worst case."""
        drop, money = reading.balance_drop_ticks, reading.money
        if drop is None or money.requests == 0:
            return []
        accounted = money.spent_max_ticks + reading.in_flight_ticks
        limit = accounted * (1 + self.tolerance) + reading.balance_slack_ticks
        if drop <= limit:
            return []
        why = (
            f"xAI sent no bill for {money.unbilled_replies} of {money.replies} replies, so "
            "pricing.toml is likely wrong for this model (or something else is spending)"
            if self.unbilled_alarm(money)
            else "something else is spending, or requests were billed that knrun never saw"
        )
        return [
            f"prepaid balance fell {format_usd(drop)} while this run can account for "
            f"{format_usd(accounted)}: {why}"
        ]
