"""What a run is asked to do (`RunConfig`) and what it reports at the end (`RunResult`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal

from knrun.errors import ConfigError, ExitCode
from knrun.run.approval import Approval
from knrun.run.events import RunState
from knrun.run.guards import BALANCE_SLACK_TICKS

AUTO = "auto"
DEFAULT_MAX_CONCURRENCY = 1000  # in flight at most under `--concurrency auto`
MAX_CONCURRENCY = 10_000


def concurrency_fields(concurrency: int | None, max_concurrency: int) -> tuple[int, int | None]:
    """RunConfig's `concurrency` and `max_concurrency` from `--concurrency auto|N` (None: auto)
    and `--max-concurrency`: auto lets the pacing choose up to the maximum; N holds N."""
    if concurrency is None:
        return max_concurrency, max_concurrency
    return min(concurrency, max_concurrency), None


def sim_time_scale() -> float:
    """`KNRUN_SIM_TIME_SCALE`: set by `knrun demo`, the tests and the benchmarks, which run
    against a time-scaled simulator, so that pacing keeps the simulator's time. Never set for
    real use (so it is not in .env.example)."""
    raw = os.environ.get("KNRUN_SIM_TIME_SCALE", "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 0 < scale <= 1:
        raise ConfigError(f"KNRUN_SIM_TIME_SCALE must be a number in (0, 1], not {raw!r}")
    return scale


@dataclass
class RunConfig:
    concurrency: int = 50  # units in flight at most (`--concurrency N`)
    # `--concurrency auto`: the pacing finds the account's limit, with up to this many in
    # flight; None: `concurrency` is the cap.
    max_concurrency: int | None = None
    lease_s: float = 900.0  # a claimed unit comes back to the pool if not written within this
    max_429_rounds: int = 10  # bursts of 429s in a row with no success between: a storm
    max_consecutive_outage: int = 10  # units in a row lost to 5xx/timeouts/network: xAI is down
    cap_ticks: int | None = None
    # What a receipt approved: the run's cap is what is left of it when the run starts (after
    # the spool is written), unless `cap_ticks` is given.
    approval: Approval | None = None
    estimate_unit_ticks: int | None = None
    # Output tokens (visible + reasoning) a unit is expected to use: with max_output_tokens, the
    # worst case of a request that may have been billed unseen. None: the job's estimate.
    output_tokens_estimate: int | None = None
    # Tokens a request counts against a tokens-per-minute limit (prompt, cached included, and
    # output, reasoning included), from this job's own history; None: a guess until replies say.
    tokens_per_request_estimate: int | None = None
    # The account's limits per second (requests, tokens) as the last run's replies said them:
    # the pace starts just under them (`run/live/remembered.py`).
    known_limits: dict[str, float] | None = None
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
    store_retry_base_s: float = 1.0
    store_retry_max_s: float = 60.0
    record_every_s: float = 15.0
    failed_only: bool = False  # retry: claim units that failed at this version
    max_attempts: int = 0
    # Retry: only units failed for these reasons (or for a request that changed since); None:
    # every failed unit.
    retry_reasons: tuple[str, ...] | None = None
    max_units: int | None = None
    # `go --batch`: the Batch API is the engine; its counters are read this often (seconds).
    batch: bool = False
    batch_poll_s: float = 30.0
    batch_no_wait: bool = False  # submit everything, then leave the batch to xAI
    # How long a batch run waits for xAI (None: until the batch is done); then it leaves the
    # batch open for `knrun batch collect`. Seconds, like the poll.
    batch_max_wait_s: float | None = None
    # After a guard cancels a batch: how long to keep collecting while the cancel spreads.
    batch_cancel_wait_s: float = 900.0
    # Against the simulator only: one of its seconds lasts this many real ones, and pacing
    # keeps time in its seconds (`knrun demo`, tests, benchmarks).
    time_scale: float = field(default_factory=lambda: sim_time_scale())

    @property
    def workers(self) -> int:
        """Worker tasks: each holds at most one unit, so this bounds units in flight."""
        return self.max_concurrency or self.concurrency


@dataclass
class RunResult:
    run_id: str
    exit_code: ExitCode
    reason: str
    state: RunState
    unwritten: int  # paid results left in the spool for the next start
