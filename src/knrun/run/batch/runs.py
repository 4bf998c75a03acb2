"""Which batches a job has at xAI, from the runs table: every run of a batch records
`detail.batch = {"id", "open", "for"}` (`for`: go or canary, whoever made it), and a batch's
latest record says whether it is open. A run resumes its kind's open batch of the job version,
or plans a new one (made only when there is something to add)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from knrun.errors import NotAuthorised
from knrun.job import JobSpec
from knrun.run.batch.handle import BatchPlan
from knrun.store.base import SqlUnitStore
from knrun.store.types import RunRecord

RUNS_SCANNED = 500
ALIVE_WITHIN_S = 60  # a running run refreshes its record every 15 s


@dataclass(frozen=True)
class BatchRun:
    batch_id: str
    version: str
    run_id: str  # the batch's latest run
    open: bool
    made_for: str  # go | canary
    alive: bool  # its latest run is running now (its record is fresh)


async def batch_runs(store: SqlUnitStore) -> list[BatchRun]:
    """Each batch of the job with its latest run's record, newest first."""
    return batches_of(await store.runs(RUNS_SCANNED))


def batches_of(runs: list[RunRecord], now: datetime | None = None) -> list[BatchRun]:
    """The batches these run records name, each as its latest record (newest first) says."""
    now = now or datetime.now(UTC)
    seen: dict[str, BatchRun] = {}
    for run in runs:
        batch = run.detail.get("batch")
        if not isinstance(batch, dict) or not batch.get("id") or batch["id"] in seen:
            continue
        updated = datetime.fromisoformat(run.updated_at or run.started_at)
        alive = run.state == "running" and (now - updated).total_seconds() <= ALIVE_WITHIN_S
        made_for = str(batch.get("for") or ("canary" if run.kind == "canary" else "go"))
        seen[batch["id"]] = BatchRun(
            str(batch["id"]), run.version, run.run_id, bool(batch.get("open")), made_for, alive
        )
    return list(seen.values())


def open_batches(batches: list[BatchRun], version: str) -> list[BatchRun]:
    return [b for b in batches if b.open and b.version == version]


async def plan_for(store: SqlUnitStore, job: JobSpec, made_for: str, run_id: str) -> BatchPlan:
    """The plan of a run that adds: its kind's open batch of this job version, or a new one.
    Another live run feeding that batch (a second machine, say)
    makes this one refuse to start: two runs adding to one batch would collect each other's
    units."""
    for batch in open_batches(await batch_runs(store), job.version):
        if batch.made_for != made_for:
            continue
        if batch.alive:
            raise NotAuthorised(
                f"batch {batch.batch_id} is being fed by run {batch.run_id}, which is running: "
                "not starting a second run on it"
            )
        # A canary left open waits for its own requests: a canary adds no more to it.
        return BatchPlan(batch_id=batch.batch_id, submit=made_for == "go", made_for=made_for)
    return BatchPlan(name=f"knrun {job.name} v{job.version} {run_id}", made_for=made_for)
