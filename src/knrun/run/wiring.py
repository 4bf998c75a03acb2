"""How the runner's parts are sized and built for one run: the grace and lease times, the
pacing, the claim page, and the engine (live or batch) with what it shares with the rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from knrun.clock import scaled_clock, scaled_sleep
from knrun.job import JobSpec
from knrun.pricing import ModelPrice
from knrun.run.batch.engine import BatchEngine, OnBatch
from knrun.run.batch.handle import BatchHandle, BatchPlan
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, EventSink, RunState
from knrun.run.ledger import Ledger
from knrun.run.live.engine import LiveEngine, Record
from knrun.run.live.pacing import AdaptivePacing
from knrun.spool import Spool
from knrun.store.base import SqlUnitStore
from knrun.xai import XaiClient, XaiError
from knrun.xai.batch import BatchApi

MIN_PAGE, MAX_PAGE = 50, 200  # units per claim
PROMPT_GUESS_TOKENS = 1_000


@dataclass(frozen=True)
class Parts:
    """What either engine shares with the rest of the run."""

    job: JobSpec
    price: ModelPrice
    xai: XaiClient
    config: RunConfig
    state: RunState
    control: Control
    ledger: Ledger
    record: Record
    emit: EventSink


def grace_s(config: RunConfig, job: JobSpec, batch: BatchPlan | None) -> float:
    """How long in-flight work may finish after a stop. Requests may run to their timeout:
    cut sooner, xAI would bill requests whose replies nobody reads. A batch's wind-down (a
    cancel spreading, its last results) gets as long as it is allowed."""
    grace = config.grace_s or job.timeout_s + 30.0
    if batch is not None:
        grace = max(grace, config.batch_cancel_wait_s * config.time_scale + 60.0)
    return grace


def lease_s(config: RunConfig, job: JobSpec) -> float:
    """A claimed unit's lease must outlast its work: at least a request timeout and more."""
    return max(config.lease_s, job.timeout_s * 1.2)


def page_size(pacing: AdaptivePacing, batch: BatchPlan | None) -> Callable[[], int]:
    """A claim's page is about what may be in flight now: big pages hold leases long for
    nothing, small ones cost a store request each (D1 allows 3 a second)."""
    if batch is not None:
        return lambda: MAX_PAGE
    return lambda: max(MIN_PAGE, min(pacing.limit(), MAX_PAGE))


def pacing(job: JobSpec, config: RunConfig, state: RunState, emit: EventSink) -> AdaptivePacing:
    output = config.output_tokens_estimate or job.estimate.output_tokens
    # Tokens per request until replies say: this job's own figures (the canary's, or its
    # finished units': prompt with its cached part, output with its reasoning), else a
    # guess at the prompt (the output dominates).
    tokens = config.tokens_per_request_estimate or PROMPT_GUESS_TOKENS + output
    return AdaptivePacing(
        max_concurrency=config.workers,
        # A fixed `--concurrency N` is a pool of N in flight, paced by limits and 429s.
        adaptive_concurrency=config.max_concurrency is not None,
        max_rounds=config.max_429_rounds,
        tokens_per_request=tokens,
        known=config.known_limits,
        state=state,
        emit=emit,
        time_scale=config.time_scale,
    )


def live_engine(
    parts: Parts,
    pacing: AdaptivePacing,
    spool: Spool,
    run_id: str,
    owner: str,
    lease_s: float,
    clock: Callable[[], float],
) -> LiveEngine:
    return LiveEngine(
        job=parts.job,
        price=parts.price,
        xai=parts.xai,
        config=parts.config,
        state=parts.state,
        control=parts.control,
        ledger=parts.ledger,
        pacing=pacing,
        record=parts.record,
        marks=spool,
        run_id=run_id,
        owner=owner,
        # A unit gets this long, from when a worker takes it, before it is given back.
        unit_budget_s=lease_s * 0.9,
        clock=clock,
    )


def batch_engine(
    parts: Parts,
    store: SqlUnitStore,
    plan: BatchPlan,
    on_batch: OnBatch | None,
    run_id: str,
    owner: str,
) -> BatchEngine:
    config, state = parts.config, parts.state
    sleep = scaled_sleep(config.time_scale)

    def waited(what: str, problem: XaiError, seconds: float) -> None:
        state.batch_waits += 1
        parts.emit(Event("batch_wait", f"{what}: {problem}; again in {seconds:.0f} s"))

    async def recorded(_: BatchHandle) -> None:
        """No runs table to name the batch in (a test's runner)."""

    return BatchEngine(
        job=parts.job,
        price=parts.price,
        api=BatchApi(parts.xai, sleep=sleep, on_wait=waited),
        plan=plan,
        store=store,
        config=config,
        state=state,
        control=parts.control,
        ledger=parts.ledger,
        record=parts.record,
        run_id=run_id,
        run_owner=owner,
        clock=scaled_clock(config.time_scale),
        sleep=sleep,
        on_batch=on_batch or recorded,
    )
