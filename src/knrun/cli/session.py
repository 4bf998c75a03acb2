"""A run as the person at the terminal (or cron) sees it: the live panel or plain lines, the
JSONL event log, Ctrl-C and SIGTERM, a Mac kept awake, and the run's last word."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass

from knrun.commands.go import continue_hint
from knrun.commands.session.awake import keep_awake
from knrun.commands.session.launch import Launch, Launched, launch
from knrun.commands.session.lock import new_run_id
from knrun.commands.session.runlog import CHECKLIST, EventLog, append_history
from knrun.commands.summary import StillFailing, summarize
from knrun.context import STATE_DIR, Context
from knrun.display import console
from knrun.display.live import run_display
from knrun.display.summary import show_summary
from knrun.errors import ExitCode, RunStopped
from knrun.pricing import ModelPrice, format_usd
from knrun.run.batch.handle import BatchPlan
from knrun.run.config import RunConfig
from knrun.run.coordinator import Runner
from knrun.run.events import Event, EventSink


@dataclass
class RunCommand:
    kind: str
    ctx: Context
    price: ModelPrice
    config: RunConfig
    live: bool  # a live panel (terminal) or plain lines (cron, pipes)
    batch: BatchPlan | None = None  # a collecting run's batch


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
                    batch=command.batch,
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


def finish(launched: Launched, *, still: StillFailing | None = None, as_json: bool = False) -> None:
    """The run's last word: its summary (and with `as_json`, the same as one JSON object on
    stdout), a verdict line, and its exit code."""
    result = launched.result
    state = result.state
    summary = summarize(launched, still=still)
    show_summary(summary)
    if as_json:
        console.json_result(summary.to_json())
    text = (
        f"run {result.run_id}: {state.done} done, {state.failed} failed, billed "
        f"{format_usd(state.billed_ticks)} (tracked {format_usd(state.tracked_ticks)}); "
        f"{result.reason}{continue_hint(launched.record.kind, result.exit_code)}"
    )
    if result.exit_code == ExitCode.OK:
        console.note(text)
        return
    raise RunStopped(text, result.exit_code)
