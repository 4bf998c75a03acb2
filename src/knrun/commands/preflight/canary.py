"""Preflight's canary: a few real units through the real pipeline, results kept, figures for
preflight to judge. Quiet on screen; logged and recorded like any run."""

from __future__ import annotations

from typing import Any

from knrun.commands.preflight.steps import CanaryFigures
from knrun.commands.session.launch import Launch, launch
from knrun.commands.session.lock import new_run_id
from knrun.commands.session.runlog import EventLog, append_history
from knrun.context import STATE_DIR, Context
from knrun.pricing import ModelPrice
from knrun.run.config import RunConfig
from knrun.run.events import Event, EventSink

# What a waiting batch canary shows on screen (the rest goes to its event log only).
WAITING = {"batch_created", "batch_resumed", "batch_progress", "batch_wait", "batch_left_open"}


async def run_canary(
    ctx: Context,
    price: ModelPrice,
    units: int,
    estimate_unit_ticks: int,
    concurrency: int,
    *,
    batch: bool = False,
    max_wait_s: float | None = None,
    progress: EventSink | None = None,
) -> CanaryFigures:
    """`units` real units, capped at ten times their estimate. `batch`: through the Batch API,
    at its prices, waiting until its batch is done, or `max_wait_s` (then the batch stays open
    and the next batch canary waits for it instead of making another). `progress` hears the
    batch's progress while it waits."""
    run_id = new_run_id()
    log = EventLog(STATE_DIR / "runs" / f"{run_id}.jsonl")

    def events(event: Event) -> None:
        log(event)
        if progress is not None and event.kind in WAITING:
            progress(event)

    config = RunConfig(
        concurrency=max(1, min(units, concurrency)),
        max_units=units,
        cap_ticks=10 * units * max(estimate_unit_ticks, 1),
        estimate_unit_ticks=estimate_unit_ticks,
        drift_every=10**9,  # preflight judges the canary's figures itself
        batch=batch,
        batch_poll_s=10.0,
        batch_max_wait_s=max_wait_s,
    )
    if batch:
        price = price.for_batch()
    try:
        launched = await launch(
            ctx, Launch(kind="canary", price=price, config=config, events=events, run_id=run_id)
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
        pending=state.in_flight if batch_left_open(launched.record.detail) else 0,
        batch_id=_batch_id(launched.record.detail),
    )


def batch_left_open(detail: dict[str, Any]) -> bool:
    batch = detail.get("batch")
    return isinstance(batch, dict) and bool(batch.get("open"))


def _batch_id(detail: dict[str, Any]) -> str | None:
    batch = detail.get("batch")
    return str(batch["id"]) if isinstance(batch, dict) and batch.get("id") else None
