"""Starting a run, for `go`, `retry` and preflight's canary: the lock, the client, the store
and the spool opened; what must happen first (`before.py`); the runner built and run under its
record (`record.py`); and everything closed again."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from knrun.commands.session import before
from knrun.commands.session.files import fit_open_files
from knrun.commands.session.lock import RunLock, new_run_id, this_identity
from knrun.commands.session.record import (
    balance_reader,
    fill,
    new_record,
    others_reader,
    run_recorded,
)
from knrun.context import STATE_DIR, Context, xai_client
from knrun.pricing import ModelPrice
from knrun.run.batch.handle import BatchHandle, BatchPlan
from knrun.run.batch.runs import plan_for
from knrun.run.coordinator import RunConfig, Runner, RunResult
from knrun.run.events import Event, EventSink
from knrun.run.live.remembered import recall, remember
from knrun.spool import Spool
from knrun.store.base import SqlUnitStore
from knrun.store.types import RunRecord
from knrun.xai import XaiClient


@dataclass
class Launch:
    """What a command asks for."""

    kind: str  # go | retry | canary
    price: ModelPrice
    config: RunConfig
    events: EventSink
    on_runner: Callable[[Runner], None] | None = None  # the CLI hooks signals and display here
    run_id: str | None = None
    batch: BatchPlan | None = None  # a collecting run's batch (go and canary plan their own)


@dataclass
class Launched:
    result: RunResult
    record: RunRecord
    replayed: int  # results from an earlier run written from the spool first


async def launch(ctx: Context, request: Launch) -> Launched:
    lock = RunLock(STATE_DIR)
    lock.acquire(f"knrun {request.kind}")
    request.config, note = fit_open_files(request.config)
    if note is not None:
        request.events(Event("open_files", note))
    try:
        # The client first: it checks the key, and nothing is open yet if that fails.
        xai = xai_client(ctx.settings, max_connections=request.config.workers)
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
    job, config = ctx.job, request.config
    replayed = await _prepare(ctx, request, store, spool)
    api_key = ctx.settings.require_xai_key().get_secret_value()
    if config.known_limits is None:
        config.known_limits = recall(STATE_DIR, job.model, api_key)
    identity = this_identity(STATE_DIR)
    await before.reap_dead_runs(store, identity, config.lease_s, request.events)
    total = await before.eligible(store, config)
    run_id = request.run_id or new_run_id()
    owner = identity.owner(run_id)
    record = new_record(ctx, request.kind, request.price, config, run_id, owner, total)
    plan = request.batch
    if config.batch and plan is None:
        plan = await plan_for(store, job, "canary" if request.kind == "canary" else "go", run_id)

    async def on_batch(handle: BatchHandle) -> None:
        """The batch is named in the runs table before a single request is added to it."""
        assert plan is not None
        record.detail["batch"] = {"id": handle.batch_id, "open": True, "for": plan.made_for}
        await store.record_run(record)

    # Before any request goes out, so a crash leaves a trace.
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
        balance=await balance_reader(ctx, xai, request.events),
        others=others_reader(store, record),
        batch=plan,
        on_batch=on_batch,
    )
    if request.on_runner is not None:
        request.on_runner(runner)
    result = await run_recorded(store, record, runner, config.record_every_s)
    # What the replies said of the account's limits: the next run starts just under them.
    remember(STATE_DIR, job.model, api_key, runner.pacing.rate.limits)
    fill(record, runner, result)
    try:
        await store.record_run(record)
    except Exception as exc:  # the run is over; its record is also in the event log
        request.events(Event("store_error", f"recording the run: {exc}"))
    return Launched(result, record, replayed)


async def _prepare(ctx: Context, request: Launch, store: SqlUnitStore, spool: Spool) -> int:
    """The spool first (what is paid reaches the store), then the cap the receipt leaves:
    worked out after the replay, so the spool's results count once. Returns how many results
    were replayed."""
    job, config = ctx.job, request.config
    await before.settle_left_in_flight(spool, request.events)
    await before.refuse_stranded(spool, job.name, job.version)
    await store.check_where()
    replayed = await before.replay_spool(store, spool, job.name, job.version, request.events)
    if replayed:
        request.events(Event("replayed", f"{replayed} results from an earlier run written first"))
    if config.approval is not None:
        config.cap_ticks = await before.approved_cap(config.approval, store, spool, config)
    return replayed
