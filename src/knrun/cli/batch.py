"""`knrun batch`: the batches `go --batch` made at xAI: list them, collect their results (no
receipt needed: nothing new is bought), cancel one."""

from __future__ import annotations

from typing import Annotated

import typer

from knrun.cli.app import JobOption, JsonOption, PricingOption, batch_app, guarded, run_async
from knrun.cli.session import RunCommand, finish, run_command
from knrun.commands.batch import batches_json
from knrun.commands.session.launch import Launched
from knrun.context import Context, load_context, load_pricing_for
from knrun.display import console
from knrun.display.live import batch_figures
from knrun.errors import ConfigError
from knrun.pricing import ModelPrice
from knrun.run.batch import ops
from knrun.run.batch.handle import batch_counters
from knrun.run.batch.runs import BatchRun

MaxWaitOption = Annotated[
    float | None,
    typer.Option(
        "--max-wait",
        min=0,
        help="Minutes to wait for xAI before leaving the batch open (run the command again "
        "later to go on). Default: until every result is in.",
        show_default=False,
    ),
]


@batch_app.command("list")
@guarded
def batch_list(
    job: JobOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every batch knrun made for this store, newest first, with xAI's counters."""
    listed = run_async(ops.listing(load_context(job)))
    if as_json:
        console.json_result(batches_json(listed))
        return
    if not listed:
        console.note("no batches: `knrun go --batch` makes one")
    for each in listed:
        state = "open" if each.run.open else "closed"
        if each.info is None:
            console.note(f"{each.run.batch_id} ({state}, v{each.run.version}): {each.problem}")
            continue
        figures = batch_figures(batch_counters(each.info))
        console.note(f"{state}, v{each.run.version}, last run {each.run.run_id}: {figures}")


@batch_app.command("collect")
@guarded
def batch_collect(
    job: JobOption = None, pricing: PricingOption = None, max_wait: MaxWaitOption = None
) -> None:
    """Write the results of the job version's open batches as xAI finishes them, and give back
    the units whose requests were cancelled. Needs no preflight receipt: it buys nothing."""
    ctx = load_context(job)
    price = load_pricing_for(pricing).price_for(ctx.job.model).for_batch()
    batches = run_async(ops.open_here(ctx))
    if not batches:
        console.note(f"no open batch for {ctx.job.name} v{ctx.job.version}: nothing to collect")
        return
    for launched in collect(ctx, price, batches, max_wait):
        finish(launched)


@batch_app.command("cancel")
@guarded
def batch_cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch, as `knrun batch list` shows it.")],
    job: JobOption = None,
    pricing: PricingOption = None,
    max_wait: MaxWaitOption = 15.0,
) -> None:
    """Cancel a batch at xAI (what is pending never runs, nor is billed), then collect it: the
    requests already running finish and are billed while the cancel spreads, and their results
    are written; the units whose requests xAI lists as cancelled go back to the pool."""
    ctx = load_context(job)
    price = load_pricing_for(pricing).price_for(ctx.job.model).for_batch()
    known = [b for b in run_async(ops.open_here(ctx)) if b.batch_id == batch_id]
    if not known:
        raise ConfigError(
            f"{batch_id} is not an open batch of {ctx.job.name} v{ctx.job.version}: "
            "`knrun batch list` shows the batches"
        )
    info = run_async(ops.cancel_at_xai(ctx, batch_id))
    console.note(f"batch {batch_id} cancelled at xAI: {batch_figures(batch_counters(info))}")
    for launched in collect(ctx, price, known, max_wait):
        finish(launched)


def collect(
    ctx: Context, price: ModelPrice, batches: list[BatchRun], max_wait_minutes: float | None
) -> list[Launched]:
    """A collecting run for each batch, in turn; a run that stops for a guard ends the lot."""
    max_wait_s = None if max_wait_minutes is None else max_wait_minutes * 60
    config = ops.collect_config(max_wait_s, cancel_wait_s=max_wait_s or 900.0)
    done = []
    for batch in batches:
        command = RunCommand(
            "collect", ctx, price, config, live=console.is_terminal(), batch=ops.collect_plan(batch)
        )
        launched = run_async(run_command(command))
        done.append(launched)
        if launched.result.exit_code:
            break
    return done
