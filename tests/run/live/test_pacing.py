"""AdaptivePacing on a fake clock: slots from the rate and the latency, the gate's spacing,
per-request backoff, sharing a limit, and waking everyone at a stop. Nothing sleeps for real."""

from __future__ import annotations

import asyncio
import itertools
import random
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import FakeClock
from knrun.commands.session import record
from knrun.pricing import Usage
from knrun.run.events import RunState, discard
from knrun.run.live.pacing import AdaptivePacing
from knrun.store.types import RunRecord
from knrun.xai import ChatReply, LimitClaim, RateHeaders, RateLimited

pytestmark = pytest.mark.anyio


def pacing(clock: FakeClock, **kwargs: Any) -> AdaptivePacing:
    options: dict[str, Any] = {"max_concurrency": 1000, "max_rounds": 10} | kwargs
    return AdaptivePacing(
        tokens_per_request=5000,
        state=RunState(run_id="r", total=100, concurrency=options["max_concurrency"]),
        emit=discard,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(1),
        **options,
    )


def reply(headers: RateHeaders | None = None) -> ChatReply:
    return ChatReply("{}", "stop", None, Usage(1000, 4000), "grok-4.3", headers)


def refused(claim: LimitClaim | None = None, retry_after: float | None = None) -> RateLimited:
    return RateLimited("Too many requests", 429, retry_after, "second", claim)


async def test_slots_follow_rate_times_latency_once_replies_come(clock: FakeClock) -> None:
    paced = pacing(clock)
    sent_at = await paced.before_send(0, 5000, None)
    clock.advance(10.0)  # a 10 s model
    paced.on_ended(sent_at)
    paced.on_reply(reply(), sent_at)
    # 4 requests/s x 10 s x 1.5 headroom + 8
    assert paced.limit() == 4 * 10 * 3 // 2 + 8
    assert paced.state.concurrency == paced.limit()


async def test_before_any_reply_slots_grow_with_the_oldest_request_out(clock: FakeClock) -> None:
    paced = pacing(clock)
    assert paced.limit() == 8  # nothing out yet: a handful
    await paced.before_send(0, 5000, None)
    clock.advance(30.0)  # a slow model: nothing back after 30 s
    assert paced.limit() == 4 * 30 * 3 // 2 + 8
    assert pacing(clock, max_concurrency=50).limit() <= 50


async def test_a_fixed_concurrency_holds_its_slots_and_starts_unpaced(clock: FakeClock) -> None:
    """A plain pool of 50 has 50 in flight from its first moment; so does `--concurrency 50`
    (it used to start its gate at 50 a second and grow 1.5x a second: 18 in flight after one
    second where a plain pool had 50)."""
    paced = pacing(clock, max_concurrency=50, adaptive_concurrency=False)
    assert paced.limit() == 50
    assert paced.rate.free
    for _ in range(50):
        await paced.before_send(0, 5000, None)
    assert clock.slept == 0  # all fifty at once: nothing paced them


async def test_a_remembered_limit_starts_the_pace_just_under_it(clock: FakeClock) -> None:
    paced = pacing(clock, known={"requests": 20.0})
    assert paced.rate.rate == pytest.approx(19.0)
    sent_at = await paced.before_send(0, 5000, None)
    paced.on_reply(reply(RateHeaders(limit_requests=30)), sent_at)  # a higher tier now
    assert paced.rate.rate == pytest.approx(28.5)  # straight to it: a header is a fact


async def test_the_first_header_takes_the_pace_straight_to_the_limit(clock: FakeClock) -> None:
    """Auto starts at 4 requests/s; the first reply names the limit, and the pace goes there at
    once instead of growing 1.5x a second (it took 17 s to pass 100 a second)."""
    paced = pacing(clock)
    assert paced.rate.rate == pytest.approx(4.0)
    sent_at = await paced.before_send(0, 5000, None)
    paced.on_reply(reply(RateHeaders(limit_requests=200)), sent_at)
    assert paced.rate.rate == pytest.approx(190.0)


async def test_the_gate_spaces_requests_one_interval_of_the_rate_apart(clock: FakeClock) -> None:
    paced = pacing(clock)
    times = [await paced.before_send(0, 5000, None) for _ in range(5)]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps == [0.25] * 4  # 4 requests/s at the start


async def test_a_refused_request_waits_its_own_backoff_or_retry_after(clock: FakeClock) -> None:
    paced = pacing(clock)
    assert all(0 <= paced.backoff_s(3, None) <= 2.0 for _ in range(50))  # 0.5 x 2^2, jittered
    assert paced.backoff_s(20, None) <= 30.0
    # A Retry-After counts real seconds; pacing in a simulator's time converts it.
    scaled = AdaptivePacing(
        max_concurrency=10,
        max_rounds=10,
        tokens_per_request=5000,
        state=RunState(run_id="r", total=1, concurrency=10),
        emit=discard,
        time_scale=0.01,
        clock=clock,
        sleep=clock.sleep,
    )
    assert 100.0 <= scaled.backoff_s(1, 1.0) <= 100.05


async def test_runners_sharing_a_model_share_its_known_limit(clock: FakeClock) -> None:
    paced = pacing(clock)
    sent_at = await paced.before_send(0, 5000, None)
    paced.on_reply(reply(RateHeaders(limit_requests=30)), sent_at)
    assert paced.rate.cap() == pytest.approx(28.5)
    paced.share(3)
    assert paced.rate.cap() == pytest.approx(9.5)


async def test_the_run_records_heartbeat_tells_the_pacing_who_shares_the_model() -> None:
    """launch's keeper counts live runs of the same model through the runs table."""

    def run(run_id: str, model: str) -> RunRecord:
        return RunRecord(run_id, "go", "kn", "1.6", model, "h", "host", "2026-12-01T00:00:00Z")

    shared: list[int] = []

    class Store:
        async def heartbeat(self, record: RunRecord) -> list[RunRecord]:
            return [run("b", "grok-4.3"), run("c", "grok-4.3"), run("d", "grok-4.20")]

    state = RunState(run_id="a", total=1, concurrency=1)
    runner = SimpleNamespace(
        state=state,
        pacing=SimpleNamespace(share=shared.append),
        engine=SimpleNamespace(),
        quarantined=[],
        lost=[],
    )
    keeper = asyncio.create_task(
        record._keep_record(Store(), run("a", "grok-4.3"), runner, 3600)  # type: ignore[arg-type]
    )
    await asyncio.sleep(0)
    keeper.cancel()
    assert shared == [3]  # this run and the two others on grok-4.3
    assert state.runners == 4  # the store's budget is shared by all four


async def test_a_stop_wakes_every_waiter(clock: FakeClock) -> None:
    paced = pacing(clock, max_concurrency=1)
    await paced.acquire()
    waiting = asyncio.create_task(paced.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    paced.state.stopping = "spend cap reached"
    paced.wake_all()
    await asyncio.wait_for(waiting, 1.0)


async def test_429s_for_a_request_long_out_do_not_count_towards_a_storm(clock: FakeClock) -> None:
    """A request still out long after 429s come back was accepted: the breaker resets."""
    paced = pacing(clock, max_rounds=2)
    slow = await paced.before_send(0, 5000, None)
    for _ in range(3):
        clock.advance(40.0)
        sent_at = await paced.before_send(0, 5000, None)
        assert paced.on_refused(refused(), sent_at) is None
        paced.on_ended(sent_at)
    paced.on_ended(slow)
    for _ in range(2):
        clock.advance(40.0)
        sent_at = await paced.before_send(0, 5000, None)
        storm = paced.on_refused(refused(), sent_at)
        paced.on_ended(sent_at)
    assert storm is not None and storm.startswith("rate-limit storm")


async def test_a_random_429_costs_its_request_a_moment_a_full_window_a_backoff(
    clock: FakeClock,
) -> None:
    paced = pacing(clock)
    noise = RateLimited("429", 429, None, None, None)
    sent_at = await paced.before_send(0, 5000, None)
    paced.on_refused(noise, sent_at)
    assert paced.backoff_s(1, None) <= 0.05  # nothing says a window is full: go again soon
    full = RateLimited("429", 429, None, "second", LimitClaim("requests", 1.0, 5, 4))
    for _ in range(4):
        sent_at = await paced.before_send(0, 5000, None)
    paced.on_refused(full, sent_at)
    assert "requests" in paced.rate.limits  # believed: this run sent at the claimed limit
    backoffs = [paced.backoff_s(3, None) for _ in range(20)]
    assert max(backoffs) > 0.05  # a full window: the request backs off in full
