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
    """A validated, paid-for result, ready to write. `values` maps output column to value.

    The money fields say what this attempt cost as knrun knows it: `billed_ticks` is the
    provider's own figure (None when the reply carried none), `tracked_ticks` is pricing.toml x
    usage, and `cost_ticks` (written to the unit) is the billed figure, else the tracked one."""

    unit_id: Any
    values: dict[str, Any]
    model: str
    cost_ticks: int
    input_tokens: int
    output_tokens: int
    processed_at: str  # ISO 8601 UTC
    run_id: str
    attempt_id: str = ""  # unique per request knrun made: keys the charges table
    billed_ticks: int | None = None
    tracked_ticks: int = 0
    cached_tokens: int = 0  # of input_tokens, served from the prompt cache
    reasoning_tokens: int = 0  # of output_tokens
    latency_ms: int | None = None  # from sending to the reply, for the run report

    @property
    def charged(self) -> bool:
        """A paid reply; without an attempt id (written by knrun before charges were kept),
        its money was counted in its run's record instead."""
        return bool(self.attempt_id)


@dataclass(frozen=True)
class UnitFailure:
    """A unit that failed at this version. Only the lease holder (`owner`) may record it.

    A failure may still have cost money: a reply that did not validate was billed
    (`billed_ticks`/`tracked_ticks`), and a request that timed out or was dropped after it was
    sent may have been (`possible_ticks`, its worst case; `expected_ticks`, the best guess)."""

    unit_id: Any
    reason: str  # a short code: invalid_json, schema_mismatch, truncated, ...
    detail: str
    processed_at: str
    run_id: str
    owner: str
    attempt_id: str = ""
    billed_ticks: int | None = None
    tracked_ticks: int = 0
    possible_ticks: int = 0
    expected_ticks: int = 0
    request_hash: str = ""  # what was sent: request-bound failures are retried once it changes
    input_tokens: int = 0  # from the reply's usage, when a reply came
    output_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    latency_ms: int | None = None

    @property
    def error_text(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason

    @property
    def charged(self) -> bool:
        """There was a reply (billed or not), or a request that may have been billed."""
        paid = self.tracked_ticks > 0 or self.billed_ticks is not None or self.possible_ticks > 0
        return paid and bool(self.attempt_id)


@dataclass(frozen=True)
class AttemptRefund:
    """Give back the attempt a failure used: the failure-rate guard decided the run, not the
    unit, was at fault. Applies once (it clears the unit's attempt id)."""

    unit_id: Any
    attempt_id: str
    run_id: str


@dataclass(frozen=True)
class PossibleCharge:
    """A request that may have been billed and has no outcome of its own: cut off by a second
    Ctrl-C or a kill -9 while in flight. Only its money is written (a charge row, at its worst
    case); the unit stays eligible, since the stop was the operator's, not the unit's."""

    unit_id: Any
    run_id: str
    attempt_id: str
    possible_ticks: int
    expected_ticks: int
    processed_at: str
    reason: str = "interrupted"
    billed_ticks: None = None
    tracked_ticks: int = 0

    @property
    def charged(self) -> bool:
        return True


Outcome = UnitResult | UnitFailure | AttemptRefund | PossibleCharge
Charged = UnitResult | UnitFailure | PossibleCharge


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
    money: Money = field(default_factory=lambda: Money())
    in_batches: int = 0  # remaining units leased to an xAI batch (submitted, no result yet)


@dataclass
class Money:
    """Every request that cost or may have cost money: live in a run (its ledger), or summed
    from the store's charges table (one row per request, written with its result in the same
    transaction, so the sum holds after a crash)."""

    requests: int = 0  # replies and possibly-billed requests
    replies: int = 0
    billed_ticks: int = 0  # the provider's cost_in_usd_ticks
    billed_tracked_ticks: int = 0  # pricing.toml x usage of the replies that carried a bill
    tracked_ticks: int = 0  # pricing.toml x usage, every reply
    unbilled_replies: int = 0  # replies without cost_in_usd_ticks
    unbilled_tracked_ticks: int = 0  # those replies at pricing.toml's prices
    possible_requests: int = 0  # timed out, dropped or cut off after sending: maybe billed
    possible_ticks: int = 0  # their worst case
    expected_ticks: int = 0  # their best estimate
    # What the replies bought, in tokens (prompt tokens include the cached ones; output tokens
    # the reasoning ones): the prompt cache's share, and the run report.
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, outcome: Charged) -> None:
        if not outcome.charged:
            return
        self.requests += 1
        if isinstance(outcome, PossibleCharge) or (
            isinstance(outcome, UnitFailure) and outcome.possible_ticks
        ):
            self.possible_requests += 1
            self.possible_ticks += outcome.possible_ticks
            self.expected_ticks += outcome.expected_ticks
            return
        self.replies += 1
        self.tracked_ticks += outcome.tracked_ticks
        self.input_tokens += outcome.input_tokens
        self.cached_tokens += outcome.cached_tokens
        self.output_tokens += outcome.output_tokens
        self.reasoning_tokens += outcome.reasoning_tokens
        if outcome.billed_ticks is None:
            self.unbilled_replies += 1
            self.unbilled_tracked_ticks += outcome.tracked_ticks
        else:
            self.billed_ticks += outcome.billed_ticks
            self.billed_tracked_ticks += outcome.tracked_ticks

    @property
    def spent_ticks(self) -> int:
        """The best figure for what was spent: the bills, the unbilled replies at pricing.toml's
        prices, and the possibly-billed requests at their expected cost."""
        return self.billed_ticks + self.unbilled_tracked_ticks + self.expected_ticks

    @property
    def spent_max_ticks(self) -> int:
        """The most that can have been spent: possibly-billed requests at their worst case.
        The spend cap counts this."""
        return self.billed_ticks + self.unbilled_tracked_ticks + self.possible_ticks

    @property
    def unbilled_share(self) -> float:
        return self.unbilled_replies / self.replies if self.replies else 0.0

    @property
    def possible_share(self) -> float:
        return self.possible_requests / self.requests if self.requests else 0.0

    @property
    def cache_share(self) -> float | None:
        """Of the prompt tokens bought, the share served from xAI's prompt cache."""
        return self.cached_tokens / self.input_tokens if self.input_tokens else None

    def plus(self, other: Money) -> Money:
        return Money(**{name: getattr(self, name) + getattr(other, name) for name in _MONEY})


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
    state: str = "running"  # running | finished | dead (its process died; seen at a later start)
    exit_code: int | None = None
    exit_reason: str | None = None
    units_ok: int = 0
    units_failed: int = 0
    tracked_ticks: int = 0
    billed_ticks: int = 0
    estimate_ticks: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    owner: str = ""  # the lease owner of its units: "<where>:<run id>"


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

    async def write_results(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Write results and failures; idempotent, so a retried request is harmless. Returns
        the outcomes whose unit has no row (the caller keeps them)."""
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


_MONEY = tuple(Money.__dataclass_fields__)
