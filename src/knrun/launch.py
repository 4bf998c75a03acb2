"""Everything around a run, shared by `go`, `retry` and preflight's canary: the lock, replaying
the spool, giving back leases of dead runs here, the run record, and closing up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass

from knrun.context import STATE_DIR, Context, xai_client
from knrun.events import Event, EventSink
from knrun.judge import utc_now
from knrun.lock import RunLock, machine_id, new_run_id
from knrun.pricing import ModelPrice
from knrun.runner import BalanceReader, RunConfig, Runner, RunResult
from knrun.spool import Spool
from knrun.store.base import SqlUnitStore
from knrun.store.types import RunRecord
from knrun.xai import XaiClient, XaiError


@dataclass
class Launch:
    """What a command asks for."""

    kind: str  # go | retry | canary
    price: ModelPrice
    config: RunConfig
    events: EventSink
    on_runner: Callable[[Runner], None] | None = None  # the CLI hooks signals and display here
    run_id: str | None = None


@dataclass
class Launched:
    result: RunResult
    record: RunRecord
    replayed: int  # results from an earlier run written from the spool first


async def launch(ctx: Context, request: Launch) -> Launched:
    lock = RunLock(STATE_DIR)
    lock.acquire(f"knrun {request.kind}")
    try:
        # The client first: it checks the key, and nothing is open yet if that fails.
        xai = xai_client(ctx.settings, max_connections=request.config.concurrency)
        store = ctx.open_store()
        spool = Spool(STATE_DIR / "spool.sqlite")
        try:
            return await _launch(ctx, request, store, spool, xai)
        finally:
            await xai.aclose()
            await spool.close()
            await store.close()
    finally:
        lock.release()


async def _launch(
    ctx: Context, request: Launch, store: SqlUnitStore, spool: Spool, xai: XaiClient
) -> Launched:
    job = ctx.job
    replayed = await replay_spool(store, spool, ctx, request.events)
    if replayed:
        request.events(Event("replayed", f"{replayed} results from an earlier run written first"))
    here = machine_id(STATE_DIR)
    # This process holds the lock, so any run of this folder still "running" is dead, and so is
    # any lease owned from here.
    dead = await store.mark_dead_runs(f"{here}:")
    if dead:
        request.events(Event("dead_runs", f"runs whose process died: {', '.join(dead)}"))
    returned = await store.release_prefix(f"{here}:")
    if returned:
        request.events(Event("released", f"{returned} units leased by a dead run here given back"))
    config = request.config
    if config.failed_only:  # what retry may take: its reasons, under the attempt limit
        total = await store.count_claimable(
            failed_only=True, max_attempts=config.max_attempts, reasons=config.retry_reasons
        )
    else:
        total = await store.count_remaining()
    if config.max_units is not None:
        total = min(total, config.max_units)
    run_id = request.run_id or new_run_id()
    owner = f"{here}:{run_id}"
    record = RunRecord(
        run_id=run_id,
        kind=request.kind,
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
                "input": str(request.price.input),
                "cached_input": str(request.price.cached_input),
                "output": str(request.price.output),
            },
            "concurrency": config.concurrency,
            "cap_ticks": config.cap_ticks,
            "store": ctx.target.describe(),
        },
    )
    await store.record_run(record)
    runner = Runner(
        job=job,
        price=request.price,
        store=store,
        xai=xai,
        spool=spool,
        config=config,
        run_id=run_id,
        owner=owner,
        total=total,
        events=request.events,
        balance=await _balance_reader(ctx, xai, request.events),
    )
    if request.on_runner is not None:
        request.on_runner(runner)
    keeper = asyncio.create_task(_keep_record(store, record, runner, config.record_every_s))
    try:
        result = await runner.run()
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    _fill(record, runner, result)
    try:
        await store.record_run(record)
    except Exception as exc:  # the run is over; its record is also in the event log
        request.events(Event("store_error", f"recording the run: {exc}"))
    return Launched(result, record, replayed)


async def replay_spool(store: SqlUnitStore, spool: Spool, ctx: Context, events: EventSink) -> int:
    """Write results an earlier run paid for but never got into the store. Before any lease is
    given back: a failure is recorded only while its run's lease still stands."""
    replayed = 0
    while batch := await spool.pending(ctx.job.name, ctx.job.version, limit=50):
        delivery = await spool.deliver(store, batch)
        replayed += delivery.written
        for what in delivery.quarantined:
            events(Event("quarantined", f"the store refused a result outright: {what}"))
    return replayed


async def _balance_reader(ctx: Context, xai: XaiClient, events: EventSink) -> BalanceReader | None:
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


def _fill(record: RunRecord, runner: Runner, result: RunResult | None = None) -> None:
    state = runner.state
    record.updated_at = utc_now()
    record.units_ok = state.done
    record.units_failed = state.failed
    record.tracked_ticks = state.tracked_ticks
    record.billed_ticks = state.billed_ticks
    record.detail["failed_by_reason"] = dict(state.failed_by_reason)
    record.detail["rate_limited"] = state.rate_limited
    record.detail["rate_limit_rounds"] = state.rate_limit_rounds
    record.detail["money"] = vars(state.money).copy()
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
    """Refresh the run's row now and then, so `knrun status` shows live spend."""
    while True:
        await asyncio.sleep(every_s)
        _fill(record, runner)
        with contextlib.suppress(Exception):
            await store.record_run(record)
