"""`knrun status`: the figures of a job version's progress, as one plain dictionary.

The same dictionary is printed as a table or, with `--json`, for dashboards; its keys are a
documented interface (README), so add keys rather than rename them.
"""

from __future__ import annotations

from typing import Any

from knrun.job import JobSpec
from knrun.pricing import ticks_to_usd
from knrun.store.types import Progress


def usd(ticks: int) -> str:
    """USD as an exact decimal string, for JSON: never a float."""
    return str(ticks_to_usd(ticks).normalize()) if ticks else "0"


def status_report(job: JobSpec, store: str, progress: Progress) -> dict[str, Any]:
    per_unit = progress.done_cost_ticks // progress.done if progress.done else None
    return {
        "job": job.name,
        "version": job.version,
        "model": job.model,
        "store": store,
        "total": progress.total,
        "done": progress.done,
        "failed": progress.failed,
        "remaining": progress.remaining,
        "leased": progress.leased,
        "retry_exhausted": progress.retry_exhausted,
        "failed_by_reason": progress.failed_by_reason,
        "spent_usd": usd(progress.spent_billed_ticks),
        "spent_ticks": progress.spent_billed_ticks,
        "tracked_usd": usd(progress.spent_tracked_ticks),
        "done_cost_usd": usd(progress.done_cost_ticks),
        "cost_per_unit_usd": usd(per_unit) if per_unit is not None else None,
        "avg_input_tokens": _rounded(progress.avg_input_tokens),
        "avg_output_tokens": _rounded(progress.avg_output_tokens),
        "last_processed_at": progress.last_processed_at,
    }


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)
