"""What a unit store holds and does: the records it exchanges and the async `UnitStore` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Unit:
    """One claimed unit: its id and the input columns the prompt templates use."""

    id: Any
    inputs: dict[str, Any]
    position: int = 0  # the row's rowid: where the next claim may start


@dataclass(frozen=True)
class UnitResult:
    """A validated, paid-for result, ready to write. `values` maps output column to value."""

    unit_id: Any
    values: dict[str, Any]
    model: str
    cost_ticks: int
    input_tokens: int
    output_tokens: int
    processed_at: str  # ISO 8601 UTC
    run_id: str


@dataclass(frozen=True)
class UnitFailure:
    """A unit that failed at this version. Only the lease holder (`owner`) may record it."""

    unit_id: Any
    reason: str  # a short code: invalid_json, schema_mismatch, truncated, ...
    detail: str
    processed_at: str
    run_id: str
    owner: str

    @property
    def error_text(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


Outcome = UnitResult | UnitFailure


@dataclass
class Progress:
    """The figures behind `knrun status`, for one job version."""

    version: str
    total: int  # rows matching the job's `where`
    done: int
    failed: int
    remaining: int  # neither done nor failed at this version
    leased: int  # remaining units currently leased by some runner
    retry_exhausted: int  # failed units at or over the attempt limit
    done_cost_ticks: int  # sum of per-unit cost of the done units
    avg_input_tokens: float | None
    avg_output_tokens: float | None
    last_processed_at: str | None
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    spent_billed_ticks: int = 0  # from the runs table: everything this version's runs paid
    spent_tracked_ticks: int = 0


@dataclass
class RunRecord:
    """One row of the runs table: a run, a retry, a canary or a preflight receipt."""

    run_id: str
    kind: str  # go | retry | canary | preflight
    job: str
    version: str
    model: str
    prompt_hash: str
    host: str
    started_at: str
    ended_at: str | None = None
    updated_at: str | None = None
    state: str = "running"  # running | finished
    exit_code: int | None = None
    exit_reason: str | None = None
    units_ok: int = 0
    units_failed: int = 0
    tracked_ticks: int = 0
    billed_ticks: int = 0
    estimate_ticks: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class UnitStore(Protocol):
    """Where units live and results go. Every method is one request (one transaction) unless
    noted; none blocks the event loop."""

    async def migrate(self) -> list[str]:
        """Add missing bookkeeping/output columns and the runs table. Returns what was added."""
        ...

    async def count_remaining(self) -> int: ...

    async def claim(
        self,
        n: int,
        owner: str,
        lease_s: float,
        *,
        failed_only: bool = False,
        max_attempts: int = 0,
        start: int | None = None,
    ) -> list[Unit]:
        """Lease up to `n` eligible units to `owner` in one statement and return them, in row
        order, from row position `start` on (from the first row when None).
        `failed_only` claims units that failed at this version instead (for retry)."""
        ...

    async def write_results(self, outcomes: Sequence[Outcome]) -> None:
        """Write results and failures; idempotent, so a retried request is harmless."""
        ...

    async def mark_failed(self, failures: Sequence[UnitFailure]) -> None: ...

    async def release(self, owner: str, unit_ids: Sequence[Any] | None = None) -> int:
        """Drop `owner`'s leases (only on `unit_ids` when given). Returns how many."""
        ...

    async def release_prefix(self, owner_prefix: str) -> int:
        """Drop every lease whose owner starts with `owner_prefix` (a dead run on this machine)."""
        ...

    async def progress(self, max_attempts: int = 0) -> Progress: ...

    async def record_run(self, run: RunRecord) -> None:
        """Insert or update a run record (idempotent upsert)."""
        ...

    async def runs(self, limit: int = 20, kind: str | None = None) -> list[RunRecord]: ...

    async def close(self) -> None: ...
