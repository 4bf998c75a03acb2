"""`knrun go`, before the run: whether there is anything to run at all (then no receipt is
needed), and whether what is left of the receipt's approval still pays for one more unit
(else the run would stop at its cap having done nothing)."""

from __future__ import annotations

from knrun.context import STATE_DIR, Context
from knrun.errors import ExitCode, RunStopped
from knrun.pricing import format_usd
from knrun.run.approval import Approval, approval_left
from knrun.run.config import RunConfig
from knrun.spool import Spool

# How a run stopped by its spend cap continues, by the kind of run.
CONTINUE = {
    "go": "run `knrun preflight` again for a new receipt that approves what is left, or "
    "`knrun go --max-spend USD` for a cap of that run alone",
    "retry": "run `knrun retry --max-spend USD` with a larger cap",
    "collect": "run `knrun preflight --batch` again for a new receipt",
}


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


async def check_approval_left(ctx: Context, config: RunConfig) -> None:
    """RunStopped (exit 4) when what is left of the receipt's approval cannot pay for one more
    unit at its worst case: saying what is left, what a unit needs, and how to go on."""
    approval = config.approval
    if approval is None or config.batch:  # --max-spend, or a batch run's own accounting
        return
    async with ctx.open_store() as store:
        spool = Spool(STATE_DIR / "spool.sqlite")
        try:
            left = await approval_left(approval, store, spool, batch_run=False)
        finally:
            await spool.close()
    if left.ticks >= approval.unit_worst_ticks:
        return
    message = approval_used_up(approval, left.ticks, config.estimate_unit_ticks or 0)
    raise RunStopped(message, ExitCode.SPEND_CAP)


def approval_used_up(approval: Approval, left_ticks: int, unit_ticks: int) -> str:
    return (
        f"spend cap: {format_usd(max(left_ticks, 0))} is left of the approved spend of "
        f"{approval.describe}, and one more unit needs about {format_usd(unit_ticks)} "
        f"(up to {format_usd(approval.unit_worst_ticks)} at worst, as the cap counts it): "
        f"{CONTINUE['go']}"
    )


def continue_hint(kind: str, exit_code: int) -> str:
    """What a run stopped by its cap says next: the command that continues it."""
    if exit_code != ExitCode.SPEND_CAP or kind not in CONTINUE:
        return ""
    return f"; to continue, {CONTINUE[kind]}"
