"""The pacing's send-rate rules on a fake clock: each test drives ticks of sends at the rate the
controller allows, and a provider model decides which are refused. Nothing sleeps."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

import pytest

from conftest import FakeClock
from knrun.run.live.rate import GROWTH_START, RateController
from knrun.run.live.ticks import RollingSum
from knrun.xai import LimitClaim, RateHeaders

TOKENS = 5_000
Refuse = Callable[[float], bool]  # (the time of a send) -> refused?


def controller(clock: FakeClock, **kwargs: float) -> RateController:
    return RateController(clock=clock, tokens_per_request=TOKENS, **kwargs)


def drive(
    rate: RateController,
    clock: FakeClock,
    seconds: float,
    refuse: Refuse = lambda _: False,
    *,
    claim: LimitClaim | None = None,
    headers: RateHeaders | None = None,
    demand: float | None = None,
) -> tuple[int, int]:
    """Send for `seconds`, each request one interval of the rate in force after the last (at
    most `demand` a second), as the gate does; returns (sent, refused)."""
    end, sent, refused = clock.now + seconds, 0, 0
    while True:
        per_s = rate.current() if demand is None else min(rate.current(), demand)
        clock.now += 1.0 / per_s
        if clock.now > end:
            return sent, refused
        rate.sent(TOKENS)
        sent += 1
        if refuse(clock.now):
            refused += 1
            rate.refused(clock.now, claim, TOKENS)
        else:
            rate.replied(headers, TOKENS)


def window(limit: int) -> Refuse:
    """A rolling one-second window of `limit` accepted requests, as xAI enforces it."""
    accepted: deque[float] = deque()

    def refuse(at: float) -> bool:
        while accepted and accepted[0] <= at - 1.0:
            accepted.popleft()
        if len(accepted) >= limit:
            return True
        accepted.append(at)
        return False

    return refuse


def randomly(share: float, seed: int) -> Refuse:
    rng = random.Random(seed)
    return lambda _: rng.random() < share


def test_it_grows_fast_from_its_start_while_nothing_is_refused(clock: FakeClock) -> None:
    rate = controller(clock)
    start = rate.rate
    drive(rate, clock, 6)  # a tick waits for twenty sends: five seconds at the start
    assert rate.rate == pytest.approx(start * GROWTH_START)
    drive(rate, clock, 10)
    assert rate.rate >= start * GROWTH_START**4  # then shorter ones, down to a second


def test_a_silent_limit_is_found_from_the_accepted_count_and_held(clock: FakeClock) -> None:
    """No headers, no claims: 20 accepted in any second, whatever is sent."""
    rate = controller(clock)
    limit = window(20)
    drive(rate, clock, 20, limit)
    sent, refused = drive(rate, clock, 120, limit)
    assert (sent - refused) / 120 >= 0.9 * 20
    assert refused / sent <= 0.05
    assert rate.rate <= 20 * 1.25  # probes above it now and then, never far


def test_random_429s_are_noise_and_do_not_slow_it(clock: FakeClock) -> None:
    """30% refused at random at any rate: sending more still gets more accepted."""
    rate = controller(clock)
    drive(rate, clock, 40, randomly(0.3, seed=7), demand=400)
    assert rate.rate >= 300


def test_headers_are_facts_and_cap_the_rate_at_95_percent_of_the_limit(clock: FakeClock) -> None:
    rate = controller(clock)
    headers = RateHeaders(limit_requests=30, remaining_requests=25)
    drive(rate, clock, 20, headers=headers)
    assert rate.limits["requests"].source == "header"
    assert rate.rate == pytest.approx(0.95 * 30)


def test_a_token_limit_caps_the_rate_by_tokens_per_request(clock: FakeClock) -> None:
    rate = controller(clock)
    drive(rate, clock, 20, headers=RateHeaders(limit_tokens=6_000_000))
    # 6M tokens/min = 100,000/s; 97% of it at 5,000 tokens a request is 19.4 requests/s.
    assert rate.rate == pytest.approx(19.4, rel=0.005)


def test_two_runners_share_a_known_limit(clock: FakeClock) -> None:
    rate = controller(clock)
    rate.runners = 2
    drive(rate, clock, 20, headers=RateHeaders(limit_requests=30))
    assert rate.rate == pytest.approx(0.95 * 15)


def test_a_claim_is_believed_only_when_this_run_sent_near_it(clock: FakeClock) -> None:
    claim = LimitClaim("requests", 1.0, 31, 30)
    rate = controller(clock)  # 4 requests/s: nowhere near 30
    drive(rate, clock, 1, lambda _: True, claim=claim)
    assert "requests" not in rate.limits
    rate.rate = 40.0
    drive(rate, clock, 1, window(35), claim=claim)
    assert rate.limits["requests"].source == "claim"
    assert rate.rate <= 0.95 * 30


def test_a_claim_429s_keep_coming_under_is_dropped(clock: FakeClock) -> None:
    """The text said 30/s, but refusals go on at 28.5/s: they were about something else."""
    claim = LimitClaim("requests", 1.0, 31, 30)
    rate = controller(clock, start_rps=40.0)
    drive(rate, clock, 1, window(35), claim=claim)
    assert rate.limits["requests"].source == "claim"
    noise = randomly(0.3, seed=3)
    drive(rate, clock, 8, noise, claim=claim)
    assert "requests" not in rate.limits and "requests" in rate.distrusted
    drive(rate, clock, 10, noise, claim=claim)
    assert rate.rate > 0.95 * 30  # and it is no longer held under it


def test_a_window_someone_else_fills_slows_it_and_its_own_sends_do_not(
    clock: FakeClock,
) -> None:
    rate = controller(clock, start_rps=10.0)
    rate.replied(RateHeaders(limit_requests=100, remaining_requests=2), TOKENS)
    assert rate.rate == pytest.approx(9.0)  # 98 used in the window, none of them this run's
    clock.advance(2.0)
    for _ in range(9):
        rate.sent(TOKENS)
    rate.rate = 9.5
    rate.replied(RateHeaders(limit_requests=10, remaining_requests=0), TOKENS)
    assert rate.rate == pytest.approx(9.5)  # its own nine (and one more) fill it: no cut


def test_ticks_bound_by_demand_are_not_judged(clock: FakeClock) -> None:
    """Sending a tenth of what the rate allows proves nothing about the limit."""
    rate = controller(clock, start_rps=100.0)
    drive(rate, clock, 10, demand=5)
    assert rate.rate == 100.0


def test_the_window_mirror_holds_a_request_until_its_tokens_fit(clock: FakeClock) -> None:
    """A minute's token budget is not spent in its first seconds: once the limit is known, a
    request waits until this run's own sends leave the 60 s window."""
    rate = controller(clock)
    rate.replied(RateHeaders(limit_tokens=60_000), TOKENS)  # 95%: 57,000 a minute
    for _ in range(11):  # 55,000 tokens sent at t = 0
        rate.sent(TOKENS)
    assert rate.wait_s(TOKENS) == pytest.approx(60.0, abs=1e-3)
    clock.advance(60.01)
    assert rate.wait_s(TOKENS) == 0.0


def test_a_refused_request_frees_its_place_in_the_window(clock: FakeClock) -> None:
    window = RollingSum(1.0, clock)
    for _ in range(3):
        window.add(clock.now, 1)
    assert window.wait_for(1, 3) > 0
    window.add(clock.now, -1)  # one of them was answered 429: the provider did not count it
    assert window.wait_for(1, 3) == 0.0


def test_a_storm_of_refusals_halves_the_rate_instead_of_probing(clock: FakeClock) -> None:
    rate = controller(clock, start_rps=40.0)
    drive(rate, clock, 3, lambda _: True)
    assert rate.rate <= 40.0 / 4


def test_a_storm_whose_429s_come_back_late_in_the_tick_still_halves_the_rate(
    clock: FakeClock,
) -> None:
    """Each 429 arrives 0.4 s after its request (a far region, a loaded machine): when a tick
    ends, its last 0.4 s of sends have no answer yet, and must not be judged as accepted."""
    rate = controller(clock, start_rps=40.0)
    late: deque[float] = deque()  # send times whose 429 is on its way
    end = clock.now + 4.0
    while clock.now < end:
        clock.now += 1.0 / rate.current()
        while late and late[0] <= clock.now - 0.4:
            rate.refused(late.popleft(), None, TOKENS)
        rate.sent(TOKENS)
        late.append(clock.now)
    assert rate.rate <= 40.0 / 4


def test_a_request_larger_than_its_share_goes_alone_once_the_window_is_empty(
    clock: FakeClock,
) -> None:
    """Two runners share 60,000 tokens a minute (28,500 each, at 95%): a request of 40,000 never
    fits beside anything, so it waits only until this run's window is empty, then goes alone;
    it used to wait for ever, silently, holding everything queued behind it."""
    rate = controller(clock)
    rate.runners = 2
    rate.replied(RateHeaders(limit_tokens=60_000), TOKENS)
    assert rate.wait_s(40_000) == 0.0  # nothing in the window: it goes now
    rate.sent(40_000)
    clock.advance(1.0)
    wait = rate.wait_s(40_000)
    assert 0 < wait <= 60.0  # until the first one leaves the window, not for ever
    clock.advance(wait)
    assert rate.wait_s(40_000) == 0.0


def test_a_prompt_over_the_whole_limit_is_too_large_to_send(clock: FakeClock) -> None:
    rate = controller(clock)
    assert rate.too_large(100_000) is None  # no limit known yet
    rate.replied(RateHeaders(limit_tokens=60_000), TOKENS)
    assert rate.too_large(59_000) is None
    assert rate.too_large(61_000) == 60_000


def test_a_claim_far_below_what_this_run_gets_accepted_is_not_believed(clock: FakeClock) -> None:
    """A 429 with the stock text "(actual/limit): 31/30" while 70 a second are accepted: no
    limit of 30 a second let those through, so the claim is noise and caps nothing (it used to
    cap a pool of 50 at 28.5 a second, halving it under random 429s)."""
    rate = controller(clock, start_rps=100.0)
    for _ in range(70):
        rate.sent(TOKENS)
        rate.replied(None, TOKENS)
    claim = LimitClaim("requests", 1.0, 31, 30)
    rate.sent(TOKENS)
    assert rate.refused(clock.now, claim, TOKENS) is False  # noise: only it waits
    assert "requests" not in rate.limits
