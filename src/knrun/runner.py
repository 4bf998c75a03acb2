"""The run: a claimer keeps a bounded queue of leased units fed, N workers turn units into paid
results, and one writer sends results to the store in batches. Guards can stop it at any point.

    claimer --pages of leased units--> queue --> N workers --> spool (fsync) --> writer --> store

A worker never waits for another (a pool, not waves), and never waits for the store: a result is
durable once it is in the spool, and the writer catches up in batches. The runner reports through
an event sink and `RunState`; it imports no UI code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from decimal import Decimal

from knrun import judge
from knrun.errors import ExitCode, KnrunError, StoreError, StoreUnusable
from knrun.estimate import prompt_tokens
from knrun.events import Event, EventSink, RunState, discard
from knrun.guards import (
    BALANCE_SLACK_TICKS,
    CircuitBreaker,
    Cooldown,
    DriftMonitor,
    DriftReading,
    FailureRate,
    SpendCap,
)
from knrun.job import JobSpec
from knrun.pricing import ModelPrice, format_usd
from knrun.spool import Delivery, Spool
from knrun.store.base import SqlUnitStore
from knrun.store.sql import MAX_ROWID
from knrun.store.types import AttemptRefund, Outcome, Unit, UnitFailure
from knrun.xai import (
    AuthFailed,
    BadRequest,
    BadResponse,
    ChatReply,
    CreditExhausted,
    ModelUnavailable,
    NotSent,
    PossiblyBilled,
    PromptTooLong,
    RateLimited,
    ServerError,
    Timeout,
    XaiClient,
)

BalanceReader = Callable[[], Awaitable[int | None]]
# What other runs on the account may have spent since this one began (given this run's worst
# case per request), for the balance check.
OthersReader = Callable[[int], Awaitable[int]]
# Failures that count for the failure-rate guard although no reply came: the provider refused
# the request itself ("a 4xx nobody expected"), or answered something unreadable.
_REQUEST_FAULTS = (judge.BAD_REQUEST, judge.PROMPT_TOO_LONG, judge.BAD_RESPONSE)
UNBILLED_CHECK_EVERY = 20  # replies between balance checks while xAI sends no bills
MIN_REQUEST_S = 60.0  # a unit with less of its lease budget left is given back, not sent


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


class Runner:
    def __init__(
        self,
        *,
        job: JobSpec,
        price: ModelPrice,
        store: SqlUnitStore,
        xai: XaiClient,
        spool: Spool,
        config: RunConfig,
        run_id: str,
        owner: str,
        total: int,
        events: EventSink = discard,
        balance: BalanceReader | None = None,
        others: OthersReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job, self.price, self.store, self.xai, self.spool = job, price, store, xai, spool
        self.config = config
        self.run_id, self.owner = run_id, owner
        self.emit = events
        self._balance = balance
        self._others = others
        self._clock = clock
        self.state = RunState(
            run_id=run_id,
            total=total,
            concurrency=config.concurrency,
            cap_ticks=config.cap_ticks,
            estimate_ticks=(config.estimate_unit_ticks or 0) * total or None,
        )
        self.grace_s = config.grace_s or job.timeout_s + 30.0
        self.breaker = CircuitBreaker(config.max_429_rounds)
        self.cooldown = Cooldown(clock, base_s=config.cooldown_base_s, max_s=config.cooldown_max_s)
        self.drift = DriftMonitor(config.drift_every, config.drift_tolerance)
        self.failure_rate = FailureRate()
        self._attempts = 0  # requests made: numbers each one's attempt id
        self._balance_check: asyncio.Task[None] | None = None
        self._next_unbilled_check = 0  # replies: while bills are missing, the balance decides
        self.cap = (
            SpendCap(config.cap_ticks, config.estimate_unit_ticks or 0)
            if config.cap_ticks is not None
            else None
        )
        # Unbounded as a container; the claimer keeps it between half and one-and-a-half pages,
        # so end-of-work markers can always be added without waiting.
        self._queue: asyncio.Queue[Unit | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._results_ready = asyncio.Event()  # a result reached the spool
        self._closing = False  # the workers are done: write everything, then stop
        self._unspooled: list[Outcome] = []  # results the spool failed to take (disk full?)
        self.quarantined: list[str] = []  # results the store refused outright, kept aside
        self.lost: list[str] = []  # results refused by the store that the spool never had
        self._stop_reason: str | None = None
        self._exit_code = ExitCode.OK
        self._stopped = asyncio.Event()
        self._abandon_writes = False
        self._write_deadline: float | None = None  # set when the run winds down
        self._workers: list[asyncio.Task[None]] = []
        self._outage_streak = 0
        self._balance_at_start: int | None = None
        self._claimed = 0
        self._lost_claims = 0  # claims that failed after they may have been applied
        self._store_unusable = False
        # A claimed unit's lease must outlast its work: at least a request timeout and more.
        self.lease_s = max(config.lease_s, job.timeout_s * 1.5)
        # A unit gets this long, from when a worker takes it, before it is given back unsent.
        self.unit_budget_s = self.lease_s * 0.9

    # -- control ----------------------------------------------------------------------------------

    def request_stop(self, reason: str, exit_code: ExitCode) -> None:
        """Stop claiming and starting requests; in-flight ones may finish. The first reason wins."""
        if self._stop_reason is not None:
            return
        self._stop_reason, self._exit_code = reason, exit_code
        self.state.stopping = reason
        self._stopped.set()
        self._room.set()
        self.emit(Event("stopping", reason, {"exit_code": int(exit_code)}))
        asyncio.get_running_loop().call_later(self.grace_s, self._cancel_workers)

    def cancel_now(self) -> None:
        """Second Ctrl-C: drop in-flight requests and stop waiting for the store. Paid results
        are already in the spool."""
        self.request_stop("interrupted", ExitCode.INTERRUPTED)
        self._abandon_writes = True
        self._cancel_workers()
        self._closing = True
        self._results_ready.set()

    def _start_write_deadline(self) -> None:
        """Once the workers are done, the backlog gets one grace period to reach the store."""
        if self._write_deadline is None:
            self._write_deadline = self._clock() + self.config.write_grace_s

    def _cancel_workers(self) -> None:
        for task in self._workers:
            task.cancel()

    @property
    def stopping(self) -> bool:
        return self._stop_reason is not None

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        self.emit(
            Event("run_started", f"{self.state.total} units eligible", {"run_id": self.run_id})
        )
        if self._balance is not None:
            self._balance_at_start = await self._balance()
        writer = asyncio.create_task(self._writer())
        claimer = asyncio.create_task(self._claimer())
        heartbeat = asyncio.create_task(self._heartbeat())
        self._workers = [
            asyncio.create_task(self._worker(i)) for i in range(self.config.concurrency)
        ]
        try:
            await asyncio.gather(*self._workers, return_exceptions=True)
        finally:
            for task in (claimer, heartbeat):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._balance_check is not None:
                with contextlib.suppress(Exception):
                    await self._balance_check
            self._start_write_deadline()
            self._closing = True  # the writer flushes what is left, then ends
            self._results_ready.set()
            await writer
            await self._release_leases()
        unwritten = self.state.write_backlog - len(self._unspooled)
        reason = self._stop_reason or await self._all_processed()
        if self._exit_code == ExitCode.OK and unwritten:
            self._exit_code = ExitCode.FAILURE
            reason = f"{unwritten} paid results could not be written; they stay in the spool"
        self.lost += [f"{outcome.unit_id}: never written" for outcome in self._unspooled]
        if self.lost:
            self._exit_code = ExitCode.FAILURE
            reason += (
                f"; {len(self.lost)} paid results could not be saved anywhere (the spool failed): "
                + ", ".join(self.lost[:5])
            )
        if self.quarantined:
            reason += (
                f"; {len(self.quarantined)} results the store refused are kept in the spool's "
                "quarantine table"
            )
        self.emit(Event("run_finished", reason, {"exit_code": int(self._exit_code)}))
        return RunResult(self.run_id, self._exit_code, reason, self.state, unwritten)

    async def _all_processed(self) -> str:
        """A run that ends on its own must have taken every unit it could: one that was given
        back, or whose claim was lost, makes the run end non-zero so nobody takes it for done."""
        if self.config.failed_only or self.config.max_units is not None:
            return "all eligible units processed"
        try:
            left = await self.store.count_claimable()
        except StoreError as exc:
            self.emit(Event("store_error", f"counting what is left: {exc}"))
            return "all eligible units processed (what is left could not be counted)"
        if left and self._exit_code == ExitCode.OK:
            self._exit_code = ExitCode.FAILURE
            return (
                f"{left} eligible units were not processed ({self.state.given_back} given back "
                "unsent, or leased by a claim whose reply was lost): run `knrun go` again"
            )
        return "all eligible units processed"

    async def _heartbeat(self) -> None:
        """Renew this run's leases (queued, in flight, waiting in the spool) well before they
        run out, so a slow unit never outlives its lease and goes to a second runner."""
        every = self.lease_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                renewed = await self.store.renew(self.owner, self.lease_s)
            except StoreError as exc:  # the next beat tries again; units are bounded anyway
                self.emit(Event("store_error", f"renewing leases: {exc}"))
                continue
            self.emit(Event("leases_renewed", f"{renewed} leases", {"leases": renewed}))

    # -- claimer ----------------------------------------------------------------------------------

    async def _claimer(self) -> None:
        try:
            await self._claim_until_done()
        except KnrunError as exc:
            self.request_stop(f"claiming: {exc}", exc.exit_code)
        except Exception as exc:  # a bug: stop with a message, not a traceback
            self.request_stop(f"internal error while claiming: {exc!r}", ExitCode.FAILURE)
        finally:
            for _ in self._workers:  # one end-of-work marker per worker
                self._queue.put_nowait(None)

    async def _claim_until_done(self) -> None:
        delay = self.config.store_retry_base_s
        low_water = self.config.concurrency // 2
        # Claims go in rowid order from where the last one ended. At the end of the table a go
        # run looks once more from the start (for leases given back meanwhile); a retry run
        # does not, or one night could spend several of a unit's attempts.
        cursor: int | None = None
        while not self.stopping:
            while self._queue.qsize() > low_water and not self.stopping:
                self._room.clear()
                await self._room.wait()
            if self.stopping:
                return
            want = self._claim_size()
            if want is None:
                return
            if want == 0 and self._cap_blocks_everything():
                if await self._nothing_left():
                    return  # the cap stopped nothing: every eligible unit is done
                self._stop_at_cap()
                return
            if want == 0:  # the cap is full of committed units: wait for some to finish
                await self._pause(0.05)
                continue
            try:
                page = await self.store.claim(
                    want,
                    self.owner,
                    self.lease_s,
                    failed_only=self.config.failed_only,
                    max_attempts=self.config.max_attempts,
                    start=cursor,
                    reasons=self.config.retry_reasons,
                )
            except StoreError as exc:
                if not exc.retryable:
                    self.request_stop(f"the store refused a claim: {exc}", exc.exit_code)
                    return
                # The claim may have been applied with its reply lost: its page is leased to
                # this run, and only this run can take it back before the lease runs out.
                self._lost_claims += 1
                delay = await self._store_trouble("claim", exc, delay)  # busy, an outage
                continue
            delay = self.config.store_retry_base_s
            if not page:
                if cursor is not None and not self.config.failed_only:
                    cursor = None  # past the end: look once more from the start
                    continue
                if self._lost_claims and await self._reclaim_own():
                    continue
                return  # nothing eligible is left
            # The next claim starts just past this page; past the last possible rowid, at the end.
            after = page[-1].position + 1
            cursor = after if after <= MAX_ROWID else None
            self._claimed += len(page)
            for unit in page:
                self._queue.put_nowait(unit)
            self.state.queued = self._queue.qsize()

    async def _reclaim_own(self) -> bool:
        """After a claim whose reply was lost: once everything in hand is done and written,
        any unit still leased to this run and not finished is one of that page's. Take them
        back (True when there were some)."""
        while self.state.in_flight or self._queue.qsize() or self.state.write_backlog:
            if self.stopping:
                return False
            await self._pause(0.05)
        self._lost_claims = 0
        try:
            page = await self.store.claim(
                self.config.concurrency,
                self.owner,
                self.lease_s,
                failed_only=self.config.failed_only,
                max_attempts=self.config.max_attempts,
                reasons=self.config.retry_reasons,
                own=True,
            )
        except StoreError as exc:
            self._lost_claims += 1  # the next end of the table tries again
            self.emit(Event("store_error", f"taking back a lost claim's units: {exc}"))
            return not self.stopping
        if page:
            self.emit(Event("reclaimed", f"{len(page)} units of a claim whose reply was lost"))
            self._lost_claims = 1  # there may be more pages of them
        for unit in page:
            self._queue.put_nowait(unit)
        self.state.queued = self._queue.qsize()
        return bool(page)

    def _claim_size(self) -> int | None:
        """Units to claim now: 0 to wait, None when no more may be claimed at all."""
        want = self.config.concurrency
        if self.config.max_units is not None:
            left = self.config.max_units - self._claimed
            if left <= 0:
                return None
            want = min(want, left)
        if self.cap is not None:
            committed = self.state.in_flight + self._queue.qsize()
            want = min(want, self.cap.allowance(self.state.money.spent_max_ticks, committed))
        return want

    def _cap_blocks_everything(self) -> bool:
        """The cap allows no claim and nothing is in flight to free any of it."""
        return self.cap is not None and self.state.in_flight + self._queue.qsize() == 0

    async def _nothing_left(self) -> bool:
        """No unit could be claimed now anyway (those whose results are still on their way to
        the store hold this run's lease, so they do not count)."""
        try:
            claimable = await self.store.count_claimable(
                failed_only=self.config.failed_only,
                max_attempts=self.config.max_attempts,
                reasons=self.config.retry_reasons,
            )
        except StoreError:
            return False
        return claimable == 0

    def _stop_at_cap(self) -> None:
        assert self.cap is not None
        self.request_stop(
            f"spend cap reached: spent {format_usd(self.state.money.spent_max_ticks)} "
            f"(at most) of {format_usd(self.cap.cap_ticks)}, and one more unit could cost up to "
            f"{format_usd(self.cap.worst_case_unit_ticks)}",
            ExitCode.SPEND_CAP,
        )

    async def _store_trouble(self, what: str, exc: Exception, delay: float) -> float:
        self.state.store_errors += 1
        self.emit(Event("store_error", f"{what}: {exc}", {"retry_in_s": delay}))
        await self._pause(delay)
        return min(delay * 2, self.config.store_retry_max_s)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the run is told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    # -- workers ----------------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        conv_id = f"knrun-{self.job.name}-{self.job.prompt_hash}-{index}"
        while (unit := await self._queue.get()) is not None:
            self.state.queued = self._queue.qsize()
            self._room.set()
            if self.stopping:
                continue  # left leased; released when the run ends
            self.state.in_flight += 1
            try:
                await self._process(unit, conv_id, index)
            except Exception as exc:  # a bug: stop the whole run now, not after the others
                self.request_stop(f"internal error: {type(exc).__name__}: {exc}", ExitCode.FAILURE)
                raise
            finally:
                self.state.in_flight -= 1

    async def _process(self, unit: Unit, conv_id: str, lane: int) -> None:
        messages = self.job.render(unit.inputs)
        deadline = self._clock() + self.unit_budget_s
        while True:
            await self.cooldown.wait()
            if self.stopping:
                return
            left = deadline - self._clock()
            if left < min(MIN_REQUEST_S, self.job.timeout_s):
                # Rate limits have held it too long: a request now could outlive the lease.
                self.state.given_back += 1
                self.emit(Event("given_back", f"unit {unit.id}: its lease budget is spent"))
                return  # left leased to this run: released when the run ends
            self._attempts += 1
            attempt = judge.Attempt(
                self.run_id, self.owner, f"{self.run_id}:{self._attempts}", self.job.request_hash
            )
            sent_at = self._clock()
            try:
                reply = await self._chat(messages, conv_id, lane, min(self.job.timeout_s, left))
            except RateLimited as exc:
                self._rate_limited(exc, sent_at)
                continue
            except CreditExhausted as exc:
                # Stop at once; the unit is not failed: it was never the unit's fault.
                self.breaker.trip_credit_exhausted(str(exc))
                self.request_stop(self.breaker.tripped or str(exc), ExitCode.BREAKER)
                return
            except (AuthFailed, ModelUnavailable) as exc:
                self.request_stop(str(exc), ExitCode.USAGE)
                return
            except PossiblyBilled as exc:
                await self._possibly_billed(unit, messages, exc, attempt)
                return
            except (PromptTooLong, BadRequest) as exc:
                reason = (
                    judge.PROMPT_TOO_LONG if isinstance(exc, PromptTooLong) else judge.BAD_REQUEST
                )
                await self._record(judge.Judged(judge.failure(unit, reason, str(exc), attempt)))
                return
            except (NotSent, ServerError) as exc:  # retried in the call; nothing was billed
                self._outage(exc)
                failed = judge.failure(unit, judge.RETRIES_EXHAUSTED, str(exc), attempt)
                await self._record(judge.Judged(failed))
                return
            break
        self.breaker.record_success()
        self._outage_streak = 0
        await self._record(judge.judge(reply, unit, self.job, self.price, attempt))

    async def _chat(
        self, messages: list[dict[str, str]], conv_id: str, lane: int, timeout_s: float
    ) -> ChatReply:
        return await self.xai.chat(
            model=self.job.model,
            messages=messages,
            temperature=self.job.temperature,
            max_completion_tokens=self.job.max_output_tokens,
            response_schema=self.job.response_schema,
            schema_name=f"{self.job.name}_output".replace("-", "_").replace(".", "_"),
            reasoning_effort=self.job.reasoning_effort,
            conv_id=conv_id,
            timeout_s=timeout_s,
            lane=lane,
        )

    def _rate_limited(self, exc: RateLimited, sent_at: float) -> None:
        self.state.rate_limited += 1
        if not self.breaker.record_rate_limited(sent_at, self._clock()):
            return  # part of a round already being waited out
        self.state.rate_limit_rounds += 1
        if self.breaker.tripped:
            self.request_stop(self.breaker.tripped, ExitCode.BREAKER)
            return
        seconds = self.cooldown.trigger(exc.retry_after, self.breaker.rounds)
        self.emit(
            Event(
                "rate_limited",
                f"every worker pauses {seconds:.1f} s (round {self.breaker.rounds})",
                {"retry_after": exc.retry_after, "rounds": self.breaker.rounds},
            )
        )

    def _outage(self, exc: Exception) -> None:
        self._outage_streak += 1
        if self._outage_streak >= self.config.max_consecutive_outage:
            self.request_stop(
                f"xAI unreachable: {self._outage_streak} units in a row failed without a reply "
                f"(last: {exc})",
                ExitCode.FAILURE,
            )

    async def _possibly_billed(
        self,
        unit: Unit,
        messages: list[dict[str, str]],
        exc: PossiblyBilled,
        attempt: judge.Attempt,
    ) -> None:
        """The request reached xAI and no usable reply came back. xAI bills what it computed, so
        the attempt is counted at its worst case against the cap and shown; the unit fails for
        this attempt (retry may try it again), and nothing is sent again now."""
        if not isinstance(exc, BadResponse):  # an unreadable reply is not an outage
            self._outage(exc)
        worst = self._worst_case_ticks(messages)
        reason = {Timeout: judge.TIMEOUT, BadResponse: judge.BAD_RESPONSE}.get(
            type(exc), judge.DROPPED
        )
        detail = f"{exc}; counted as possibly billed, up to {format_usd(worst, 6)}"
        failed = judge.failure(
            unit,
            reason,
            detail,
            attempt,
            possible_ticks=worst,
            expected_ticks=min(self._expected_ticks(), worst),
        )
        self.emit(Event("possibly_billed", detail, {"unit": unit.id}))
        await self._record(judge.Judged(failed))

    def _worst_case_ticks(self, messages: list[dict[str, str]] | None) -> int:
        """A request's dearest plausible cost: its prompt, max_output_tokens of visible output,
        and on top as much again as a unit's whole output (reasoning has no cap of its own).
        Without messages, an average prompt of this run (or none)."""
        replies = self.state.replies
        prompt = (
            prompt_tokens(messages)
            if messages is not None
            else (self.state.input_tokens // replies if replies else 0)
        )
        output = self.job.max_output_tokens + (
            self.config.output_tokens_estimate or self.job.estimate.output_tokens
        )
        return self.price.estimate_ticks(prompt, output, per_request=prompt)

    def _expected_ticks(self) -> int:
        """The best guess at what a possibly-billed request cost: this run's own average once
        it has a few replies, else the estimate."""
        money = self.state.money
        if money.replies >= 10:
            return (money.billed_ticks + money.unbilled_tracked_ticks) // money.replies
        return self.config.estimate_unit_ticks or self.price.estimate_ticks(
            0, self.config.output_tokens_estimate or self.job.estimate.output_tokens
        )

    async def _record(self, judged: judge.Judged) -> None:
        """Count the unit, all its figures at once (its cost is spent whatever happens next),
        make it durable in the spool, then wake the writer; only after that, any guard that
        needs the network (a balance read) may run."""
        state = self.state
        outcome = judged.outcome
        state.money.add(outcome)
        if judged.input_tokens:
            state.replies += 1
            state.input_tokens += judged.input_tokens
            state.output_tokens += judged.output_tokens
        if isinstance(outcome, UnitFailure):
            state.failed += 1
            state.failed_by_reason[outcome.reason] += 1
        else:
            state.done += 1
        if self.cap is not None and outcome.charged:
            self.cap.observe(outcome.billed_ticks or outcome.tracked_ticks)
        refunds = self._judge_failure_rate(judged)
        drift = self._drift_reading() if self.drift.due(state.processed) else None
        await self._spool([outcome, *refunds])
        if isinstance(outcome, UnitFailure):
            self.emit(Event("unit_failed", outcome.error_text, {"unit": outcome.unit_id}))
        else:
            self.emit(
                Event("unit_done", "", {"unit": outcome.unit_id, "ticks": outcome.cost_ticks})
            )
        self._results_ready.set()
        if drift is not None:
            self._check_drift(drift)
        elif (
            self.drift.unbilled_alarm(state.money)
            and state.money.replies >= self._next_unbilled_check
        ):
            # Bills are missing: the balance is the only check left, so it runs often.
            self._next_unbilled_check = state.money.replies + UNBILLED_CHECK_EVERY
            self._check_drift(self._drift_reading())

    async def _spool(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.state.write_backlog += 1
            try:
                await self.spool.append(outcome, job=self.job.name, version=self.job.version)
            except StoreError as exc:
                # Not durable (a full disk?): still hand it to the writer, but stop.
                self.request_stop(f"the local spool failed: {exc}", ExitCode.FAILURE)
                self._unspooled.append(outcome)

    def _judge_failure_rate(self, judged: judge.Judged) -> list[AttemptRefund]:
        """Feed a paid reply to the failure-rate guard. When it trips, the failures behind it
        (and any after it) give their attempts back: the run was at fault, not the units."""
        outcome = judged.outcome
        if not judged.input_tokens and not (
            isinstance(outcome, UnitFailure) and outcome.reason in _REQUEST_FAULTS
        ):
            return []  # no reply and not a request the provider refused: not this guard's
        failed = isinstance(outcome, UnitFailure)
        refund = (
            AttemptRefund(outcome.unit_id, outcome.attempt_id, outcome.run_id) if failed else None
        )
        reason = outcome.reason if isinstance(outcome, UnitFailure) else None
        already = self.failure_rate.tripped is not None
        message = self.failure_rate.record(reason, refund)
        if message is not None:
            self.request_stop(message, ExitCode.FAILURE_RATE)
            return self.failure_rate.window_refunds()
        return [refund] if already and refund is not None else []

    def _drift_reading(self) -> DriftReading:
        return DriftReading(
            units=self.state.processed,
            money=replace(self.state.money),  # a copy: the figures at this unit
            estimated_unit_ticks=self.config.estimate_unit_ticks,
            balance_slack_ticks=self.config.balance_slack_ticks,
        )

    def _check_drift(self, reading: DriftReading) -> None:
        """Decide on the figures as they stood at the unit that made the check due, at once;
        then, if nothing is wrong yet, read the balance in the background (a network call,
        during which more units land and are spooled)."""
        problems = self.drift.problems(reading)
        if problems or self._balance is None or self._balance_at_start is None:
            if not problems and self.drift.unbilled_alarm(reading.money):
                problems = [self._cannot_verify(reading)]
            self._drift_found(reading, problems)
            return
        if self._balance_check is None or self._balance_check.done():
            self._balance_check = asyncio.create_task(self._check_balance(reading))

    async def _check_balance(self, reading: DriftReading) -> None:
        """The balance against what the run can account for when the balance comes back: every
        request billed by then, plus those in flight (xAI bills at acceptance) at their worst."""
        assert self._balance is not None and self._balance_at_start is not None
        in_flight = self.state.in_flight
        now = await self._balance()
        if now is None:
            if self.drift.unbilled_alarm(reading.money):
                self._drift_found(reading, [self._cannot_verify(reading)])
            return
        in_flight = max(in_flight, self.state.in_flight)
        worst = self._worst_case_ticks(None)
        others = 0
        if self._others is not None:
            try:
                others = await self._others(worst)
            except StoreError as exc:  # not knowing them, this check could blame them: skip it
                self.emit(Event("store_error", f"reading other runs' spend: {exc}"))
                return
        reading = replace(
            self._drift_reading(),
            balance_drop_ticks=self._balance_at_start - now,
            # Billed at acceptance: this run's requests in flight, and other runs' spend.
            in_flight_ticks=in_flight * worst + others,
        )
        self._drift_found(reading, self.drift.problems(reading))

    @staticmethod
    def _cannot_verify(reading: DriftReading) -> str:
        money = reading.money
        return (
            f"xAI sent no cost_in_usd_ticks with {money.unbilled_replies} of {money.replies} "
            "replies, and the prepaid balance cannot be read: knrun cannot see what this run "
            "is being billed (set XAI_MANAGEMENT_KEY so the balance is checked instead)"
        )

    def _drift_found(self, reading: DriftReading, problems: list[str]) -> None:
        money = reading.money
        self.emit(
            Event(
                "drift_check",
                "; ".join(problems) or "ok",
                {
                    "units": reading.units,
                    "tracked": money.tracked_ticks,
                    "billed": money.billed_ticks,
                    "unbilled_replies": money.unbilled_replies,
                    "possibly_billed": money.possible_ticks,
                    "balance_drop": reading.balance_drop_ticks,
                },
            )
        )
        if problems:
            self.request_stop("cost drift: " + "; ".join(problems), ExitCode.DRIFT)

    # -- writer -----------------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Drains the spool into the store: a batch once `write_batch` results wait or
        `write_interval_s` after the first, and everything when the run closes. Results are read
        back from the spool, so a long store outage costs disk, not memory."""
        try:
            while True:
                closing = await self._batch_ready()
                await self._drain(until_empty=closing)
                if closing:
                    return
                if self._give_up_writing():  # nothing more goes to the store in this run
                    while not self._closing:
                        self._results_ready.clear()
                        await self._results_ready.wait()
                    return
        except KnrunError as exc:  # e.g. the store lost knrun's columns: not worth retrying
            self.request_stop(f"writing: {exc}", exc.exit_code)
        except Exception as exc:  # a bug: what was not written stays in the spool
            self.request_stop(f"internal error while writing: {exc!r}", ExitCode.FAILURE)

    async def _batch_ready(self) -> bool:
        """Wait until a batch is worth sending; True once the run is closing."""
        deadline: float | None = None
        while not self._closing:
            backlog = self.state.write_backlog
            if backlog >= self.config.write_batch:
                return False
            timeout = None
            if backlog > 0:
                if deadline is None:
                    deadline = self._clock() + self.config.write_interval_s
                timeout = deadline - self._clock()
                if timeout <= 0:
                    return False
            self._results_ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._results_ready.wait(), timeout)
        return True

    async def _drain(self, *, until_empty: bool) -> None:
        size = self.config.write_batch
        while not self._give_up_writing():
            batch: list[tuple[int, Outcome]] = [(0, o) for o in self._unspooled[:size]]
            try:
                batch += await self.spool.pending(
                    self.job.name, self.job.version, limit=size - len(batch)
                )
            except StoreError as exc:  # the spool cannot be read: still write what is in memory
                self.emit(Event("spool_error", str(exc)))
                if not batch:
                    return
            if not batch or not await self._write(batch):
                return
            if len(batch) < size and not until_empty:
                return

    async def _write(self, batch: list[tuple[int, Outcome]]) -> bool:
        """Deliver one batch through the spool, retrying trouble that may pass; False if the
        run gave up on writing (what is left stays in the spool)."""
        delay = self.config.store_retry_base_s
        while not self._give_up_writing():
            try:
                delivery = await self.spool.deliver(self.store, batch)
            except StoreUnusable as exc:
                # Every write will be refused until the operator fixes the store: stop, and keep
                # every paid result in the spool for the next start.
                self.request_stop(
                    f"the store refuses every write: {exc}. Paid results stay in the spool "
                    "(`knrun spool`) and are written at the next start",
                    exc.exit_code,
                )
                self._store_unusable = True
                return False
            except StoreError as exc:
                delay = await self._write_trouble(exc, delay)
                continue
            self._delivered(batch, delivery)
            return True
        return False

    def _delivered(self, batch: list[tuple[int, Outcome]], delivery: Delivery) -> None:
        del self._unspooled[: sum(1 for seq, _ in batch if not seq)]
        self.state.written += delivery.written
        self.state.write_backlog -= len(batch)
        self.emit(
            Event("written", f"{delivery.written} results", {"backlog": self.state.write_backlog})
        )
        for what in delivery.quarantined:
            self.quarantined.append(what)
            self.emit(Event("quarantined", f"the store refused a result outright: {what}"))
        for what in delivery.lost:
            self.lost.append(what)
            self.emit(Event("lost", f"a paid result could not be saved anywhere: {what}"))

    def _give_up_writing(self) -> bool:
        """After a stop, the backlog gets `write_grace_s` to drain; what is left stays in the
        spool. A store that refuses every write gets no more tries in this run."""
        if self._abandon_writes or self._store_unusable:
            return True
        return self._write_deadline is not None and self._clock() > self._write_deadline

    async def _write_trouble(self, exc: Exception, delay: float) -> float:
        # A plain sleep, not `_pause`: a stopping run must not retry a struggling store faster.
        self.state.store_errors += 1
        self.emit(Event("store_error", f"write: {exc}", {"retry_in_s": delay}))
        await asyncio.sleep(delay)
        return min(delay * 2, self.config.store_retry_max_s)

    async def _release_leases(self) -> None:
        """Give back units claimed but never finished, so the next run takes them at once.
        Not while results still wait in the spool: a failure is only recorded under its run's
        lease, so the next start here writes them first and then gives the leases back."""
        if self.state.write_backlog > 0:
            self.emit(
                Event(
                    "leases_kept",
                    f"{self.state.write_backlog} results wait in the "
                    "spool: leases are kept until the next start writes them",
                )
            )
            return
        try:
            released = await self.store.release(self.owner)
        except Exception as exc:  # the lease expires on its own; say so and move on
            self.emit(Event("store_error", f"release: {exc}", {}))
            return
        if released:
            self.emit(Event("released", f"{released} unstarted units back to the pool", {}))
