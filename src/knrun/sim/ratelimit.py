"""xAI's rate limits as the simulator enforces them: rolling windows per model, requests per
second and tokens per minute, with the refusal texts seen live and the `x-ratelimit-*` headers
that successful replies carry (errors carry none, and no Retry-After is sent)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from knrun.sim.scenario import RateLimits


class RollingWindow:
    """The sum of amounts added in the last `window_s` seconds."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        self.window_s = window_s
        self._clock = clock
        self._entries: deque[tuple[float, int]] = deque()
        self._total = 0

    def total(self) -> int:
        horizon = self._clock() - self.window_s
        while self._entries and self._entries[0][0] <= horizon:
            self._total -= self._entries.popleft()[1]
        return self._total

    def add(self, amount: int) -> None:
        self._entries.append((self._clock(), amount))
        self._total += amount


@dataclass
class ModelLimits:
    """One model's two windows (time-scaled like everything else in the simulator)."""

    limits: RateLimits
    requests: RollingWindow
    tokens: RollingWindow
    refusals: dict[str, int] = field(default_factory=lambda: {"requests": 0, "tokens": 0})

    def refusal(self, team: str, model: str, prompt_tokens: int) -> str | None:
        """The 429 message if this request would pass a limit now, else None."""
        rps, tpm = self.limits.requests_per_s, self.limits.tokens_per_min
        if rps is not None and self.requests.total() + 1 > rps:
            self.refusals["requests"] += 1
            return (
                f"Too many requests for team {team} and model {model}. "
                f"Requests per Second (actual/limit): {self.requests.total() + 1}/{rps:g}."
            )
        if tpm is not None and self.tokens.total() + prompt_tokens > tpm:
            self.refusals["tokens"] += 1
            return (
                f"Too many tokens for team {team} and model {model}. "
                f"Tokens per Minute (actual/limit): {self.tokens.total() + prompt_tokens}/{tpm}."
            )
        return None

    def admit(self, total_tokens: int) -> None:
        self.requests.add(1)
        self.tokens.add(total_tokens)

    def headers(self) -> dict[str, str]:
        """What a successful reply says about the windows, as observed live."""
        found: dict[str, str] = {}
        if self.limits.requests_per_s is not None:
            limit = int(self.limits.requests_per_s)
            found["x-ratelimit-limit-requests"] = str(limit)
            found["x-ratelimit-remaining-requests"] = str(max(limit - self.requests.total(), 0))
        if self.limits.tokens_per_min is not None:
            limit = self.limits.tokens_per_min
            found["x-ratelimit-limit-tokens"] = str(limit)
            found["x-ratelimit-remaining-tokens"] = str(max(limit - self.tokens.total(), 0))
        return found


class RateLimiter:
    """Windows for every model, created on first use."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float], time_scale: float) -> None:
        self.limits = limits
        self._clock = clock
        self._scale = time_scale
        self.models: dict[str, ModelLimits] = {}

    def for_model(self, model: str) -> ModelLimits:
        if model not in self.models:
            self.models[model] = ModelLimits(
                self.limits,
                RollingWindow(1.0 * self._scale, self._clock),
                RollingWindow(60.0 * self._scale, self._clock),
            )
        return self.models[model]
