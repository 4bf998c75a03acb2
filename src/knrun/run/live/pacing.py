"""How fast the live engine sends: the pacing policy behind one interface. A worker takes a slot
(`acquire`) before it takes a unit, passes the rate gate (`before_send`) before each request,
and says how each one went.

`AdaptivePacing` is the policy: the send rate follows `rate.RateController`'s rules, and the
concurrency follows from the rate (Little's law: in flight = rate x latency, with headroom),
capped by `max_concurrency`. Nobody freezes: a request that got a 429 waits its own
full-jitter backoff, and the others keep the pace. The breaker counts rounds of 429s with no
request accepted between them; a round lasts at least `ROUND_S`, doubling with each round in a
row up to `BACKOFF_MAX_S` (ten rounds are minutes of nothing accepted); a request still in flight
`ACCEPTED_AFTER_S` (and ten times what a 429 takes to come back) after it was sent was accepted,
so a slow model's first replies are not needed to prove the run is alive.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from knrun.clock import scaled_clock, scaled_sleep
from knrun.run.events import Event, EventSink, RunState
from knrun.run.guards import CircuitBreaker
from knrun.run.live.rate import START_RPS, RateController
from knrun.xai import ChatReply, RateLimited

BACKOFF_BASE_S, BACKOFF_MAX_S = 0.5, 30.0
ROUND_S = 1.0
ACCEPTED_AFTER_S = 2.0
HEADROOM = 1.5  # concurrency allowed over rate x latency: latency varies
BURST_S = 0.02  # the gate lets this much of a second's rate go at once (two requests at least)
NOISE_RETRY_S = 0.05  # a request refused by a random 429 goes again within this
NOISE_TRIES = 4  # refused this often, it backs off in full whatever the 429s look like
FULL_WINDOW_S = 1.0  # after a full window's 429, retries back off in full for this long


class Pacing(Protocol):
    async def acquire(self) -> None:
        """Wait for a slot: one unit in flight."""

    def release(self) -> None: ...

    async def before_send(self, tries: int, tokens: int, retry_after: float | None) -> float:
        """Wait until a request may go (after its own backoff when `tries` > 0); returns the
        time it went, for the calls below."""

    def on_reply(self, reply: ChatReply, sent_at: float) -> None: ...

    def on_refused(self, exc: RateLimited, sent_at: float) -> str | None:
        """A 429; a message when the breaker trips (stop the run)."""

    def on_ended(self, sent_at: float) -> None:
        """The request sent at `sent_at` is over, whatever came of it."""

    def share(self, runners: int) -> None:
        """`runners` live runs (this one included) share the account's limits."""

    def too_large(self, prompt_tokens: int) -> int | None:
        """The tokens-per-minute limit a prompt alone is over, if known (it can never go)."""

    def wake_all(self) -> None:
        """The run is stopping: let every waiter go and look."""


class AdaptivePacing:
    def __init__(
        self,
        *,
        max_concurrency: int,
        adaptive_concurrency: bool = True,
        max_rounds: int,
        tokens_per_request: float,
        state: RunState,
        emit: EventSink,
        known: dict[str, float] | None = None,
        time_scale: float = 1.0,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`time_scale`: against a time-scaled simulator, one pacing second lasts this many
        real ones (see `scaled_clock`); `clock` and `sleep` override it in tests."""
        clock = clock or scaled_clock(time_scale)
        sleep = sleep or scaled_sleep(time_scale)
        self.time_scale = time_scale
        self.max_concurrency, self.state, self.emit = max_concurrency, state, emit
        self.adaptive_concurrency = adaptive_concurrency
        self._clock, self._sleep, self._rng = clock, sleep, rng or random.Random()  # noqa: S311 (jitter, not secrets)
        # Known limits (remembered from earlier replies) start it just under them. Else a fixed
        # pool starts unpaced, as a plain pool of that size would be, until a 429 or a header
        # says more; auto starts low and grows, since it may be allowed thousands in flight.
        start = START_RPS if adaptive_concurrency else math.inf
        self.rate = RateController(
            clock=clock, tokens_per_request=tokens_per_request, start_rps=start, known=known
        )
        self._full_until = -math.inf  # a 429 of a full window came lately: back off in full
        self.breaker = CircuitBreaker(max_rounds, min_round_s=ROUND_S, max_round_s=BACKOFF_MAX_S)
        self.in_use = 0
        self.latency_s: float | None = None  # smoothed, of replies
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._gate: deque[tuple[asyncio.Future[None], int]] = deque()  # (waiter, tokens)
        self._dispatcher: asyncio.Task[None] | None = None
        self._tokens, self._refilled = 1.0, self._clock()  # the gate's bucket
        self._sends: deque[float] = deque()  # send times of requests not yet over, in order
        self._ended: Counter[float] = Counter()
        self._tokens_at: dict[float, int] = {}  # of requests in flight, by send time
        self._refusal_s = 0.0  # how long a 429 has taken to come back, at the most
        self._publish()

    # -- slots ------------------------------------------------------------------------------------

    def limit(self) -> int:
        """Units allowed in flight now: what the rate needs for the latency seen, with headroom.
        Before the first reply, the oldest request still out stands in for the latency: it
        grows as the requests stay out, so a slow model's pipeline fills as fast as it needs."""
        if not self.adaptive_concurrency:
            return self.max_concurrency
        now = self._clock()
        latency = self.latency_s
        if latency is None:
            latency = now - self._oldest_in_flight(now)
        needed = math.ceil(self.rate.rate * latency * HEADROOM) + 8
        return max(1, min(self.max_concurrency, needed))

    async def acquire(self) -> None:
        while self.in_use >= self.limit():
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            await waiter
            if self.state.stopping:
                break
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        self._wake_slots()

    def _wake_slots(self) -> None:
        free = self.limit() - self.in_use
        while free > 0 and self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def wake_all(self) -> None:
        for waiter in [*self._slot_waiters, *(waiter for waiter, _ in self._gate)]:
            if not waiter.done():
                waiter.set_result(None)
        self._slot_waiters.clear()
        self._gate.clear()

    # -- the rate gate ----------------------------------------------------------------------------

    async def before_send(self, tries: int, tokens: int, retry_after: float | None) -> float:
        if tries:
            await self._sleep(self.backoff_s(tries, retry_after))
        waiter = asyncio.get_running_loop().create_future()
        self._gate.append((waiter, tokens))
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())
        await waiter
        sent_at = self._clock()
        self.rate.sent(tokens)
        self.state.sent += 1
        self._sends.append(sent_at)
        self._tokens_at[sent_at] = tokens
        if self.latency_s is None:
            self._wake_slots()  # the oldest request out is older: more slots
        return sent_at

    def backoff_s(self, tries: int, retry_after: float | None) -> float:
        """Full jitter: anywhere up to base x 2^(tries-1), capped; a Retry-After is honoured
        (xAI sends none; a proxy might). A 429 that looks like noise (no known limit near, no
        believable claim) costs its request only a moment: the gate paces its retry, and a
        random 429 must not halve the run's pace."""
        if retry_after is None and tries < NOISE_TRIES and self._clock() >= self._full_until:
            return self._rng.uniform(0, NOISE_RETRY_S)
        ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (tries - 1))
        jitter = self._rng.uniform(0, ceiling)
        if retry_after is None:
            return jitter
        # The header counts real seconds; pacing counts its own.
        return max(retry_after, 0.0) / self.time_scale + jitter * 0.1

    async def _dispatch(self) -> None:
        """Let waiters go at the current rate, in arrival order: a token bucket holding at most
        `BURST_S` of the rate (two requests at least), so at hundreds a second a wake lets a few
        go instead of one, and a late wake catches up one request, never a burst."""
        while self._gate:
            waiter, tokens = self._gate.popleft()
            if waiter.done():
                continue
            while (wait := self._take_token()) > 0:
                await self._sleep(wait)
            while (room := self.rate.wait_s(tokens)) > 0 and not self.state.stopping:
                await self._sleep(room)  # the provider's window is full of this run's sends
            if not waiter.done():
                waiter.set_result(None)

    def _take_token(self) -> float:
        """Take one request's token (0.0), or say how long until there is one."""
        rate, now = self.rate.current(), self._clock()
        if math.isinf(rate):  # unpaced: the pool alone bounds it
            return 0.0
        # Two at least: a timer that fires late must not cost its lateness (a bucket of one
        # would drop it, and run under the rate).
        burst = max(2.0, rate * BURST_S)
        self._tokens = min(burst, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / rate

    # -- outcomes ---------------------------------------------------------------------------------

    def on_reply(self, reply: ChatReply, sent_at: float) -> None:
        latency = max(self._clock() - sent_at, 0.0)
        self.latency_s = latency if self.latency_s is None else 0.9 * self.latency_s + 0.1 * latency
        usage = reply.usage
        self.rate.replied(reply.rate, usage.prompt_tokens + usage.output_tokens)
        self.breaker.record_success()
        self._publish()

    def on_refused(self, exc: RateLimited, sent_at: float) -> str | None:
        self.state.rate_limited += 1
        full = self.rate.refused(sent_at, exc.claim, self._tokens_at.get(sent_at, 0))
        now = self._clock()
        if full:
            self._full_until = now + FULL_WINDOW_S
        # 429s come back fast; a request out ten times longer than the slowest of them was
        # accepted.
        self._refusal_s = max(now - sent_at, self._refusal_s)
        accepted_after = max(ACCEPTED_AFTER_S, 10 * self._refusal_s)
        if self._oldest_in_flight(now) <= now - accepted_after:
            self.breaker.record_success()  # something sent before is being worked on
        if self.breaker.record_rate_limited(sent_at, now):
            self.state.rate_limit_rounds += 1
            self.emit(
                Event(
                    "rate_limited",
                    f"429s: pacing at {self.rate.rate:.1f} requests/s "
                    f"(round {self.breaker.rounds})",
                    {"rate_rps": round(self.rate.rate, 2), "rounds": self.breaker.rounds},
                )
            )
        self._publish()
        return self.breaker.tripped

    def on_ended(self, sent_at: float) -> None:
        self._ended[sent_at] += 1
        self._tokens_at.pop(sent_at, None)
        self._oldest_in_flight(self._clock())  # drop what has ended: memory stays flat

    def share(self, runners: int) -> None:
        self.rate.runners = max(1, runners)
        self._publish()

    def too_large(self, prompt_tokens: int) -> int | None:
        return self.rate.too_large(prompt_tokens)

    def _oldest_in_flight(self, now: float) -> float:
        while self._sends and self._ended[self._sends[0]]:
            at = self._sends.popleft()
            self._ended[at] -= 1
            if not self._ended[at]:
                del self._ended[at]
        return self._sends[0] if self._sends else now

    def _publish(self) -> None:
        """The figures the panel and the run record show."""
        self.state.rate_rps = 0.0 if self.rate.free else self.rate.rate
        self.state.concurrency = self.limit()
        self.state.rate_limit = self._describe_limit()
        self._wake_slots()

    def _describe_limit(self) -> str:
        words = []
        for kind, unit in (("requests", "requests/s"), ("tokens", "tokens/min")):
            if (limit := self.rate.limits.get(kind)) is not None:
                per = limit.per_s * (60 if kind == "tokens" else 1)
                words.append(f"{per:,.0f} {unit} ({limit.source})")
        return ", ".join(words) or (
            "not known yet (unpaced)" if self.rate.free else "not known yet"
        )
