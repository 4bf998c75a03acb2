"""Which batch a `go --batch` feeds, from the runs table: the job's open batch, if a run before
this one left it open (it died, was interrupted, or its batch is still being processed), else a
new one. Every run of a batch records `detail.batch = {"id", "open"}`; a batch's latest record
says whether it is open."""

from __future__ import annotations

from dataclasses import dataclass

from knrun.job import JobSpec
from knrun.run.batch import BatchHandle
from knrun.run.events import Event, EventSink
from knrun.store.base import SqlUnitStore
from knrun.store.types import RunRecord
from knrun.xai.batch import BatchApi

RUNS_SCANNED = 500


@dataclass(frozen=True)
class BatchRun:
    batch_id: str
    version: str
    run_id: str
    open: bool


async def batch_runs(store: SqlUnitStore) -> list[BatchRun]:
    """Each batch of the job with its latest run's record, newest first."""
    return batches_of(await store.runs(RUNS_SCANNED))


def batches_of(runs: list[RunRecord]) -> list[BatchRun]:
    """The batches these run records name, each as its latest record (newest first) says."""
    seen: dict[str, BatchRun] = {}
    for run in runs:
        batch = run.detail.get("batch")
        if isinstance(batch, dict) and batch.get("id") and batch["id"] not in seen:
            seen[batch["id"]] = BatchRun(
                str(batch["id"]), run.version, run.run_id, bool(batch.get("open"))
            )
    return list(seen.values())


async def attach_batch(
    store: SqlUnitStore,
    api: BatchApi,
    job: JobSpec,
    run_id: str,
    events: EventSink,
    *,
    reuse: bool = True,
) -> BatchHandle:
    """The open batch of this job and version, or a new one (always a new one without
    `reuse`: preflight's canary must not add to, or wait for, a run's batch). The caller
    records the id in the runs table before a single request is added."""
    for run in await batch_runs(store) if reuse else []:
        if run.open and run.version == job.version:
            events(Event("batch_attached", f"batch {run.batch_id}, left open by run {run.run_id}"))
            return BatchHandle(run.batch_id, job.version)
    info = await api.create(f"knrun {job.name} v{job.version} {run_id}")
    events(Event("batch_created", f"batch {info.batch_id} created"))
    return BatchHandle(info.batch_id, job.version, created=True)
