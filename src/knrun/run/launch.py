"""Everything around a run, shared by `go`, `retry` and preflight's canary: the lock, replaying
the spool (and refusing to start past another version's paid results), marking runs of this
folder that died and giving back their leases, the run record, and closing up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from knrun.clock import utc_now
from knrun.context import STATE_DIR, Context, xai_client
from knrun.errors import ExitCode, NotAuthorised, RunStopped, StoreUnusable
from knrun.pricing import ModelPrice, format_usd
from knrun.run.approval import Approval, approval_left
from knrun.run.batch.handle import BatchHandle, BatchPlan
from knrun.run.batch.runs import plan_for
from knrun.run.coordinator import BalanceReader, OthersReader, RunConfig, Runner, RunResult
from knrun.run.events import Event, EventSink
from knrun.run.files import fit_open_files
from knrun.run.live.remembered import recall, remember
from knrun.run.lock import Identity, RunLock, new_run_id, this_identity
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
    # Requests a run cut off (kill -9) left marked in flight: possibly billed, counted now.
    if settled := await spool.settle_in_flight(await spool.in_flight()):
        request.events(
            Event(
                "in_flight_settled",
                f"{len(settled)} requests a stopped run left in flight are counted as possibly "
                "billed",
            )
        )
    await refuse_stranded(spool, job.name, job.version)
    await store.check_where()
    replayed = await replay_spool(store, spool, job.name, job.version, request.events)
    if replayed:
        request.events(Event("replayed", f"{replayed} results from an earlier run written first"))
    if config.approval is not None:
        config.cap_ticks = await _approved_cap(config.approval, store, spool, config.batch)
    api_key = ctx.settings.require_xai_key().get_secret_value()
    if config.known_limits is None:
        config.known_limits = recall(STATE_DIR, job.model, api_key)
    identity = this_identity(STATE_DIR)
    await reap_dead_runs(store, identity, config.lease_s, request.events)
    total = await _eligible(store, config)
    run_id = request.run_id or new_run_id()
    owner = identity.owner(run_id)
    record = _new_record(ctx, request, run_id, owner, total)
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
        balance=await _balance_reader(ctx, xai, request.events),
        others=others_reader(store, record),
        batch=plan,
        on_batch=on_batch,
    )
    if request.on_runner is not None:
        request.on_runner(runner)
    result = await _run_recorded(store, record, runner, config.record_every_s)
    # What the replies said of the account's limits: the next run starts just under them.
    remember(STATE_DIR, job.model, api_key, runner.pacing.rate.limits)
    _fill(record, runner, result)
    try:
        await store.record_run(record)
    except Exception as exc:  # the run is over; its record is also in the event log
        request.events(Event("store_error", f"recording the run: {exc}"))
    return Launched(result, record, replayed)


async def _approved_cap(
    approval: Approval, store: SqlUnitStore, spool: Spool, batch_run: bool
) -> int:
    """The run's cap: what the receipt approved less everything spent since, or RunStopped
    (exit 4) when nothing is left."""
    left = await approval_left(approval, store, spool, batch_run=batch_run)
    if left.ticks > 0:
        return left.ticks
    parts = [f"{format_usd(left.spent.spent_max_ticks)} spent at most since preflight"]
    if left.in_batches:
        parts.append(f"{left.in_batches:,} units waiting in open batches")
    raise RunStopped(
        f"the approved spend of {approval.describe} is used up ({', '.join(parts)}): run "
        "`knrun preflight` again to approve more, or pass --max-spend",
        ExitCode.SPEND_CAP,
    )


async def _eligible(store: SqlUnitStore, config: RunConfig) -> int:
    """Units this run may take: retry's failed ones (its reasons, under the attempt limit), or
    every remaining one, up to `max_units`."""
    if config.failed_only:
        total = await store.count_claimable(
            failed_only=True, max_attempts=config.max_attempts, reasons=config.retry_reasons
        )
    else:
        total = await store.count_remaining()
    return total if config.max_units is None else min(total, config.max_units)


def _new_record(ctx: Context, request: Launch, run_id: str, owner: str, total: int) -> RunRecord:
    job, config, price = ctx.job, request.config, request.price
    return RunRecord(
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


async def _run_recorded(
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


async def refuse_stranded(spool: Spool, job: str, version: str) -> None:
    """Paid results of another job or version waiting in the spool would be stranded by a run
    of this one (its replay covers only its own): the operator writes them or sets them aside."""
    others = [h for h in await spool.held() if h.pending and (h.job, h.version) != (job, version)]
    if others:
        what = ", ".join(f"{h.pending} of {h.job} v{h.version}" for h in others)
        first = others[0]
        raise NotAuthorised(
            f"paid results wait in the spool for another job or version ({what}): write them "
            f"with `knrun spool replay --version {first.version}` (with --job for another job), "
            f"or set them aside with `knrun spool set-aside --version {first.version}`; "
            "not starting"
        )


async def replay_spool(
    store: SqlUnitStore, spool: Spool, job: str, version: str, events: EventSink
) -> int:
    """Write results an earlier run paid for but never got into the store. Before any lease is
    given back: a failure is recorded only while its run's lease still stands. A store that
    refuses every write stops here, with every entry still in the spool."""
    replayed = 0
    while batch := await spool.pending(job, version, limit=50):
        try:
            delivery = await spool.deliver(store, batch)
        except StoreUnusable as exc:
            raise StoreUnusable(
                f"{exc}. The spool's paid results are kept for when it is fixed (`knrun spool`)"
            ) from None
        replayed += delivery.written
        for what in delivery.quarantined:
            events(Event("quarantined", f"the store refused a result outright: {what}"))
    return replayed


async def reap_dead_runs(
    store: SqlUnitStore, identity: Identity, lease_s: float, events: EventSink
) -> None:
    """Runs of this folder still marked running whose process is gone: on this host, a process
    that no longer exists or an earlier boot; elsewhere (a copy of the folder on another Mac),
    a heartbeat older than a lease. They are marked dead. Then every lease held from this
    folder is given back, but those of runs that are alive: a finished run's kept leases
    (its results were replayed just now), a dead run's, knrun's older owner ids."""
    now = datetime.now(UTC)
    dead: list[dict[str, Any]] = []
    alive: list[dict[str, Any]] = []
    for row in await store.running_runs(identity.folder_prefix):
        gone = identity.holds_dead(str(row["owner"]))
        if gone is None:
            beat = datetime.fromisoformat(str(row["updated_at"] or "1970-01-01T00:00:00+00:00"))
            gone = (now - beat).total_seconds() > lease_s
        (dead if gone else alive).append(row)
    if dead:
        await store.mark_dead([str(row["run_id"]) for row in dead])
        names = ", ".join(str(row["run_id"]) for row in dead)
        events(Event("dead_runs", f"runs whose process died: {names}"))
    keep = [str(row["owner"]) for row in alive]
    returned = await store.release_prefix(identity.folder_prefix, keep)
    # Owners from knrun before they named their host: the folder id, then ':'.
    returned += await store.release_prefix(f"{identity.folder}:")
    if returned:
        events(Event("released", f"{returned} units leased by earlier runs here given back"))


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
        _fill(record, runner)
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
