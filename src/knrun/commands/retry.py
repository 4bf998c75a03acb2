"""`knrun retry`, before its checks: whether any failed unit is there for it to take (else it
ends at once, asking nothing of xAI).

`knrun retry`, before and after it runs: its own light checks, a unit's cost for its cap,
the failure reasons it takes, and the units that have used up their attempts."""

from __future__ import annotations

from dataclasses import dataclass

from knrun.commands.preflight.checklist import Options, Preflight, Report
from knrun.context import Context
from knrun.errors import RunStopped
from knrun.estimate import prompt_tokens
from knrun.pricing import ModelPrice, PricingTable
from knrun.run.config import RunConfig, concurrency_fields
from knrun.store.schema import TRANSIENT_REASONS


async def nothing_to_retry(ctx: Context, options: RetryOptions) -> str | None:
    """The line to end on when no failed unit is eligible for retry; None when some are."""
    reasons = None if options.all_reasons else TRANSIENT_REASONS
    async with ctx.open_store() as store:
        waiting = await store.count_claimable(
            failed_only=True, max_attempts=options.max_attempts, reasons=reasons
        )
    if waiting:
        return None
    which = "" if options.all_reasons else " for a reason retry takes (--all-reasons: any)"
    return (
        f"nothing to retry: no unit of {ctx.job.name} v{ctx.job.version} failed{which} with "
        f"fewer than {options.max_attempts} attempts"
    )


@dataclass(frozen=True)
class RetryOptions:
    max_units: int = 500
    cap_ticks: int = 2 * 10**10
    max_attempts: int = 3
    concurrency: int | None = None  # None: auto
    max_concurrency: int = 100
    attested_balance_ticks: int | None = None
    max_429_rounds: int = 10
    all_reasons: bool = False


@dataclass(frozen=True)
class UnitCost:
    """What a unit costs, and where the figure comes from."""

    ticks: int
    output_tokens: int
    measured: bool  # from finished units (else rendered prompts and the job's default)
    input_tokens: int = 0


async def retry_config(
    ctx: Context, pricing: PricingTable, options: RetryOptions, report: Report
) -> tuple[ModelPrice, RunConfig]:
    """Retry's checks (model current, prices true, the balance covers its cap), then its
    configuration; RunStopped when a check fails, before anything is spent."""
    checks = Options(attested_balance_ticks=options.attested_balance_ticks)
    outcome = await Preflight(ctx, pricing, checks, report).for_retry(options.cap_ticks)
    failed = outcome.failed
    if failed is not None:
        raise RunStopped(f"retry checks failed at {failed.title}: nothing run", outcome.exit_code)
    price = pricing.price_for(ctx.job.model)
    unit = await retry_unit_cost(ctx, price)
    concurrency, max_concurrency = concurrency_fields(options.concurrency, options.max_concurrency)
    return price, RunConfig(
        concurrency=concurrency,
        max_concurrency=max_concurrency,
        max_429_rounds=options.max_429_rounds,
        cap_ticks=options.cap_ticks,
        estimate_unit_ticks=unit.ticks,
        output_tokens_estimate=unit.output_tokens,
        tokens_per_request_estimate=unit.input_tokens + unit.output_tokens,
        failed_only=True,
        max_attempts=options.max_attempts,
        retry_reasons=None if options.all_reasons else TRANSIENT_REASONS,
        max_units=options.max_units,
    )


async def retry_unit_cost(ctx: Context, price: ModelPrice) -> UnitCost:
    """A unit's cost for retry's spend cap: this job's finished units when it has some, else
    estimated as preflight does (the failed units' prompts rendered, the job's output
    default), so a first retry's cap never takes a unit for free."""
    async with ctx.open_store() as store:
        progress = await store.progress()
        sample = [] if progress.done else await store.sample_failed(50)
    if progress.done and progress.avg_input_tokens is not None and progress.avg_output_tokens:
        tokens = round(progress.avg_input_tokens), round(progress.avg_output_tokens)
        return UnitCost(
            price.estimate_ticks(*tokens), tokens[1], measured=True, input_tokens=tokens[0]
        )
    inputs = [prompt_tokens(ctx.job.render(unit)) for unit in sample]
    per_unit = round(sum(inputs) / len(inputs)) if inputs else 0
    output = ctx.job.estimate.output_tokens
    return UnitCost(
        price.estimate_ticks(per_unit, output), output, measured=False, input_tokens=per_unit
    )
