"""`knrun retry`, before its checks: whether any failed unit is there for it to take (else it
ends at once, asking nothing of xAI)."""

from __future__ import annotations

from knrun.context import Context
from knrun.run.retry import RetryOptions
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
