"""Preflight's canary: a few real units through the real pipeline, results kept, figures for
preflight to judge. Quiet on screen; logged and recorded like any run."""

from __future__ import annotations

from knrun.context import STATE_DIR, Context
from knrun.preflight.steps import CanaryFigures
from knrun.pricing import ModelPrice
from knrun.run.config import RunConfig
from knrun.run.launch import Launch, launch
from knrun.run.lock import new_run_id
from knrun.run.runlog import EventLog, append_history


async def run_canary(
    ctx: Context,
    price: ModelPrice,
    units: int,
    estimate_unit_ticks: int,
    concurrency: int,
    *,
    batch: bool = False,
) -> CanaryFigures:
    """`units` real units, capped at ten times their estimate. `batch`: through the Batch API,
    at its prices, waiting until its batch is done."""
    run_id = new_run_id()
    log = EventLog(STATE_DIR / "runs" / f"{run_id}.jsonl")
    config = RunConfig(
        concurrency=max(1, min(units, concurrency)),
        max_units=units,
        cap_ticks=10 * units * max(estimate_unit_ticks, 1),
        estimate_unit_ticks=estimate_unit_ticks,
        drift_every=10**9,  # preflight judges the canary's figures itself
        batch=batch,
        batch_poll_s=10.0,
    )
    if batch:
        price = price.for_batch()
    try:
        launched = await launch(
            ctx, Launch(kind="canary", price=price, config=config, events=log, run_id=run_id)
        )
    finally:
        log.close()
    append_history(launched.record, price)
    state = launched.result.state
    replies = max(state.replies, 1)
    return CanaryFigures(
        run_id=run_id,
        units=state.processed,
        valid=state.done,
        billed_ticks=state.billed_ticks,
        tracked_ticks=state.money.billed_tracked_ticks,
        unbilled_replies=state.money.unbilled_replies,
        possibly_billed=state.money.possible_requests,
        input_tokens=state.input_tokens / replies,
        output_tokens=state.output_tokens / replies,
        exit_code=launched.result.exit_code,
        reason=launched.result.reason,
    )
