"""How fast the live engine sends: the pacing policy behind one interface, so a worker asks
before each request, and says how it went. `SharedPause` is the first policy: on a new round
of 429s every worker waits (Retry-After when sent, else a doubling pause); the breaker counts
the rounds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from knrun.run.events import Event, EventSink, RunState
from knrun.run.guards import CircuitBreaker, Cooldown
from knrun.xai import ChatReply, RateLimited


class Pacing(Protocol):
    async def before_request(self) -> None:
        """Wait until this worker may send."""

    def after_request(self) -> None:
        """The request is over, whatever its outcome."""

    def on_success(self, reply: ChatReply, latency_s: float) -> None:
        """A reply came back."""

    def on_rate_limited(self, exc: RateLimited, sent_at: float) -> str | None:
        """A 429 for a request sent at `sent_at`; a message when it is a storm (stop)."""


class SharedPause:
    """One pause for every worker on each new round of 429s."""

    def __init__(
        self,
        breaker: CircuitBreaker,
        cooldown: Cooldown,
        state: RunState,
        emit: EventSink,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.breaker, self.cooldown, self.state, self.emit = breaker, cooldown, state, emit
        self._clock = clock

    async def before_request(self) -> None:
        await self.cooldown.wait()

    def after_request(self) -> None:
        pass

    def on_success(self, reply: ChatReply, latency_s: float) -> None:
        self.breaker.record_success()

    def on_rate_limited(self, exc: RateLimited, sent_at: float) -> str | None:
        self.state.rate_limited += 1
        if not self.breaker.record_rate_limited(sent_at, self._clock()):
            return None  # part of a round already being waited out
        self.state.rate_limit_rounds += 1
        if self.breaker.tripped:
            return self.breaker.tripped
        seconds = self.cooldown.trigger(exc.retry_after, self.breaker.rounds)
        self.emit(
            Event(
                "rate_limited",
                f"every worker pauses {seconds:.1f} s (round {self.breaker.rounds})",
                {"retry_after": exc.retry_after, "rounds": self.breaker.rounds},
            )
        )
        return None
