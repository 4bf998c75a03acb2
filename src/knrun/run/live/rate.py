"""The send-rate rules of adaptive pacing, as arithmetic on an injected clock (nothing waits here).

xAI limits each model's requests per second and tokens per minute, and it refuses a request over
a limit with an immediate 429, long before a slow reply would come back. So the rate of sending
is what gets steered. Every `tick_s` (longer, until it has `MIN_TICK_SENDS` sends) the tick that
ended is judged:

- **Start** at the account's limit when it is known (remembered from an earlier run's replies,
  `known`), else, with a fixed pool, unpaced (`free`: the pool alone bounds it, as a plain pool
  would) until the first 429 or header, else at `START_RPS`. The first `x-ratelimit-limit-*`
  header is a fact: the rate goes straight to just under it, from wherever it was.
- **Grow** while nothing is refused: x1.5 a tick at the start, x1.1 later (after a hold).
- **Saturated**: a tick sent faster, but got no more requests accepted than the best recent
  tick, and fewer than random 429s would explain. Sending more only buys 429s, so the rate drops
  to 95% of what was accepted. That finds a limit even when the 429s say nothing.
- **Noise**: 429s while sending faster still got proportionally more accepted are not a limit
  being hit. The rate keeps growing, and only the refused requests wait.
- **Known limits** cap the rate just under their share (`runners` live runs share the account's
  limits): requests per second, and tokens per minute divided by tokens per request. Headers
  are facts, a 429's text a claim (`limits.py`); 429s that keep coming under a believed claim
  drop it: they were about something else.
- **The provider's windows, mirrored**: once a limit is known, a request goes only when this
  run's own accepted sends in that limit's rolling window (1 s, or 60 s for tokens) leave room
  for it (`wait_s`), so a minute's token budget is not spent in its first seconds.
- **Steady but refused**: 429s (over 5%) at a rate that did not grow are either a limit that
  moved (another runner started) or noise. Going up tells which: the saturation rule catches
  the first, and the second gets its throughput back. Nearly all refused (90% or more) is a
  storm: the rate halves.
- **Nearly full**: a reply whose `x-ratelimit-remaining-*` is under 5% of its limit, when this
  run's own sends do not explain it (someone else spends the limit), takes 10% off the rate for
  the tick.
- The rate never drops below `min_rps`, and never grows faster than demand: a tick that sent
  under 70% of what the rate allowed (the concurrency cap or the ledger bound it) is not judged.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

from knrun.run.live import limits
from knrun.run.live.ticks import (
    HISTORY_TICKS,
    MAX_TICK_S,
    MIN_TICK_SENDS,
    Limit,
    RollingSum,
    Tick,
    flat,
)
from knrun.xai import LimitClaim, RateHeaders

START_RPS = 4.0
MIN_RPS = 0.2
GROWTH_START, GROWTH_STEADY = 1.5, 1.1
HOLD_TICKS = 8  # ticks at a found limit before probing above it again
DISTRUST_TICKS = 3  # ticks of >10% refused under a believed claim before it is dropped


class RateController:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        tokens_per_request: float,
        start_rps: float = START_RPS,
        min_rps: float = MIN_RPS,
        tick_s: float = 1.0,
        known: dict[str, float] | None = None,
    ) -> None:
        """`start_rps` may be `math.inf` (free: unpaced until a 429 or a header); `known`:
        limits per second remembered from earlier runs (requests, tokens), started under."""
        self._clock, self.tick_s = clock, tick_s
        self.rate, self.min_rps = start_rps, min_rps
        self.startup = True
        self.runners = 1
        self.tokens_per_request = max(tokens_per_request, 1.0)
        self.limits: dict[str, Limit] = {
            kind: Limit(per_s, "memory") for kind, per_s in (known or {}).items() if per_s > 0
        }  # requests | tokens
        if self.limits:
            self.rate = self.cap()
        self.distrusted: set[str] = set()  # kinds whose claims proved to be about something else
        self._ticks: deque[Tick] = deque([Tick(clock(), start_rps)], maxlen=3)
        self._history: deque[Tick] = deque(maxlen=HISTORY_TICKS)  # judged ticks, latest last
        self._sends: deque[tuple[float, int]] = deque()  # (time, tokens): the last minute's
        # What the provider counted of this run's sends, in its windows' lengths.
        self.requests_1s = RollingSum(1.0, clock)
        self.tokens_60s = RollingSum(60.0, clock)
        self._hold = 0
        self._refused_under_claim = 0
        self.refusal_lag_s = 0.0  # how long a 429 takes to come back: the slowest, decaying

    # -- what happened ----------------------------------------------------------------------------

    def sent(self, tokens: int) -> None:
        now = self._advance()
        self._ticks[-1].sent += 1
        self._ticks[-1].sent_at.append(now)
        self._sends.append((now, tokens))
        self.requests_1s.add(now, 1)
        self.tokens_60s.add(now, tokens)

    @property
    def free(self) -> bool:
        """Unpaced: nothing has been refused and no limit is known yet (a fixed pool)."""
        return math.isinf(self.rate)

    def refused(self, sent_at: float, claim: LimitClaim | None, tokens: int = 0) -> bool:
        """A 429 for a request sent at `sent_at`; True when it was a full window (a limit
        this run is at), False when it looks like noise (only that request need wait)."""
        now = self._advance()
        if self.free:  # the first 429: pace from what was being sent
            recent = sum(1 for at, _ in self._sends if at >= now - 1.0)
            self.rate = max(self.min_rps, float(recent))
            self._ticks[-1].rate = self.rate
        self.refusal_lag_s = max(0.95 * self.refusal_lag_s, now - sent_at)
        tick = next((t for t in reversed(self._ticks) if t.start <= sent_at), self._ticks[0])
        tick.refused += 1
        tick.refused_at.append(sent_at)
        self.requests_1s.add(sent_at, -1)  # refused: the provider did not count it
        self.tokens_60s.add(sent_at, -tokens)
        believed = (
            claim is not None and claim.kind not in self.distrusted and self._believable(claim)
        )
        if claim is not None and believed:
            known = self.limits.get(claim.kind)
            if known is None or known.source in ("claim", "memory"):
                self.limits[claim.kind] = Limit(claim.per_s, "claim")
                self.rate = min(self.rate, self.cap())
        return believed or self._near_a_limit(tokens)

    def _near_a_limit(self, tokens: int) -> bool:
        """This run's own sends fill 90% or more of a known limit's window now."""
        requests, sent_tokens = self.requests_1s.total + 1, self.tokens_60s.total + tokens
        return limits.near(self.limits, requests, sent_tokens, self.runners)

    def replied(self, headers: RateHeaders | None, total_tokens: int) -> None:
        self._advance()
        # Tokens per request from real usage, smoothed: what the token limit divides by.
        self.tokens_per_request += 0.05 * (max(total_tokens, 1) - self.tokens_per_request)
        if headers is None:
            return
        learned = False
        if headers.limit_requests:
            learned |= self._learn("requests", float(headers.limit_requests))
        if headers.limit_tokens:
            learned |= self._learn("tokens", headers.limit_tokens / 60.0)
        nearly_full = any(
            limits.others_fill(limit, remaining, ours)
            for limit, remaining, ours in (
                (headers.limit_requests, headers.remaining_requests, self.requests_1s.total),
                (headers.limit_tokens, headers.remaining_tokens, self.tokens_60s.total),
            )
        )
        if nearly_full and self._ticks[-1].rate <= self.rate:
            # Someone else fills the window: under what this run was sending, not up to it.
            self.rate = max(self.min_rps, min(self.rate, self.cap()) * 0.9)
        elif learned:  # a fact: just under it, whether the rate was below or above
            self.rate = self.cap()
            self._ticks[-1].rate = self.rate
        self.rate = min(self.rate, self.cap())

    def _learn(self, kind: str, per_s: float) -> bool:
        """A header's limit; True when it is news (unknown, or not this figure)."""
        known = self.limits.get(kind)
        if known is not None and known.source == "header" and known.per_s == per_s:
            return False
        self.limits[kind] = Limit(per_s, "header")
        return True

    # -- the rules --------------------------------------------------------------------------------

    def cap(self) -> float:
        """The highest rate the known limits allow this run."""
        return limits.cap(self.limits, self.runners, self.tokens_per_request, self.min_rps)

    def current(self) -> float:
        """The rate now, after judging any tick that has ended."""
        self._advance()
        return self.rate

    def _advance(self) -> float:
        """End the tick once it is `tick_s` old and has enough sends to judge (or is
        MAX_TICK_S old), judge it, and start the next at the rate that follows."""
        now = self._clock()
        tick = self._ticks[-1]
        age = now - tick.start
        if age >= self.tick_s and (tick.sent >= MIN_TICK_SENDS or age >= MAX_TICK_S):
            tick.length = age
            before = self._ticks[-2] if len(self._ticks) >= 2 else tick
            self._judge(tick.settled(self.refusal_lag_s), before)
            self._ticks.append(Tick(now, self.rate))
        horizon = now - 60.0
        while self._sends and self._sends[0][0] < horizon:
            self._sends.popleft()
        return now

    def too_large(self, prompt_tokens: int) -> int | None:
        """The account's tokens-per-minute limit, when a prompt alone is over it: xAI could
        never take the request (None: it fits, or no limit is known)."""
        if (limit := self.limits.get("tokens")) is None:
            return None
        per_minute = round(limit.per_s * 60.0)
        return per_minute if prompt_tokens > per_minute else None

    def wait_s(self, tokens: int) -> float:
        """How long a request of `tokens` must wait for room in the known limits' windows, as
        this run's own accepted sends fill them (0: it may go now)."""
        self._advance()
        wait = 0.0
        if (requests := self.limits.get("requests")) is not None:
            # In a 1 s window, rounded: at 10 requests/s, 9.5 would mean at most 9 (the gate's
            # spacing keeps the average at 95%).
            per_window = math.floor(limits.REQUEST_SHARE * requests.per_s / self.runners + 0.5)
            wait = self.requests_1s.wait_for(1, max(per_window, 1))
        if (limit := self.limits.get("tokens")) is not None:
            per_minute = limits.TOKEN_SHARE * limit.per_s * 60.0 / self.runners  # in a 60 s window
            wait = max(wait, self.tokens_60s.wait_for(tokens, per_minute))
        return wait

    def _judge(self, done: Tick, before: Tick) -> None:
        if done.sent >= MIN_TICK_SENDS // 4 and done.share >= 0.9:
            # Next to nothing accepted: a storm, not noise (and its backoffs make any tick look
            # bound by demand). Halve; the breaker counts rounds.
            self.rate = max(self.min_rps, self.rate * 0.5)
            return
        if done.sent < 0.7 * done.rate * done.length:
            return  # demand, not the rate, bound this tick
        grew = done.rate > before.rate * 1.01
        if grew and self._limit_found(done):
            self._saturated(done)
            return
        if done.share < 0.02 or grew:
            self._grow()
        elif done.share > 0.10 and self._under_claim():
            self._refused_under_claim += 1
            if self._refused_under_claim >= DISTRUST_TICKS:
                self._distrust_claims()
        elif done.share > 0.05:
            self._probe()
        else:
            self._refused_under_claim = 0
        self._history.append(done)

    def _limit_found(self, done: Tick) -> bool:
        """Sending faster got no more accepted than the best of the last ticks, and fewer than
        noise would explain: were the 429s random (as many as the slowest recent tick had,
        below any limit), about sent x (1 - share) would have been accepted, give or take two
        deviations. Or, when every recent tick was over the limit (it is below the rate the
        run started at), accepted stayed flat as sent grew."""
        history = [tick for tick in self._history if tick.sent >= MIN_TICK_SENDS // 2]
        if not history or done.refused < 2:
            return False
        if done.accepted_rate >= 1.02 * max(tick.accepted_rate for tick in history):
            return False
        slowest = min(tick.sent_rate for tick in history)
        below = [tick for tick in history if tick.sent_rate <= 1.05 * slowest]
        noise = sum(tick.refused for tick in below) / sum(tick.sent for tick in below)
        expected = done.sent * (1 - noise)
        deviation = math.sqrt(done.sent * noise * (1 - noise)) + 1
        return done.accepted < expected - 2 * deviation or flat([*history, done])

    def _saturated(self, done: Tick) -> None:
        self.startup = False
        self._hold = HOLD_TICKS
        self._history.clear()  # ticks over the limit say nothing about the noise under it
        self.rate = max(self.min_rps, min(self.cap(), 0.95 * done.accepted_rate))

    def _grow(self) -> None:
        if self._hold > 0:
            self._hold -= 1
            return
        self.rate = min(self.cap(), self.rate * (GROWTH_START if self.startup else GROWTH_STEADY))

    def _probe(self) -> None:
        """Up once (after any hold): if it is a limit, the next tick is saturated."""
        if self._hold > 0:
            self._hold -= 1
            return
        self.rate = min(self.cap(), self.rate * GROWTH_STEADY)

    def _under_claim(self) -> bool:
        return any(
            limit.source == "claim" and self.rate >= 0.9 * self.cap()
            for limit in self.limits.values()
        )

    def _distrust_claims(self) -> None:
        for kind, limit in list(self.limits.items()):
            if limit.source == "claim":
                del self.limits[kind]
                self.distrusted.add(kind)
        self._refused_under_claim = 0

    def _believable(self, claim: LimitClaim) -> bool:
        window = self.requests_1s if claim.kind == "requests" else self.tokens_60s
        sends = list(self._sends)
        return limits.believable(claim, sends, window.total, self._clock(), self.runners)
