"""The guards on their own: breaker, shared cooldown, spend cap, drift monitor."""

from __future__ import annotations

import pytest

from conftest import FakeClock
from knrun.guards import CircuitBreaker, Cooldown, DriftMonitor, DriftReading, SpendCap

pytestmark = pytest.mark.anyio
USD = 10**10


def test_breaker_trips_after_50_consecutive_429s_and_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(50)
    for _ in range(49):
        assert not breaker.record_rate_limited()
    breaker.record_success()
    for _ in range(49):
        assert not breaker.record_rate_limited()
    assert breaker.record_rate_limited()
    assert breaker.tripped is not None and breaker.tripped.startswith("rate-limit storm: 50")


def test_breaker_trips_at_once_on_credit_exhausted_and_keeps_the_first_reason() -> None:
    breaker = CircuitBreaker()
    breaker.trip_credit_exhausted("Your team has used all available credits")
    breaker.trip_credit_exhausted("later")
    assert breaker.tripped == "credit exhausted: Your team has used all available credits"


async def test_cooldown_honours_retry_after_and_holds_every_waiter(clock: FakeClock) -> None:
    cooldown = Cooldown(clock, clock.sleep, base_s=2, max_s=60)
    assert cooldown.trigger(retry_after=7, consecutive=1) == 7
    assert cooldown.active
    start = clock()
    await cooldown.wait()
    assert clock() - start == pytest.approx(7)
    assert not cooldown.active


def test_cooldown_backs_off_without_retry_after_and_is_capped(clock: FakeClock) -> None:
    cooldown = Cooldown(clock, clock.sleep, base_s=2, max_s=60)
    assert [cooldown.trigger(None, n) for n in (1, 2, 3, 4, 10)] == [2, 4, 8, 16, 60]
    assert cooldown.trigger(retry_after=3600, consecutive=1) == 60


def test_a_longer_pause_is_never_shortened_by_a_shorter_one(clock: FakeClock) -> None:
    cooldown = Cooldown(clock, clock.sleep)
    cooldown.trigger(30, 1)
    cooldown.trigger(1, 1)
    assert cooldown.until == clock() + 30


def test_spend_cap_counts_committed_units_at_their_worst_case() -> None:
    cap = SpendCap(cap_ticks=100 * USD // 100, estimated_unit_ticks=USD // 100)  # $1, 1 cent each
    assert cap.worst_case_unit_ticks == 2 * USD // 100
    assert cap.allowance(spent_ticks=0, committed_units=0) == 50
    assert cap.allowance(spent_ticks=USD // 2, committed_units=10) == 15
    assert cap.allowance(spent_ticks=USD, committed_units=0) == 0
    cap.observe(USD // 10)  # a 10-cent unit: the worst case follows the dearest seen
    assert cap.worst_case_unit_ticks == USD // 10 * 5 // 4


def test_drift_is_checked_every_100_units() -> None:
    monitor = DriftMonitor(every=100)
    assert [n for n in range(1, 351) if monitor.due(n)] == [100, 200, 300]
    assert monitor.due(420) and not monitor.due(450) and monitor.due(500)


def test_drift_halts_when_pricing_toml_is_66x_low() -> None:
    # The incident: tracked $3.79, billed about $25.
    reading = DriftReading(
        units=100, tracked_ticks=379 * USD // 100, billed_ticks=25 * USD, estimated_unit_ticks=None
    )
    [problem] = DriftMonitor().problems(reading)
    assert (
        "tracked cost $3.7900" in problem
        and "billed $25.0000" in problem
        and "85% apart" in problem
    )


def test_drift_halts_when_a_unit_costs_over_20_percent_more_than_estimated() -> None:
    monitor = DriftMonitor()
    assert monitor.problems(DriftReading(100, 1190, 1190, estimated_unit_ticks=10)) == []
    [problem] = monitor.problems(DriftReading(100, 1210, 1210, estimated_unit_ticks=10))
    assert "21% over" in problem
    assert monitor.problems(DriftReading(100, 500, 500, estimated_unit_ticks=10)) == []  # cheaper


def test_balance_falling_faster_than_billed_is_a_finding_and_lag_is_not() -> None:
    monitor = DriftMonitor()
    lagging = DriftReading(100, 2 * USD, 2 * USD, None, balance_drop_ticks=USD)  # ledger behind
    assert monitor.problems(lagging) == []
    leaking = DriftReading(100, 2 * USD, 2 * USD, None, balance_drop_ticks=5 * USD)
    assert "something else is spending" in monitor.problems(leaking)[0]
