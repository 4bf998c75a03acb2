"""`pricing.toml`, money in integer ticks (1 tick = 1e-10 USD), and the cost of a usage.

Prices in the file are USD per million tokens, as on the provider's models page. One USD per
million tokens is 10,000 ticks per token, so prices with up to four decimals are whole ticks and a
usage's cost is exact integer arithmetic, the same way the provider's `cost_in_usd_ticks` is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from knrun.errors import ConfigError
from knrun.tomlfile import problems, read_toml

TICKS_PER_USD = 10**10
TICKS_PER_TOKEN_PER_USD_PER_M = 10**10 // 10**6  # $1 per 1M tokens = 10,000 ticks per token

PriceKind = Literal[
    "input",
    "cached_input",
    "output",
    "batch_input",
    "batch_output",
    "input_long",
    "cached_input_long",
    "output_long",
]
LONG_KINDS: tuple[PriceKind, PriceKind, PriceKind] = (
    "input_long",
    "cached_input_long",
    "output_long",
)


def usd_to_ticks(usd: Decimal) -> int:
    return int((usd * TICKS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def ticks_to_usd(ticks: int) -> Decimal:
    return Decimal(ticks) / TICKS_PER_USD


def format_usd(ticks: int, places: int = 4) -> str:
    quantum = Decimal(1).scaleb(-places)
    value = ticks_to_usd(ticks).quantize(quantum, rounding=ROUND_HALF_EVEN)
    return f"-${-value:,}" if value < 0 else f"${value:,}"


def format_price(usd_per_m: Decimal) -> str:
    """A per-million price with at least two decimals, more only when it has them: 0.50, 0.0758."""
    return f"{usd_per_m:.2f}" if usd_per_m == round(usd_per_m, 2) else f"{usd_per_m.normalize()}"


def usd_per_m_from_live(cents_per_100m_tokens: int) -> Decimal:
    """The live list's unit (USD cents per 100M tokens, i.e. ticks per token) as USD per 1M."""
    return Decimal(cents_per_100m_tokens) / TICKS_PER_TOKEN_PER_USD_PER_M


@dataclass(frozen=True)
class Usage:
    """Token counts of one request, as the provider reports them."""

    prompt_tokens: int  # includes cached_tokens
    completion_tokens: int  # visible output only
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # billed at the output price, NOT inside completion_tokens
    billed_ticks: int | None = None  # `cost_in_usd_ticks`: what the provider actually charged

    @property
    def uncached_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def output_tokens(self) -> int:
        """Billed output: visible completion plus reasoning (= total_tokens - prompt_tokens)."""
        return self.completion_tokens + self.reasoning_tokens


@dataclass(frozen=True)
class ModelPrice:
    """One model's prices in USD per million tokens, with where and when they were checked."""

    model: str
    input: Decimal
    cached_input: Decimal
    output: Decimal
    batch_input: Decimal | None
    batch_output: Decimal | None
    source: str
    verified_at: date
    # Only "xai" models are checked against xAI's live list; others are there for comparison.
    provider: str = "xai"
    # A request whose prompt has at least this many tokens is billed at the *_long prices for
    # all its tokens (0: the model has no long-context tier).
    long_context_threshold: int = 0
    input_long: Decimal | None = None
    cached_input_long: Decimal | None = None
    output_long: Decimal | None = None

    def ticks_per_token(self, kind: PriceKind) -> Decimal:
        price = getattr(self, kind)
        if price is None:
            raise ConfigError(f"pricing.toml: {self.model}: no {kind} price")
        return Decimal(price) * TICKS_PER_TOKEN_PER_USD_PER_M

    def is_long(self, prompt_tokens: int) -> bool:
        return 0 < self.long_context_threshold <= prompt_tokens

    def cost_ticks(self, usage: Usage) -> int:
        """What a standard (non-batch) request with this usage costs, the way xAI bills it: a
        prompt past the long-context threshold puts every token at the long-context rate."""
        kinds: tuple[PriceKind, PriceKind, PriceKind] = (
            LONG_KINDS if self.is_long(usage.prompt_tokens) else ("input", "cached_input", "output")
        )
        exact = (
            usage.uncached_prompt_tokens * self.ticks_per_token(kinds[0])
            + usage.cached_tokens * self.ticks_per_token(kinds[1])
            + usage.output_tokens * self.ticks_per_token(kinds[2])
        )
        return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))

    def estimate_ticks(
        self, input_tokens: int, output_tokens: int, *, batch: bool = False, per_request: int = 0
    ) -> int:
        """Cost of a workload with no cache hits (estimates stay on the safe side).
        `per_request`: prompt tokens of one request, to tell whether the long-context rate
        applies (0: not known, standard rate)."""
        kinds: tuple[PriceKind, PriceKind] = (
            ("batch_input", "batch_output") if batch else ("input", "output")
        )
        if not batch and self.is_long(per_request):
            kinds = ("input_long", "output_long")
        exact = input_tokens * self.ticks_per_token(
            kinds[0]
        ) + output_tokens * self.ticks_per_token(kinds[1])
        return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))

    @property
    def has_batch_prices(self) -> bool:
        return self.batch_input is not None and self.batch_output is not None

    def for_batch(self) -> ModelPrice:
        """The Batch API's prices as a price of their own, so every cost of a batch run (its
        tracked cost, the cap's worst case, the drift check) is at the batch rate. Cached input
        gets the batch discount of plain input. A ConfigError when pricing.toml has no batch
        prices for the model: its batch price is not known, so it is not assumed."""
        if self.batch_input is None or self.batch_output is None:
            raise ConfigError(
                f"pricing.toml: {self.model} has no batch prices (batch_input, batch_output): "
                "the Batch API's discount varies by model and some refuse it; add them from "
                "xAI's pricing page, or run it live"
            )
        ratio = self.batch_input / self.input if self.input else Decimal(1)
        return replace(
            self,
            input=self.batch_input,
            cached_input=self.cached_input * ratio,
            output=self.batch_output,
            # No long-context tier is published for batch prices: not modelled for batch.
            long_context_threshold=0,
        )

    @property
    def batch_discount(self) -> Decimal | None:
        """The batch discount on output, as a fraction (0.20 for 20% off); None if unpriced."""
        if self.batch_output is None or not self.output:
            return None
        return 1 - self.batch_output / self.output

    def fingerprint(self) -> str:
        """Changes when any of this model's prices change (not when only the date does)."""
        kinds = ("input", "cached_input", "output", "batch_input", "batch_output")
        parts = [self.model] + [str(getattr(self, kind)) for kind in kinds]
        if self.long_context_threshold:  # only then, so older receipts stay valid
            parts += [str(self.long_context_threshold)] + [
                str(getattr(self, k)) for k in LONG_KINDS
            ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class _PriceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Decimal = Field(ge=0)
    cached_input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    batch_input: Decimal | None = Field(default=None, ge=0)
    batch_output: Decimal | None = Field(default=None, ge=0)
    source: str = Field(min_length=1)
    verified_at: date
    provider: str = "xai"
    long_context_threshold: int = Field(default=0, ge=0)
    input_long: Decimal | None = Field(default=None, ge=0)
    cached_input_long: Decimal | None = Field(default=None, ge=0)
    output_long: Decimal | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _long_prices(self) -> _PriceEntry:
        if self.long_context_threshold and None in (
            self.input_long,
            self.cached_input_long,
            self.output_long,
        ):
            raise ValueError(
                "long_context_threshold needs input_long, cached_input_long and output_long"
            )
        return self


class _Retired(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = []


class _PricingFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, _PriceEntry] = {}
    retired: _Retired = _Retired()


@dataclass(frozen=True)
class PricingTable:
    path: Path
    models: dict[str, ModelPrice]
    retired: frozenset[str]

    def price_for(self, model: str) -> ModelPrice:
        """The model's prices; a ConfigError if it is retired or not priced at all."""
        if model in self.retired:
            raise ConfigError(f"{self.path}: model {model!r} is listed as retired; do not run it")
        try:
            return self.models[model]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(
                f"{self.path}: model {model!r} is not priced (priced: {known}); "
                "run `knrun pricing sync` or fix the job's model"
            ) from None


def load_pricing(path: Path) -> PricingTable:
    # parse_float=Decimal: 0.2 stays exactly 0.2, never a binary float.
    data = read_toml(path, "pricing file", parse_float=Decimal)
    try:
        parsed = _PricingFile.model_validate(data)
    except ValidationError as exc:
        raise problems(path, exc) from None
    models = {
        name: ModelPrice(model=name, **entry.model_dump()) for name, entry in parsed.models.items()
    }
    return PricingTable(path=path, models=models, retired=frozenset(parsed.retired.models))
