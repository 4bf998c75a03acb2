"""`knrun batch`: the batches `go --batch` made at xAI."""

from __future__ import annotations

from typing import Annotated

import typer

from knrun.cli.app import JobOption, batch_app, guarded, run_async
from knrun.context import load_context
from knrun.display import console
from knrun.display.live import batch_figures
from knrun.run import batch_ops
from knrun.run.batch import batch_counters


@batch_app.command("list")
@guarded
def batch_list(job: JobOption = None) -> None:
    """Every batch knrun made for this store, newest first, with xAI's counters."""
    listed = run_async(batch_ops.listing(load_context(job)))
    if not listed:
        console.note("no batches: `knrun go --batch` makes one")
    for each in listed:
        state = "open" if each.run.open else "closed"
        if each.info is None:
            console.note(f"{each.run.batch_id} ({state}, v{each.run.version}): {each.problem}")
            continue
        figures = batch_figures(batch_counters(each.info))
        console.note(f"{state}, v{each.run.version}, last run {each.run.run_id}: {figures}")


@batch_app.command("cancel")
@guarded
def batch_cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch, as `knrun batch list` shows it.")],
    job: JobOption = None,
) -> None:
    """Cancel a batch at xAI: what is pending never runs (nor is billed)."""
    done = run_async(batch_ops.cancel(load_context(job), batch_id))
    if done.to_collect:
        console.note(
            f"batch {batch_id} cancelled; {done.to_collect:,} results done before it: run "
            "`knrun go --batch` to write them (it then gives back the cancelled units)"
        )
    else:
        console.note(f"batch {batch_id} cancelled; {done.released:,} units given back")
