"""`knrun batch list|cancel`: the batches `go --batch` made for this store, with xAI's live
counters, and cancelling one safely (its done results are never thrown away)."""

from __future__ import annotations

from dataclasses import dataclass

from knrun.context import Context, xai_client
from knrun.run.batch import batch_owner
from knrun.run.batch_runs import BatchRun, batch_runs
from knrun.run.judge import utc_now
from knrun.store.types import RunRecord
from knrun.xai import XaiError
from knrun.xai.batch import BatchApi, BatchInfo


@dataclass(frozen=True)
class Listed:
    run: BatchRun
    info: BatchInfo | None
    problem: str | None = None  # why xAI's counters could not be read


@dataclass(frozen=True)
class Cancelled:
    info: BatchInfo
    released: int  # units given back now (nothing of the batch had run)
    to_collect: int  # results done before the cancel: `go --batch` writes them


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


async def cancel(ctx: Context, batch_id: str) -> Cancelled:
    """Cancel at xAI. When nothing of it ran, its units go back at once and the batch is
    closed in the runs table; otherwise its done results wait for `go --batch`, which writes
    them and then gives the cancelled units back (a unit is never bought twice)."""
    xai = xai_client(ctx.settings, max_connections=1)
    try:
        info = await BatchApi(xai).cancel(batch_id)
    finally:
        await xai.aclose()
    if info.num_success + info.num_error:
        return Cancelled(info, 0, info.num_success + info.num_error)
    async with ctx.open_store() as store:
        released = await store.release(batch_owner(batch_id))
        job = ctx.job
        now = utc_now()
        await store.record_run(
            RunRecord(
                run_id=f"cancel-{batch_id}-{now}",
                kind="batch-cancel",
                job=job.name,
                version=job.version,
                model=job.model,
                prompt_hash=job.prompt_hash,
                host="",
                started_at=now,
                updated_at=now,
                ended_at=now,
                state="finished",
                exit_code=0,
                exit_reason=f"batch {batch_id} cancelled by the operator",
                detail={"batch": {"id": batch_id, "open": False}},
            )
        )
    return Cancelled(info, released, 0)
