"""The guards on their own: breaker, spend cap, failure rate, drift monitor."""

from __future__ import annotations

import pytest

from knrun.run.guards import (
    CircuitBreaker,
    DriftMonitor,
    DriftReading,
    FailureRate,
    SpendCap,
)
from knrun.store.types import AttemptRefund, Money

pytestmark = pytest.mark.anyio
USD = 10**10


def test_a_burst_of_429s_in_flight_together_is_one_round() -> None:
    breaker = CircuitBreaker(3)
    assert breaker.record_rate_limited(sent_at=0.0, now=1.0)  # opens round 1
    # Fifty requests sent before the round began, answered 429 in the same burst:
    assert not any(breaker.record_rate_limited(sent_at=0.5, now=1.1) for _ in range(50))
    assert breaker.rounds == 1 and breaker.tripped is None


def test_breaker_trips_after_max_rounds_in_a_row_and_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(3)
    for now in (1.0, 3.0):  # sent after each pause: each 429 is a new round
        assert breaker.record_rate_limited(sent_at=now - 0.1, now=now)
    breaker.record_success()
    assert breaker.rounds == 0
    for now in (5.0, 7.0):
        breaker.record_rate_limited(sent_at=now - 0.1, now=now)
    assert breaker.tripped is None
    assert breaker.record_rate_limited(sent_at=8.9, now=9.0)
    assert breaker.tripped is not None and breaker.tripped.startswith("rate-limit storm: 3 rounds")


def test_breaker_trips_at_once_on_credit_exhausted_and_keeps_the_first_reason() -> None:
    breaker = CircuitBreaker()
    breaker.trip_credit_exhausted("Your team has used all available credits")
    breaker.trip_credit_exhausted("later")
    assert breaker.tripped == "credit exhausted: Your team has used all available credits"


def test_429s_of_requests_backing_off_each_on_its_own_time_are_one_round() -> None:
    """Without a shared freeze, requests come back at jittered times; a round lasts at least
    `min_round_s`, so a second of scattered 429s is one round, not one per request."""
    breaker = CircuitBreaker(3, min_round_s=1.0)
    assert breaker.record_rate_limited(sent_at=0.0, now=0.0)
    assert not any(breaker.record_rate_limited(sent_at=t / 10, now=t / 10) for t in range(1, 10))
    assert breaker.rounds == 1
    assert breaker.record_rate_limited(sent_at=1.05, now=1.05)  # a new round after a second
    assert breaker.rounds == 2 and breaker.tripped is None
    # Rounds in a row grow as the backoffs do: the third opens two seconds after the second.
    assert not breaker.record_rate_limited(sent_at=2.5, now=2.5)
    assert breaker.record_rate_limited(sent_at=3.1, now=3.1)
    assert breaker.rounds == 3 and breaker.tripped is not None  # max_rounds = 3


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


def money(billed: int, tracked: int | None = None, **more: int) -> Money:
    tracked = billed if tracked is None else tracked
    return Money(
        requests=more.pop("requests", 100),
        replies=more.pop("replies", 100),
        billed_ticks=billed,
        billed_tracked_ticks=tracked,
        tracked_ticks=tracked,
        **more,
    )


def test_drift_halts_when_pricing_toml_is_66x_low() -> None:
    # The incident: tracked $3.79, billed about $25.
    reading = DriftReading(
        units=100, money=money(25 * USD, 379 * USD // 100), estimated_unit_ticks=None
    )
    [problem] = DriftMonitor().problems(reading)
    assert (
        "tracked cost $3.7900" in problem
        and "billed $25.0000" in problem
        and "85% apart" in problem
    )


def test_drift_halts_when_a_unit_costs_over_20_percent_more_than_estimated() -> None:
    monitor = DriftMonitor()
    assert monitor.problems(DriftReading(100, money(1190), estimated_unit_ticks=10)) == []
    [problem] = monitor.problems(DriftReading(100, money(1210), estimated_unit_ticks=10))
    assert "21% over" in problem
    assert monitor.problems(DriftReading(100, money(500), estimated_unit_ticks=10)) == []


def test_balance_falling_faster_than_billed_is_a_finding_and_lag_is_not() -> None:
    monitor = DriftMonitor()
    lagging = DriftReading(100, money(2 * USD), None, balance_drop_ticks=USD)  # ledger behind
    assert monitor.problems(lagging) == []
    leaking = DriftReading(100, money(2 * USD), None, balance_drop_ticks=5 * USD)
    assert "something else is spending" in monitor.problems(leaking)[0]


def test_without_bills_the_balance_is_the_only_truth_and_blames_the_prices() -> None:
    """Tracked cost never stands in for billed: with no bills, pricing.toml is not compared with
    itself; the balance, falling five times faster than the usage accounts for, is."""
    monitor = DriftMonitor()
    blind = Money(
        requests=40, replies=40, tracked_ticks=USD, unbilled_replies=40, unbilled_tracked_ticks=USD
    )
    assert monitor.unbilled_alarm(blind)
    assert monitor.problems(DriftReading(40, blind, None)) == []  # nothing to compare
    [problem] = monitor.problems(DriftReading(40, blind, None, balance_drop_ticks=5 * USD))
    assert "no bill for 40 of 40 replies" in problem and "pricing.toml is likely wrong" in problem
    assert not monitor.unbilled_alarm(money(USD))


def test_requests_possibly_billed_unseen_halt_past_a_tenth() -> None:
    monitor = DriftMonitor()
    some = money(USD, requests=100, replies=95, possible_requests=5, possible_ticks=USD)
    assert monitor.problems(DriftReading(95, some, None)) == []
    many = money(USD, requests=100, replies=80, possible_requests=20, possible_ticks=4 * USD)
    [problem] = monitor.problems(DriftReading(80, many, None))
    assert "20 of 100 requests timed out or were dropped" in problem and "$4.0000" in problem


def test_the_balance_counts_possibly_billed_requests_at_their_worst_case() -> None:
    monitor = DriftMonitor()
    timed_out = money(USD, possible_requests=5, possible_ticks=3 * USD)
    assert monitor.problems(DriftReading(100, timed_out, None, balance_drop_ticks=4 * USD)) == []


def refund(n: int) -> AttemptRefund:
    return AttemptRefund(n, f"r:{n}", "r")


def test_the_failure_rate_guard_trips_on_a_streak_of_one_reason() -> None:
    guard = FailureRate(streak=20)
    for n in range(19):
        assert guard.record("invalid_json", refund(n)) is None
    message = guard.record("invalid_json", refund(19))
    assert message == "failure rate: 20 replies in a row failed (invalid_json)"
    assert [r.unit_id for r in guard.window_refunds()] == list(range(20))
    assert guard.record("invalid_json", refund(20)) is None  # says it once


def test_the_failure_rate_guard_trips_when_half_the_window_fails() -> None:
    guard = FailureRate(window=50, share=0.5, min_replies=20, streak=1000)
    reasons = ["invalid_json", "truncated", None, "refusal"] * 5  # 15 of 20 fail, mixed
    results = [guard.record(why, refund(n) if why else None) for n, why in enumerate(reasons)]
    assert results[:-1] == [None] * 19
    assert results[-1] is not None and "15 of the last 20 paid replies failed" in results[-1]
    assert len(guard.window_refunds()) == 15


def test_ordinary_failure_rates_never_trip_the_guard() -> None:
    guard = FailureRate()
    for n in range(1000):  # 2% malformed, as the field report saw
        assert guard.record("invalid_json" if n % 50 == 0 else None) is None
