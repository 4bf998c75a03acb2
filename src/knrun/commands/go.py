"""`knrun go`, before the run: whether there is anything to run at all (then no receipt is
needed), and whether what is left of the receipt's approval still pays for one more unit
(else the run would stop at its cap having done nothing).

`knrun go`, before it runs: the preflight receipt it needs, and the configuration it runs
with (its cap is the receipt's approval less what earlier go runs spent since)."""

from __future__ import annotations

from dataclasses import dataclass

from knrun.commands.session.before import CONTINUE
from knrun.context import STATE_DIR, Context
from knrun.errors import ExitCode, NotAuthorised
from knrun.pricing import ModelPrice
from knrun.receipt import Receipt, describe, load_valid_receipt
from knrun.run.approval import Approval
from knrun.run.config import DEFAULT_MAX_CONCURRENCY, RunConfig, concurrency_fields
from knrun.run.guards import BALANCE_SLACK_TICKS

# How a run stopped by its spend cap continues, by the kind of run.


async def nothing_to_run(ctx: Context) -> str | None:
    """The line to end on when no unit of this version is left for `go`; None when some are."""
    async with ctx.open_store() as store:
        progress = await store.progress()
    if progress.remaining - progress.in_batches > 0:
        return None
    line = f"nothing to run: no unit of {ctx.job.name} v{ctx.job.version} is left for `go`"
    if progress.in_batches:
        line += f" ({progress.in_batches:,} wait in open batches: `knrun batch collect`)"
    if progress.failed:
        line += f"; {progress.failed:,} failed: `knrun retry`"
    return line + "; no receipt needed"


def continue_hint(kind: str, exit_code: int) -> str:
    """What a run stopped by its cap says next: the command that continues it."""
    if exit_code != ExitCode.SPEND_CAP or kind not in CONTINUE:
        return ""
    return f"; to continue, {CONTINUE[kind]}"


@dataclass(frozen=True)
class GoOptions:
    concurrency: int | None = None  # None: auto (the pacing finds the account's limit)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_spend_ticks: int | None = None  # None: what the receipt approved, less earlier runs
    max_429_rounds: int = 10
    lease_minutes: float = 15.0
    batch: bool = False  # the Batch API as the engine (`go --batch`)
    no_wait: bool = False  # a batch run ends once everything is submitted
    max_wait_s: float | None = None  # a batch run waits this long for xAI at most


def go_receipt(ctx: Context, price: ModelPrice, options: GoOptions) -> Receipt:
    """The receipt that authorises this run, or NotAuthorised saying why not."""
    receipt = load_valid_receipt(STATE_DIR, ctx.job, price, store=ctx.target.describe())
    if options.batch:
        price.for_batch()  # a ConfigError when pricing.toml has no batch prices for the model
        if not receipt.batch.get("accepted"):
            raise NotAuthorised(
                f"the preflight receipt has no batch canary for {ctx.job.model}: run "
                "`knrun preflight --batch` (it checks that the Batch API takes the model and "
                "bills it at pricing.toml's batch prices)"
            )
    return receipt


async def go_config(
    ctx: Context, price: ModelPrice, options: GoOptions, receipt: Receipt | None = None
) -> RunConfig:
    """The run's configuration, or NotAuthorised without a valid receipt. Its cap is
    `--max-spend`, or what the receipt approved less what was spent since: worked out when the
    run starts, after the spool's paid results are in the store (`run/approval.py`)."""
    receipt = receipt or go_receipt(ctx, price, options)
    canary_output = receipt.canary.get("output_tokens_per_unit")
    canary_input = receipt.canary.get("input_tokens_per_unit")
    # Preflight's overshoot allowance was sized for this many in flight: go stays within it.
    planned = receipt.max_concurrency or options.max_concurrency
    concurrency, max_concurrency = concurrency_fields(
        options.concurrency, min(options.max_concurrency, planned)
    )
    approval = None
    if options.max_spend_ticks is None:
        approval = Approval(
            approved_ticks=receipt.approved_ticks,
            since=receipt.created_at,
            unit_worst_ticks=2 * receipt.estimate_unit_ticks,
            describe=describe(receipt),
        )
    return RunConfig(
        concurrency=concurrency,
        max_concurrency=max_concurrency,
        max_429_rounds=options.max_429_rounds,
        lease_s=options.lease_minutes * 60,
        cap_ticks=options.max_spend_ticks,
        approval=approval,
        estimate_unit_ticks=receipt.estimate_unit_ticks,
        output_tokens_estimate=int(canary_output) if canary_output else None,
        tokens_per_request_estimate=(
            int(canary_input) + int(canary_output) if canary_input and canary_output else None
        ),
        # The canary's charges can reach the prepaid balance during this run.
        balance_slack_ticks=int(receipt.canary.get("billed_ticks") or 0) + BALANCE_SLACK_TICKS,
        batch=options.batch,
        batch_no_wait=options.no_wait,
        batch_max_wait_s=options.max_wait_s,
    )
