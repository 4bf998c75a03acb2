"""What a run is asked to do (`RunConfig`) and what it reports at the end (`RunResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from knrun.errors import ExitCode
from knrun.run.events import RunState
from knrun.run.guards import BALANCE_SLACK_TICKS


@dataclass
class RunConfig:
    concurrency: int = 50
    lease_s: float = 900.0  # a claimed unit comes back to the pool if not written within this
    max_429_rounds: int = 10  # bursts of 429s in a row with no success between: a storm
    max_consecutive_outage: int = 10  # units in a row lost to 5xx/timeouts/network: xAI is down
    cap_ticks: int | None = None
    estimate_unit_ticks: int | None = None
    # Output tokens (visible + reasoning) a unit is expected to use: with max_output_tokens, the
    # worst case of a request that may have been billed unseen. None: the job's estimate.
    output_tokens_estimate: int | None = None
    drift_every: int = 100
    drift_tolerance: Decimal = Decimal("0.20")
    # Charges of earlier work (a canary) that may reach the prepaid balance during this run.
    balance_slack_ticks: int = BALANCE_SLACK_TICKS
    write_batch: int = 50
    write_interval_s: float = 2.0
    # How long in-flight requests may finish after a stop: at least one request timeout, or
    # requests xAI accepted (and bills) would be thrown away. None: the job's timeout + 30 s.
    grace_s: float | None = None
    write_grace_s: float = 60.0  # how long the write backlog may drain after the workers end
    cooldown_base_s: float = 2.0
    cooldown_max_s: float = 60.0
    store_retry_base_s: float = 1.0
    store_retry_max_s: float = 60.0
    record_every_s: float = 15.0
    failed_only: bool = False  # retry: claim units that failed at this version
    max_attempts: int = 0
    # Retry: only units failed for these reasons (or for a request that changed since); None:
    # every failed unit.
    retry_reasons: tuple[str, ...] | None = None
    max_units: int | None = None


@dataclass
class RunResult:
    run_id: str
    exit_code: ExitCode
    reason: str
    state: RunState
    unwritten: int  # paid results left in the spool for the next start
