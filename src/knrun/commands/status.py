"""`knrun status`: the figures of a job version's progress, as one plain dictionary.

The same dictionary is printed as a table or, with `--json`, for dashboards; its keys are a
documented interface (README), so add keys rather than rename them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from knrun.commands import spool as spool_ops
from knrun.context import Context
from knrun.job import JobSpec
from knrun.pricing import ticks_to_usd
from knrun.run.batch.runs import batches_of
from knrun.store.types import Money, Progress, RunRecord

LIVE_WITHIN_S = 60  # a running run refreshes its record every 15 s; silence past this = dead
STATUS_FRESH_S = 30.0  # `knrun status` reuses the store's last count for this long


def usd(ticks: int) -> str:
    """USD as an exact decimal string, for JSON: never a float."""
    # "f", not str(): a normalized Decimal prints $10 as "1E+1".
    return format(ticks_to_usd(ticks).normalize(), "f") if ticks else "0"


def _when(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp) if stamp else None


def run_summary(run: RunRecord, now: datetime) -> dict[str, Any]:
    started, ended = _when(run.started_at), _when(run.ended_at) or _when(run.updated_at)
    units = run.units_ok + run.units_failed
    minutes = (ended - started).total_seconds() / 60 if started and ended else 0.0
    updated = _when(run.updated_at)
    alive = (
        run.state == "running"
        and updated is not None
        and (now - updated).total_seconds() <= LIVE_WITHIN_S
    )
    return {
        "run_id": run.run_id,
        "kind": run.kind,
        "state": "running" if alive else ("stale" if run.state == "running" else run.state),
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "updated_at": run.updated_at,
        "units_ok": run.units_ok,
        "units_failed": run.units_failed,
        "billed_usd": usd(run.billed_ticks),
        "exit_code": run.exit_code,
        "exit_reason": run.exit_reason,
        "rate_per_min": round(units / minutes, 1) if minutes > 0 and units else None,
    }


def status_report(
    job: JobSpec,
    store: str,
    progress: Progress,
    runs: list[RunRecord] | None = None,
    *,
    now: datetime | None = None,
    max_attempts: int = 0,
    spool: tuple[int, int, int] = (0, 0, 0),
    counted_s_ago: float = 0.0,
    spooled: Money | None = None,
    in_flight: int = 0,
) -> dict[str, Any]:
    """`spooled`: what the spool's pending entries (and requests marked in flight) cost: paid,
    not in the store yet, counted with the store's charges in every money figure."""
    now = now or datetime.now(UTC)
    per_unit = progress.done_cost_ticks // progress.done if progress.done else None
    spooled = spooled or Money()
    money = progress.money.plus(spooled)
    summaries = [run_summary(run, now) for run in runs or [] if run.version == job.version]
    working = [s for s in summaries if s["kind"] in ("go", "retry", "canary", "collect")]
    current = [s for s in working if s["state"] in ("running", "stale")]
    dead = [s["run_id"] for s in working if s["state"] == "dead"]
    last = next((s for s in working if s["rate_per_min"]), None)
    rate = last["rate_per_min"] if last else None
    eta = round(progress.remaining / rate, 1) if rate and progress.remaining else None
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
        "max_attempts": max_attempts,
        "failed_by_reason": progress.failed_by_reason,
        **money_keys(money, spooled, in_flight),
        "done_cost_usd": usd(progress.done_cost_ticks),
        "cost_per_unit_usd": usd(per_unit) if per_unit is not None else None,
        "avg_input_tokens": _rounded(progress.avg_input_tokens),
        "avg_output_tokens": _rounded(progress.avg_output_tokens),
        "last_processed_at": progress.last_processed_at,
        "counted_s_ago": round(counted_s_ago),
        "spool_pending": spool[0],
        "spool_quarantined": spool[1],
        "spool_pending_other_versions": spool[2],
        "current_runs": current,
        "dead_runs": dead,
        "last_run": last,
        "rate_per_min": rate,
        "eta_minutes": eta,
    }


def money_keys(money: Money, spooled: Money, in_flight: int) -> dict[str, Any]:
    """The money and token keys of `status --json`: the store's charges with the spool's."""
    return {
        "spent_usd": usd(money.spent_ticks),
        "spent_ticks": money.spent_ticks,
        "spent_max_usd": usd(money.spent_max_ticks),
        "billed_usd": usd(money.billed_ticks),
        "tracked_usd": usd(money.tracked_ticks),
        "requests": money.requests,
        "unbilled_replies": money.unbilled_replies,
        "unbilled_tracked_usd": usd(money.unbilled_tracked_ticks),
        "possibly_billed_requests": money.possible_requests,
        "possibly_billed_usd": usd(money.possible_ticks),
        "possibly_billed_expected_usd": usd(money.expected_ticks),
        "spool_pending_spent_max_usd": usd(spooled.spent_max_ticks),
        "in_flight_requests": in_flight,
        "input_tokens": money.input_tokens,
        "cached_tokens": money.cached_tokens,
        "output_tokens": money.output_tokens,
        "reasoning_tokens": money.reasoning_tokens,
        "cache_share": None if money.cache_share is None else round(money.cache_share, 4),
    }


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


async def read_status(ctx: Context, *, max_attempts: int, fresh_s: float) -> dict[str, Any]:
    """The report `knrun status` shows: the store's figures, and the local spool's."""
    async with ctx.open_store() as store:
        progress, runs, age = await store.status(max_attempts=max_attempts, fresh_s=fresh_s)
    # From the recent runs status reads anyway (no request more): a batch left open by a run
    # older than those is still found by `go --batch` and `knrun batch list`.
    batches = [b for b in batches_of(runs) if b.open]
    held = await spool_ops.counts(ctx.job.name, ctx.job.version)
    spooled, in_flight = await spool_ops.money(ctx.job.name, ctx.job.version)
    report = status_report(
        ctx.job,
        ctx.target.describe(),
        progress,
        runs,
        now=datetime.now(UTC),
        max_attempts=max_attempts,
        spool=held,
        counted_s_ago=age,
        spooled=spooled,
        in_flight=in_flight,
    )
    report["figures_reused"] = age > 0  # from the store's last count, not counted now
    # Batches a run left open at xAI: their units stay leased to them until collected.
    report["open_batches"] = [
        {
            "batch_id": b.batch_id,
            "version": b.version,
            "run_id": b.run_id,
            "for": b.made_for,
            "collect_with": "knrun batch collect"
            if b.version == ctx.job.version
            else f"knrun batch collect (with the job at version {b.version})",
        }
        for b in batches
    ]
    return report
