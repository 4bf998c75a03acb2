"""The request limiter: steady spacing across tasks, and pauses every caller honours."""

from __future__ import annotations

import asyncio

import pytest

from conftest import FakeClock
from knrun.store.limiter import RequestLimiter

pytestmark = pytest.mark.anyio


async def test_requests_are_spaced_by_the_rate(clock: FakeClock) -> None:
    limiter = RequestLimiter(4.0, clock=clock, sleep=clock.sleep)
    start = clock()
    times = []
    for _ in range(9):
        await limiter.acquire()
        times.append(clock() - start)
    assert times == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0])


async def test_concurrent_callers_get_distinct_slots(clock: FakeClock) -> None:
    limiter = RequestLimiter(2.0, clock=clock, sleep=clock.sleep)
    slots: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        slots.append(clock())

    start = clock()
    await asyncio.gather(*(one() for _ in range(6)))
    # Every caller reserved its own half-second slot; none went early.
    assert clock() - start == pytest.approx(2.5)
    assert len(slots) == 6


async def test_a_pause_parks_every_caller(clock: FakeClock) -> None:
    limiter = RequestLimiter(100.0, clock=clock, sleep=clock.sleep)
    await limiter.acquire()
    limiter.pause_for(300)
    start = clock()
    await limiter.acquire()
    assert clock() - start >= 300


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RequestLimiter(0)
