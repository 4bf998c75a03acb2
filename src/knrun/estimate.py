"""What the remaining corpus will cost: tokens per unit (input measured by rendering prompts,
output from this job's history or its default), priced standard, batch and on every model."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from knrun.job import JobSpec
from knrun.pricing import ModelPrice, PricingTable
from knrun.store.types import Progress

TOKENS_PER_MESSAGE = 4  # role and framing around each message


def prompt_tokens(messages: Iterable[Mapping[str, str]]) -> int:
    """About 4 characters a token: a rough count, which the canary replaces with real usage."""
    return sum(math.ceil(len(m["content"]) / 4) + TOKENS_PER_MESSAGE for m in messages)


@dataclass(frozen=True)
class ModelCost:
    model: str
    standard_ticks: int
    batch_ticks: int | None


@dataclass(frozen=True)
class Estimate:
    remaining: int
    sampled: int  # units whose prompts were rendered and counted
    input_tokens: float  # per unit
    output_tokens: float  # per unit, visible + reasoning
    output_source: str
    unit_ticks: int
    total_ticks: int
    batch_total_ticks: int | None
    models: list[ModelCost]  # the same corpus on every priced model, cheapest first
    in_batches: int = 0  # not counted in `remaining`: already in open batches at xAI

    @property
    def total_input_tokens(self) -> int:
        return round(self.input_tokens * self.remaining)

    @property
    def total_output_tokens(self) -> int:
        return round(self.output_tokens * self.remaining)


def output_tokens(job: JobSpec, progress: Progress) -> tuple[float, str]:
    """This job's real average when it has enough finished units, else its configured default."""
    if progress.done >= job.estimate.min_history and progress.avg_output_tokens is not None:
        return progress.avg_output_tokens, f"average of {progress.done} finished units"
    return float(job.estimate.output_tokens), (
        f"job default ({progress.done} finished units, {job.estimate.min_history} needed)"
    )


def build(
    *,
    job: JobSpec,
    price: ModelPrice,
    pricing: PricingTable,
    remaining: int,
    sample: list[dict[str, Any]],
    output: tuple[float, str],
) -> Estimate:
    counts = [prompt_tokens(job.render(unit)) for unit in sample]
    input_per_unit = sum(counts) / len(counts) if counts else 0.0
    return priced(job, price, pricing, remaining, len(counts), input_per_unit, *output)


def priced(
    job: JobSpec,
    price: ModelPrice,
    pricing: PricingTable,
    remaining: int,
    sampled: int,
    input_per_unit: float,
    output_per_unit: float,
    output_source: str,
) -> Estimate:
    total_in, total_out = round(input_per_unit * remaining), round(output_per_unit * remaining)
    unit_ticks = price.estimate_ticks(round(input_per_unit), round(output_per_unit))
    models = [
        ModelCost(
            name,
            other.estimate_ticks(total_in, total_out),
            other.estimate_ticks(total_in, total_out, batch=True)
            if other.has_batch_prices
            else None,
        )
        for name, other in pricing.models.items()
    ]
    models.sort(key=lambda cost: cost.standard_ticks)
    return Estimate(
        remaining=remaining,
        sampled=sampled,
        input_tokens=input_per_unit,
        output_tokens=output_per_unit,
        output_source=output_source,
        unit_ticks=unit_ticks,
        total_ticks=price.estimate_ticks(total_in, total_out),
        batch_total_ticks=(
            price.estimate_ticks(total_in, total_out, batch=True)
            if price.has_batch_prices
            else None
        ),
        models=models,
    )
