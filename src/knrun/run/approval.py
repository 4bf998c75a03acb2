"""What a preflight receipt approved, and what is left of it: one figure, read after the spool's
paid results reached the store, that counts every request that cost or may have cost money since
the receipt, whichever process made it and wherever it is now.

Spent against an approval = the store's charges of `go` and `collect` runs since the receipt
(possibly-billed requests at their worst case) + paid results still waiting in this folder's
spool + requests a killed run left marked in flight + units waiting in open batches at their
worst case (for a live run: a batch run counts them as its own in flight). A restart, a store
outage, a second Ctrl-C or a kill -9 never gives the approval back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from knrun.spool import Spool
from knrun.store.base import SqlUnitStore
from knrun.store.types import Money

APPROVAL_KINDS = ("go", "collect")  # retry has its own cap; the canary ran before the receipt


@dataclass(frozen=True)
class Approval:
    approved_ticks: int
    since: str  # the receipt's creation, ISO 8601 UTC
    unit_worst_ticks: int  # a unit waiting in a batch, at its worst case
    describe: str  # the receipt, in words


@dataclass(frozen=True)
class Left:
    ticks: int
    spent: Money  # everything counted against the approval
    in_batches: int  # units waiting in open batches (counted at their worst case)


async def approval_left(
    approval: Approval, store: SqlUnitStore, spool: Spool, *, batch_run: bool
) -> Left:
    job, version = store.job.name, store.job.version
    stored = await store.money(kinds=APPROVAL_KINDS, since=approval.since)
    since = datetime.fromisoformat(approval.since.replace("Z", "+00:00")).timestamp()
    spooled = await spool.money(job, version, since=since)
    marked = Money()
    for mark in await spool.in_flight():
        if (mark.job, mark.version) == (job, version):
            marked.requests += 1
            marked.possible_requests += 1
            marked.possible_ticks += mark.possible_ticks
            marked.expected_ticks += mark.expected_ticks
    spent = stored.plus(spooled).plus(marked)
    in_batches = 0 if batch_run else await store.count_in_batches()
    left = approval.approved_ticks - spent.spent_max_ticks - in_batches * approval.unit_worst_ticks
    return Left(left, spent, in_batches)
