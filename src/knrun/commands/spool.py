"""`knrun spool --json`: what the local spool holds, as one object for a script.

The operator's moves on the spool (`knrun spool`): see what waits for every job and version,
write it to the store, put quarantined entries back, or set pending ones aside. Each holds the
run lock, so no run writes the same spool meanwhile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from knrun.commands.session.before import replay_spool
from knrun.commands.session.lock import RunLock
from knrun.context import STATE_DIR, Context
from knrun.errors import ConfigError
from knrun.spool import Held, Spool
from knrun.store import open_store
from knrun.store.types import Money


def listing_json(listing: Listing) -> dict[str, Any]:
    """Every job version with entries: pending (paid, not in the store yet) and quarantined
    (refused by the store, or set aside), with the commonest quarantine reasons."""
    return {
        "entries": [
            {
                "job": held.job,
                "version": held.version,
                "pending": held.pending,
                "quarantined": held.quarantined,
                "quarantine_reasons": listing.reasons.get((held.job, held.version), []),
            }
            for held in listing.held
        ],
        "pending": sum(held.pending for held in listing.held),
        "quarantined": sum(held.quarantined for held in listing.held),
    }


SPOOL_PATH = STATE_DIR / "spool.sqlite"


@dataclass(frozen=True)
class Listing:
    held: list[Held]
    reasons: dict[tuple[str, str], list[str]]  # (job, version) -> top quarantine reasons


async def listing() -> Listing:
    if not SPOOL_PATH.exists():
        return Listing([], {})
    spool = Spool(SPOOL_PATH)
    try:
        held = await spool.held()
        reasons = {
            (h.job, h.version): await spool.quarantine_reasons(h.job, h.version)
            for h in held
            if h.quarantined
        }
    finally:
        await spool.close()
    return Listing(held, reasons)


async def money(job: str, version: str) -> tuple[Money, int]:
    """What this version's pending entries cost, with the requests left marked in flight (a
    run is sending them now, or a kill cut them off) counted as possibly billed; and how many
    of those there are."""
    if not SPOOL_PATH.exists():
        return Money(), 0
    spool = Spool(SPOOL_PATH)
    try:
        pending = await spool.money(job, version)
        marks = [m for m in await spool.in_flight() if (m.job, m.version) == (job, version)]
    finally:
        await spool.close()
    for mark in marks:
        pending.requests += 1
        pending.possible_requests += 1
        pending.possible_ticks += mark.possible_ticks
        pending.expected_ticks += mark.expected_ticks
    return pending, len(marks)


async def counts(job: str, version: str) -> tuple[int, int, int]:
    """(pending, quarantined) for this job version, and pending for every other one."""
    here = await listing()
    mine = [h for h in here.held if (h.job, h.version) == (job, version)]
    others = sum(h.pending for h in here.held if (h.job, h.version) != (job, version))
    return (mine[0].pending, mine[0].quarantined, others) if mine else (0, 0, others)


def _versions(ctx: Context, held: list[Held], version: str | None, *, kind: str) -> list[str]:
    """The job's versions to act on: the one asked for, or every one with entries of `kind`."""
    found = sorted(
        h.version
        for h in held
        if h.job == ctx.job.name and (h.pending if kind == "pending" else h.quarantined)
    )
    if version is not None:
        if version not in {h.version for h in held if h.job == ctx.job.name}:
            raise ConfigError(f"the spool holds nothing for {ctx.job.name} v{version}")
        return [version]
    return found


async def replay(ctx: Context, version: str | None) -> dict[str, int]:
    """Write pending entries of the job (every version with some, or `version`) to the store.
    Entries of another version are written as that version's results: the units stay
    eligible for this version, as they should."""
    with RunLock(STATE_DIR) as lock:
        lock.acquire("knrun spool replay")
        spool = Spool(SPOOL_PATH)
        written: dict[str, int] = {}
        try:
            for each in _versions(ctx, await spool.held(), version, kind="pending"):
                job = ctx.job.model_copy(update={"version": each})
                store = open_store(ctx.settings, job, target=ctx.target)
                try:
                    written[each] = await replay_spool(store, spool, job.name, each, _quiet)
                finally:
                    await store.close()
        finally:
            await spool.close()
    return written


async def requeue(ctx: Context, version: str | None) -> list[str]:
    with RunLock(STATE_DIR) as lock:
        lock.acquire("knrun spool requeue")
        spool = Spool(SPOOL_PATH)
        try:
            versions = _versions(ctx, await spool.held(), version, kind="quarantined")
            for each in versions:
                await spool.requeue(ctx.job.name, each)
        finally:
            await spool.close()
    return versions


async def set_aside(ctx: Context, version: str, reason: str) -> None:
    with RunLock(STATE_DIR) as lock:
        lock.acquire("knrun spool set-aside")
        spool = Spool(SPOOL_PATH)
        try:
            _versions(ctx, await spool.held(), version, kind="pending")
            await spool.set_aside(ctx.job.name, version, reason)
        finally:
            await spool.close()


def _quiet(_: object) -> None:
    """Replay's events are summed up by the command instead."""
