"""The live engine: a pool of workers turning leased units into paid replies, through xAI's
chat API, at the pace its pacing policy allows. The only part of a run that talks to xAI.

A worker never waits for another (a pool, not waves) and never for the store: each outcome goes
to the coordinator's `record`, which makes it durable and counts its money."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from knrun.errors import ExitCode
from knrun.estimate import prompt_tokens
from knrun.job import JobSpec
from knrun.pricing import ModelPrice, format_usd
from knrun.run import judge
from knrun.run.claimer import Claimer
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, RunState
from knrun.run.ledger import Ledger
from knrun.run.live.pacing import Pacing
from knrun.spool import InFlight
from knrun.store.types import Unit
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

Record = Callable[[judge.Judged], Awaitable[None]]


class Marks(Protocol):
    """Where requests in flight are marked (the spool)."""

    async def mark(self, request: InFlight) -> None: ...

    async def unmark(self, attempt_id: str) -> None: ...


MIN_REQUEST_S = 60.0  # a unit with less of its lease budget left is given back, not sent


class LiveEngine:
    def __init__(
        self,
        *,
        job: JobSpec,
        price: ModelPrice,
        xai: XaiClient,
        config: RunConfig,
        state: RunState,
        control: Control,
        ledger: Ledger,
        pacing: Pacing,
        record: Record,
        marks: Marks,
        run_id: str,
        owner: str,
        unit_budget_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job, self.price, self.xai, self.config = job, price, xai, config
        self.state, self.control, self.emit = state, control, control.emit
        self.ledger, self.pacing, self.record, self.marks = ledger, pacing, record, marks
        self.run_id, self.owner, self.unit_budget_s = run_id, owner, unit_budget_s
        self._clock = clock
        self._attempts = 0  # requests made: numbers each one's attempt id
        self._outage_streak = 0

    async def prepare(self) -> None:
        """Nothing to do before the claimer starts."""

    def claims(self) -> bool:
        """The live engine always takes units from the claimer."""
        return True

    async def finish(self, backlog: int) -> None:
        """Nothing outlives a live run (its leases go back with the run's own)."""

    def start(self, claimer: Claimer) -> list[asyncio.Task[None]]:
        """One task per unit that may be in flight; the pacing decides how many are."""
        self.control.on_stop(self.pacing.wake_all)
        return [asyncio.create_task(self._worker(claimer, i)) for i in range(self.config.workers)]

    async def _worker(self, claimer: Claimer, index: int) -> None:
        conv_id = f"knrun-{self.job.name}-{self.job.prompt_hash}-{index}"
        while True:
            await self.pacing.acquire()
            try:
                if self.control.stopping or (unit := await claimer.take()) is None:
                    return  # queued units stay leased to this run: released when it ends
                if self.control.stopping:
                    return
                await self._unit(unit, conv_id, index)
            finally:
                self.pacing.release()

    async def _unit(self, unit: Unit, conv_id: str, lane: int) -> None:
        state = self.state
        state.in_flight += 1
        state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            await self._process(unit, conv_id, lane)
        except Exception as exc:  # a bug: stop the whole run now, not after the others
            self.control.request_stop(
                f"internal error: {type(exc).__name__}: {exc}", ExitCode.FAILURE
            )
            raise
        finally:
            state.in_flight -= 1

    async def _process(self, unit: Unit, conv_id: str, lane: int) -> None:
        """One unit: requests until one is answered (a 429 waits its own backoff and goes
        again), or the unit fails, or its lease budget is spent, or the run stops."""
        messages = self.job.render(unit.inputs)
        deadline = self._clock() + self.unit_budget_s
        tokens = self.ledger.tokens_per_request(messages)
        worst = self.ledger.worst_case_ticks(messages)
        prompt, tries, retry_after = prompt_tokens(messages), 0, None
        while True:
            if limit := self.pacing.too_large(prompt):  # known once a reply or a 429 says
                await self._too_large(unit, prompt, limit)
                return
            sent_at = await self.pacing.before_send(tries, tokens, retry_after)
            if self.control.stopping:
                self.pacing.on_ended(sent_at)
                return
            left = deadline - self._clock()
            if left < min(MIN_REQUEST_S, self.job.timeout_s):
                # Rate limits have held it too long: a request now could outlive the lease.
                self.pacing.on_ended(sent_at)
                self.state.given_back += 1
                self.emit(Event("given_back", f"unit {unit.id}: its lease budget is spent"))
                return  # left leased to this run: released when the run ends
            self._attempts += 1
            attempt = judge.Attempt(
                self.run_id, self.owner, f"{self.run_id}:{self._attempts}", self.job.request_hash
            )
            # Marked before it goes: a request cut off by a kill is counted at the next start.
            await self.marks.mark(self._in_flight(attempt, unit, worst))
            started = time.monotonic()
            try:
                reply = await self._chat(messages, conv_id, lane, min(self.job.timeout_s, left))
            except RateLimited as exc:
                await self.marks.unmark(attempt.attempt_id)  # refused before any work
                tries, retry_after = tries + 1, exc.retry_after
                if storm := self.pacing.on_refused(exc, sent_at):
                    self.control.request_stop(storm, ExitCode.BREAKER)
                continue
            except Exception as exc:
                await self._failed(unit, worst, exc, attempt)
                return
            finally:
                self.pacing.on_ended(sent_at)
            break
        self.pacing.on_reply(reply, sent_at)
        self._outage_streak = 0
        latency_ms = round((time.monotonic() - started) * 1000)
        await self.record(judge.judge(reply, unit, self.job, self.price, attempt, latency_ms))

    async def _too_large(self, unit: Unit, prompt: int, limit: int) -> None:
        """Never sent: its prompt alone is over what the account may send in a minute."""
        attempt = judge.Attempt(self.run_id, self.owner, "", self.job.request_hash)
        detail = (
            f"the prompt is about {prompt:,} tokens; the account's limit is {limit:,} tokens "
            "per minute, so xAI could never take it (not sent, nothing billed)"
        )
        await self.record(judge.Judged(judge.failure(unit, judge.TOO_LARGE, detail, attempt)))

    def _in_flight(self, attempt: judge.Attempt, unit: Unit, worst: int) -> InFlight:
        return InFlight(
            attempt_id=attempt.attempt_id,
            job=self.job.name,
            version=self.job.version,
            run_id=self.run_id,
            unit_id=unit.id,
            possible_ticks=worst,
            expected_ticks=min(self.ledger.expected_ticks(), worst),
        )

    async def _chat(
        self, messages: list[dict[str, str]], conv_id: str, lane: int, timeout_s: float
    ) -> ChatReply:
        return await self.xai.chat(
            model=self.job.model,
            messages=messages,
            temperature=self.job.temperature,
            max_completion_tokens=self.job.max_output_tokens,
            response_schema=self.job.response_schema,
            schema_name=self.job.schema_name,
            reasoning_effort=self.job.reasoning_effort,
            conv_id=conv_id,
            timeout_s=timeout_s,
            lane=lane,
        )

    async def _failed(self, unit: Unit, worst: int, exc: Exception, attempt: judge.Attempt) -> None:
        """What a failed request means for the run, and for the unit. A refusal with no
        outcome of its own drops its in-flight mark; every outcome recorded drops it too."""
        if isinstance(exc, CreditExhausted):
            # Stop at once; the unit is not failed: it was never the unit's fault.
            await self.marks.unmark(attempt.attempt_id)
            self.control.request_stop(f"credit exhausted: {exc}", ExitCode.BREAKER)
        elif isinstance(exc, AuthFailed | ModelUnavailable):
            await self.marks.unmark(attempt.attempt_id)
            self.control.request_stop(str(exc), ExitCode.USAGE)
        elif isinstance(exc, PossiblyBilled):
            await self._possibly_billed(unit, worst, exc, attempt)
        elif isinstance(exc, PromptTooLong | BadRequest):
            reason = judge.PROMPT_TOO_LONG if isinstance(exc, PromptTooLong) else judge.BAD_REQUEST
            await self.record(judge.Judged(judge.failure(unit, reason, str(exc), attempt)))
        elif isinstance(exc, NotSent | ServerError):  # retried in the call; nothing was billed
            self._outage(exc)
            failed = judge.failure(unit, judge.RETRIES_EXHAUSTED, str(exc), attempt)
            await self.record(judge.Judged(failed))
        else:
            raise exc

    def _outage(self, exc: Exception) -> None:
        self._outage_streak += 1
        if self._outage_streak >= self.config.max_consecutive_outage:
            self.control.request_stop(
                f"xAI unreachable: {self._outage_streak} units in a row failed without a reply "
                f"(last: {exc})",
                ExitCode.FAILURE,
            )

    async def _possibly_billed(
        self, unit: Unit, worst: int, exc: PossiblyBilled, attempt: judge.Attempt
    ) -> None:
        """The request reached xAI and no usable reply came back. xAI bills what it computed, so
        the attempt is counted at its worst case against the cap and shown; the unit fails for
        this attempt (retry may try it again), and nothing is sent again now."""
        if not isinstance(exc, BadResponse):  # an unreadable reply is not an outage
            self._outage(exc)
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
            expected_ticks=min(self.ledger.expected_ticks(), worst),
        )
        self.emit(Event("possibly_billed", detail, {"unit": unit.id}))
        await self.record(judge.Judged(failed))
