"""The operator's moves on batches (`knrun batch list|collect|cancel`, and `go --batch` collecting
first): every batch `go --batch` made for this store with xAI's live counters, the open ones of
this job version, and cancelling one at xAI. Collecting is a run of its own (`launch` with a
collecting plan): it spends nothing new, so it needs no receipt."""

from __future__ import annotations

from dataclasses import dataclass

from knrun.context import Context, xai_client
from knrun.pricing import ModelPrice
from knrun.run.batch.handle import BatchPlan
from knrun.run.batch.runs import BatchRun, batch_runs, open_batches
from knrun.run.config import RunConfig
from knrun.xai import XaiError
from knrun.xai.batch import BatchApi, BatchInfo


@dataclass(frozen=True)
class Listed:
    run: BatchRun
    info: BatchInfo | None
    problem: str | None = None  # why xAI's counters could not be read


async def listing(ctx: Context) -> list[Listed]:
    async with ctx.open_store() as store:
        runs = await batch_runs(store)
    xai = xai_client(ctx.settings, max_connections=1)
    api, listed = BatchApi(xai), []
    try:
        for run in runs:
            try:
                listed.append(Listed(run, await api.get(run.batch_id)))
            except XaiError as exc:
                listed.append(Listed(run, None, str(exc)))
    finally:
        await xai.aclose()
    return listed


async def open_here(ctx: Context) -> list[BatchRun]:
    """The open batches of this job version, oldest first (collected in the order made)."""
    async with ctx.open_store() as store:
        return list(reversed(open_batches(await batch_runs(store), ctx.job.version)))


async def cancel_at_xai(ctx: Context, batch_id: str) -> BatchInfo:
    """Ask xAI to cancel: what is pending will not run (or be billed); requests already running
    may still finish, and be billed, while the cancel spreads. Collecting afterwards writes
    them and gives back the units whose requests xAI lists as cancelled."""
    xai = xai_client(ctx.settings, max_connections=1)
    try:
        return await BatchApi(xai).cancel(batch_id)
    finally:
        await xai.aclose()


def collect_plan(batch: BatchRun) -> BatchPlan:
    return BatchPlan(batch_id=batch.batch_id, submit=False, made_for=batch.made_for)


def collect_config(max_wait_s: float | None, cancel_wait_s: float = 900.0) -> RunConfig:
    """A collecting run: no cap (nothing new is bought; what was bought is counted), the
    usual drift checks on what comes in."""
    return RunConfig(batch=True, batch_max_wait_s=max_wait_s, batch_cancel_wait_s=cancel_wait_s)


def batch_price(price: ModelPrice) -> ModelPrice:
    return price.for_batch()
