"""Before a run takes a unit: requests a stopped run left in flight counted, paid results of
an earlier run written from the spool (and a start refused past another version's), runs of
this folder that died marked and their leases given back, the cap the receipt leaves, and
how many units the run may take."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from knrun.commands.session.lock import Identity
from knrun.errors import ExitCode, NotAuthorised, RunStopped, StoreUnusable
from knrun.pricing import format_usd
from knrun.run.approval import Approval, approval_left
from knrun.run.config import RunConfig
from knrun.run.events import Event, EventSink
from knrun.spool import Spool
from knrun.store.base import SqlUnitStore


async def settle_left_in_flight(spool: Spool, events: EventSink) -> None:
    """Requests a run cut off (kill -9) left marked in flight: possibly billed, counted now."""
    if settled := await spool.settle_in_flight(await spool.in_flight()):
        events(
            Event(
                "in_flight_settled",
                f"{len(settled)} requests a stopped run left in flight are counted as possibly "
                "billed",
            )
        )


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


# What a run stopped by its cap says next: the command that continues it.
CONTINUE = {
    "go": "run `knrun preflight` again for a new receipt that approves what is left, or "
    "`knrun go --max-spend USD` for a cap of that run alone",
    "retry": "run `knrun retry --max-spend USD` with a larger cap",
    "collect": "run `knrun preflight --batch` again for a new receipt",
}


async def approved_cap(
    approval: Approval, store: SqlUnitStore, spool: Spool, config: RunConfig
) -> int:
    """The run's cap: what the receipt approved less everything spent since (the spool just
    replayed, so each paid result counts once), or RunStopped (exit 4) when that cannot pay
    for one more unit at its worst case and there is a unit to pay for."""
    left = await approval_left(approval, store, spool, batch_run=config.batch)
    need = 1 if config.batch else approval.unit_worst_ticks  # a batch counts its own units
    if left.ticks >= need:
        return left.ticks
    if not config.batch and await eligible(store, config) == 0:
        return max(left.ticks, 0)  # nothing to buy: the run finds nothing and ends
    spent = [f"{format_usd(left.spent.spent_max_ticks)} spent at most since preflight"]
    if left.in_batches:
        spent.append(f"{left.in_batches:,} units waiting in open batches")
    unit = config.estimate_unit_ticks or 0
    raise RunStopped(
        f"spend cap: {format_usd(max(left.ticks, 0))} is left of the approved spend of "
        f"{approval.describe} ({', '.join(spent)}), and one more unit needs about "
        f"{format_usd(unit)} (up to {format_usd(approval.unit_worst_ticks)} at worst, as the "
        f"cap counts it): {CONTINUE['collect' if config.batch else 'go']}",
        ExitCode.SPEND_CAP,
    )


async def eligible(store: SqlUnitStore, config: RunConfig) -> int:
    """Units this run may take: retry's failed ones (its reasons, under the attempt limit), or
    every remaining one, up to `max_units`."""
    if config.failed_only:
        total = await store.count_claimable(
            failed_only=True, max_attempts=config.max_attempts, reasons=config.retry_reasons
        )
    else:
        total = await store.count_remaining()
    return total if config.max_units is None else min(total, config.max_units)
