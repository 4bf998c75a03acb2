"""The run's record in the store's runs table: written before any request goes out,
refreshed while the run lives (its heartbeat, and the pace shared with other runners), and
filled in at the end; and what the run reads of the others and of the balance."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from knrun.clock import utc_now
from knrun.context import Context
from knrun.pricing import ModelPrice
from knrun.run.batch.handle import BatchHandle
from knrun.run.coordinator import BalanceReader, OthersReader, RunConfig, Runner, RunResult
from knrun.run.events import Event, EventSink
from knrun.store.base import SqlUnitStore
from knrun.store.types import RunRecord
from knrun.xai import XaiClient, XaiError


def new_record(
    ctx: Context,
    kind: str,
    price: ModelPrice,
    config: RunConfig,
    run_id: str,
    owner: str,
    total: int,
) -> RunRecord:
    job = ctx.job
    return RunRecord(
        run_id=run_id,
        kind=kind,
        job=job.name,
        version=job.version,
        model=job.model,
        prompt_hash=job.prompt_hash,
        host=socket.gethostname(),
        started_at=utc_now(),
        updated_at=utc_now(),
        estimate_ticks=(config.estimate_unit_ticks or 0) * total or None,
        owner=owner,
        detail={
            "prices_usd_per_m": {
                "input": str(price.input),
                "cached_input": str(price.cached_input),
                "output": str(price.output),
            },
            "concurrency": config.workers,
            "max_concurrency": config.workers,
            "concurrency_mode": "auto" if config.max_concurrency else "fixed",
            "cap_ticks": config.cap_ticks,
            "store": ctx.target.describe(),
        },
    )


async def run_recorded(
    store: SqlUnitStore, record: RunRecord, runner: Runner, every_s: float
) -> RunResult:
    """The run, its record refreshed in the store while it lives."""
    keeper = asyncio.create_task(_keep_record(store, record, runner, every_s))
    try:
        return await runner.run()
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper


async def balance_reader(ctx: Context, xai: XaiClient, events: EventSink) -> BalanceReader | None:
    """Reads the prepaid balance for the drift monitor, when a management key is set. The
    balance is advisory here: a failed read is reported and skipped, never fatal."""
    if not xai.has_management_key:
        return None
    try:
        team = await xai.team(ctx.settings.xai_team_id)
    except XaiError as exc:
        events(Event("balance_unavailable", str(exc)))
        return None

    async def read() -> int | None:
        try:
            return await xai.prepaid_balance_ticks(team)
        except XaiError as exc:
            events(Event("balance_unavailable", str(exc)))
            return None

    return read


def fill(record: RunRecord, runner: Runner, result: RunResult | None = None) -> None:
    state = runner.state
    record.updated_at = utc_now()
    record.units_ok = state.done
    record.units_failed = state.failed
    record.tracked_ticks = state.tracked_ticks
    record.billed_ticks = state.billed_ticks
    record.detail["failed_by_reason"] = dict(state.failed_by_reason)
    record.detail["rate_limited"] = state.rate_limited
    record.detail["rate_limit_rounds"] = state.rate_limit_rounds
    # What the pacing found: other runs read `concurrency` as what this one may have in flight.
    record.detail["concurrency"] = state.concurrency
    record.detail["pacing"] = {
        "rate_rps": round(state.rate_rps, 2),
        "limit": state.rate_limit,
        "requests_sent": state.sent,
        "share_429": round(state.share_429, 4),
        "peak_in_flight": state.peak_in_flight,
    }
    record.detail["money"] = vars(state.money).copy()
    handle = getattr(runner.engine, "handle", None)
    if isinstance(handle, BatchHandle):
        record.detail["batch"] = {
            **(state.batch or {}),
            **record.detail.get("batch", {}),
            "id": handle.batch_id,
            "open": not handle.closed,
        }
    if result is not None:
        record.state = "finished"
        record.ended_at = utc_now()
        record.exit_code = int(result.exit_code)
        record.exit_reason = result.reason
        record.detail["unwritten"] = result.unwritten
        record.detail["quarantined"] = runner.quarantined
        record.detail["lost"] = runner.lost


async def _keep_record(
    store: SqlUnitStore, record: RunRecord, runner: Runner, every_s: float
) -> None:
    """Refresh the run's row now and then (its heartbeat: `knrun status` shows live spend, and a
    stale one tells a later start the run is dead), and share the store's request budget, and
    the model's rate limits, with the other live runners."""
    while True:
        fill(record, runner)
        with contextlib.suppress(Exception):
            others = await store.heartbeat(record)
            runner.state.runners = len(others) + 1
            # xAI's limits are per team and model: runs of the same model share them.
            runner.pacing.share(1 + sum(run.model == record.model for run in others))
        await asyncio.sleep(every_s)


def others_reader(store: SqlUnitStore, record: RunRecord) -> OthersReader:
    """For the balance check: what other runs on this store may have spent since this run
    began. Their charges written since then (within seconds of each reply), and for each run
    still live, twice its concurrency at this run's worst case per request: what it has in
    flight (billed at acceptance) and what it has not written yet."""

    async def read(worst_request_ticks: int) -> int:
        others = await store.other_live_runs(record.run_id)
        if not others:
            return 0
        charged = await store.charged_since(record.started_at, exclude_run=record.run_id)
        margin = sum(
            2 * int(run.detail.get("concurrency") or 50) * worst_request_ticks for run in others
        )
        return charged + margin

    return read
