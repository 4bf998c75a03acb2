"""The run commands' bodies (`go`, `retry` and preflight's canary), between the CLI's argument
parsing and `launch`: build the run's configuration, wire display, log and signals, record."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from knrun.awake import keep_awake
from knrun.context import STATE_DIR, Context
from knrun.display import console
from knrun.display.live import run_display
from knrun.errors import ConfigError, ExitCode, KnrunError
from knrun.estimate import prompt_tokens
from knrun.events import Event, EventSink
from knrun.launch import Launch, Launched, launch
from knrun.lock import new_run_id
from knrun.preflight import CanaryFigures
from knrun.pricing import ModelPrice, format_usd, usd_to_ticks
from knrun.receipt import Receipt
from knrun.runlog import CHECKLIST, EventLog, append_history
from knrun.runner import RunConfig, Runner


def parse_usd(value: str | None, option: str) -> int | None:
    """A dollar amount from the command line, as ticks."""
    if value is None:
        return None
    try:
        amount = Decimal(value.strip().lstrip("$"))
    except InvalidOperation:
        raise ConfigError(f"{option}: {value!r} is not an amount in USD") from None
    if not amount.is_finite() or amount <= 0:
        raise ConfigError(f"{option}: must be a positive amount in USD")
    return usd_to_ticks(amount)


@dataclass(frozen=True)
class UnitCost:
    """What a unit costs, and where the figure comes from."""

    ticks: int
    output_tokens: int
    measured: bool  # from finished units (else rendered prompts and the job's default)


async def retry_unit_cost(ctx: Context, price: ModelPrice) -> UnitCost:
    """A unit's cost for retry's spend cap: this job's finished units when it has some, else
    estimated as preflight does (the failed units' prompts rendered, the job's output
    default), so a first retry's cap never takes a unit for free."""
    store = ctx.open_store()
    try:
        progress = await store.progress()
        sample = [] if progress.done else await store.sample_failed(50)
    finally:
        await store.close()
    if progress.done and progress.avg_input_tokens is not None and progress.avg_output_tokens:
        tokens = round(progress.avg_input_tokens), round(progress.avg_output_tokens)
        return UnitCost(price.estimate_ticks(*tokens), tokens[1], measured=True)
    inputs = [prompt_tokens(ctx.job.render(unit)) for unit in sample]
    per_unit = round(sum(inputs) / len(inputs)) if inputs else 0
    output = ctx.job.estimate.output_tokens
    return UnitCost(price.estimate_ticks(per_unit, output), output, measured=False)


async def exhausted_units(ctx: Context, max_attempts: int) -> list[dict[str, Any]]:
    store = ctx.open_store()
    try:
        return await store.exhausted(max_attempts)
    finally:
        await store.close()


async def approved_left(ctx: Context, receipt: Receipt) -> int:
    """The receipt's approved spend minus what `go` runs have spent since it was issued (at
    the most: possibly-billed requests at their worst case), from the store's charges, so
    restarting `go`, even after a kill -9, never resets the cap."""
    store = ctx.open_store()
    try:
        spent = await store.money(kind="go", since=receipt.created_at)
    finally:
        await store.close()
    return receipt.approved_ticks - spent.spent_max_ticks


@dataclass
class RunCommand:
    kind: str
    ctx: Context
    price: ModelPrice
    config: RunConfig
    live: bool  # a live panel (terminal) or plain lines (cron, pipes)


async def run_command(command: RunCommand, *, extra_events: EventSink | None = None) -> Launched:
    run_id = new_run_id()
    log = EventLog(STATE_DIR / "runs" / f"{run_id}.jsonl")
    caffeinate = keep_awake()
    with run_display(live=command.live) as display:

        def events(event: Event) -> None:
            log(event)
            display(event)
            if extra_events is not None:
                extra_events(event)

        def on_runner(runner: Runner) -> None:
            display.attach(runner.state)
            _handle_signals(runner)

        try:
            launched = await launch(
                command.ctx,
                Launch(
                    kind=command.kind,
                    price=command.price,
                    config=command.config,
                    events=events,
                    on_runner=on_runner,
                    run_id=run_id,
                ),
            )
        finally:
            log.close()
            if caffeinate is not None:
                caffeinate.terminate()
    if not append_history(launched.record, command.price):
        console.warn(
            f"no {CHECKLIST} with a run history table here: this run is recorded in the store's "
            "knrun_runs table and under .knrun/runs/ only"
        )
    return launched


def _handle_signals(runner: Runner) -> None:
    """First Ctrl-C or SIGTERM: stop claiming, let in-flight requests finish. Second: now."""
    loop = asyncio.get_running_loop()
    presses = 0

    def on_signal() -> None:
        nonlocal presses
        presses += 1
        if presses == 1:
            runner.request_stop(
                "interrupted: finishing in-flight requests (press Ctrl-C again to abandon them)",
                ExitCode.INTERRUPTED,
            )
        else:
            runner.cancel_now()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)


def outcome_message(launched: Launched) -> tuple[int, str]:
    result = launched.result
    state = result.state
    text = (
        f"run {result.run_id}: {state.done} done, {state.failed} failed, billed "
        f"{format_usd(state.billed_ticks)} (tracked {format_usd(state.tracked_ticks)}); "
        f"{result.reason}"
    )
    return int(result.exit_code), text


class RunStopped(KnrunError):
    """A run that ended for a guard's reason: the message is the reason, the code the guard's."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = ExitCode(exit_code)


async def run_canary(
    ctx: Context, price: ModelPrice, units: int, estimate_unit_ticks: int, concurrency: int
) -> CanaryFigures:
    """Preflight's canary: `units` real units through the real pipeline, results kept. Quiet on
    screen; logged and recorded like any run. Capped at ten times its estimate."""
    run_id = new_run_id()
    log = EventLog(STATE_DIR / "runs" / f"{run_id}.jsonl")
    config = RunConfig(
        concurrency=max(1, min(units, concurrency)),
        max_units=units,
        cap_ticks=10 * units * max(estimate_unit_ticks, 1),
        estimate_unit_ticks=estimate_unit_ticks,
        drift_every=10**9,  # preflight judges the canary's figures itself
    )
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
