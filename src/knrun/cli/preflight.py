"""`knrun preflight`: the checklist, shown step by step; a receipt when every step passes."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from knrun.cli.app import (
    JobOption,
    JsonOption,
    MaxConcurrencyOption,
    PricingOption,
    app,
    guarded,
    parse_usd,
    run_async,
)
from knrun.commands.preflight.as_json import preflight_json
from knrun.commands.preflight.canary import run_canary
from knrun.commands.preflight.checklist import Options, Preflight
from knrun.commands.preflight.steps import CanaryFigures
from knrun.context import load_context, load_pricing_for
from knrun.display import checklist, console
from knrun.errors import RunStopped
from knrun.pricecheck import MAX_AGE_DAYS
from knrun.run.config import DEFAULT_MAX_CONCURRENCY

BalanceOption = Annotated[
    str | None,
    typer.Option(
        "--balance",
        help="Prepaid credit in USD, when there is no XAI_MANAGEMENT_KEY to read it. "
        "Recorded as attested.",
        show_default=False,
    ),
]
CanaryWaitOption = Annotated[
    float,
    typer.Option(
        "--max-wait",
        min=0,
        help="With --batch: minutes to wait for the canary's batch; then preflight fails "
        "and the next `preflight --batch` waits for the same batch.",
    ),
]


@app.command("preflight")
@guarded
def preflight(
    job: JobOption = None,
    pricing: PricingOption = None,
    balance: BalanceOption = None,
    canary: Annotated[int, typer.Option("--canary", min=1, help="Canary size (real units).")] = 10,
    sample: Annotated[
        int, typer.Option("--sample", min=1, help="Prompts rendered to measure input tokens.")
    ] = 500,
    overshoot: Annotated[
        str | None,
        typer.Option(
            "--overshoot",
            help="USD allowed past the balance (billing lags). Default: --max-concurrency "
            "units at their worst case.",
            show_default=False,
        ),
    ] = None,
    max_concurrency: MaxConcurrencyOption = DEFAULT_MAX_CONCURRENCY,
    max_age_days: Annotated[
        int, typer.Option(help="Fail when the model's verified_at is older than this.")
    ] = MAX_AGE_DAYS,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="Also a batch canary for `go --batch`: the Batch API takes the model and "
            "bills it at pricing.toml's batch prices (waits for its batch to finish).",
        ),
    ] = False,
    max_wait: CanaryWaitOption = 60.0,
    as_json: JsonOption = False,
) -> None:
    """The pre-run checklist: model current, prices true, estimate, balance, a real canary.
    Writes the receipt `knrun go` requires; any FAIL exits non-zero and writes none."""
    with console.results_to_stderr(as_json):
        _preflight(
            job,
            pricing,
            balance,
            as_json,
            max_wait,
            Options(
                canary=canary,
                sample=sample,
                overshoot_ticks=parse_usd(overshoot, "--overshoot"),
                max_concurrency=max_concurrency,
                max_age_days=max_age_days,
                batch=batch,
            ),
        )


def _preflight(
    job: Path | None,
    pricing: Path | None,
    balance: str | None,
    as_json: bool,
    max_wait: float,
    options: Options,
) -> None:
    ctx = load_context(job)
    table = load_pricing_for(pricing)
    attested = parse_usd(balance, "--balance")
    if attested is None and ctx.settings.xai_management_key is None and sys.stdin.isatty():
        entered = typer.prompt("Prepaid credit balance in USD (console.x.ai, billing)", err=as_json)
        attested = parse_usd(entered, "balance")
    options = replace(options, attested_balance_ticks=attested)

    async def canary_run(units: int, unit_ticks: int) -> CanaryFigures:
        price = table.price_for(ctx.job.model)
        return await run_canary(ctx, price, units, unit_ticks, options.concurrency)

    async def batch_canary_run(units: int, unit_ticks: int) -> CanaryFigures:
        price = table.price_for(ctx.job.model)
        return await run_canary(
            ctx,
            price,
            units,
            unit_ticks,
            options.concurrency,
            batch=True,
            max_wait_s=max_wait * 60,
            progress=lambda event: console.note(f"  {event.message}"),
        )

    console.note(
        f"preflight: {ctx.job.name} v{ctx.job.version} on {ctx.job.model}, "
        f"store {ctx.target.describe()}"
    )
    outcome = run_async(
        Preflight(ctx, table, options, checklist.show_step, canary_run, batch_canary_run).run()
    )
    if outcome.estimate is not None and outcome.estimate.remaining:
        checklist.show_costs(outcome.estimate, ctx.job.model)
    if as_json:
        console.json_result(preflight_json(ctx, outcome, checklist.step_words))
    failed = outcome.failed
    if failed is not None:
        raise RunStopped(
            f"preflight failed at step {failed.number} ({failed.title}): no receipt written",
            outcome.exit_code,
        )
    if outcome.receipt is not None:
        console.note("PASS: `knrun go` may run for the next 24 h")
    else:
        console.note("nothing to run: no receipt needed")
