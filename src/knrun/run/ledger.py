"""The run's money and the guards that read it: every tick billed, unbilled or possibly billed;
the spend cap; the failure-rate guard; the drift and balance checks. It asks the network only
for the prepaid balance (in the background) and other runs' spend, never xAI's chat API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace

from knrun.errors import ExitCode, StoreError
from knrun.estimate import prompt_tokens
from knrun.job import JobSpec
from knrun.pricing import ModelPrice, format_usd
from knrun.run import judge
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, RunState
from knrun.run.guards import DriftMonitor, DriftReading, FailureRate, SpendCap
from knrun.store.types import AttemptRefund, UnitFailure

BalanceReader = Callable[[], Awaitable[int | None]]
# What other runs on the account may have spent since this one began (given this run's worst
# case per request), for the balance check.
OthersReader = Callable[[int], Awaitable[int]]
# Failures that count for the failure-rate guard although no reply came: the provider refused
# the request itself ("a 4xx nobody expected"), or answered something unreadable.
_REQUEST_FAULTS = (judge.BAD_REQUEST, judge.PROMPT_TOO_LONG, judge.BAD_RESPONSE)
UNBILLED_CHECK_EVERY = 20  # replies between balance checks while xAI sends no bills
# The prompt cache: a shared prefix this long (tokens) that stays under this share cached after
# this many replies is worth a warning (the bill is then several times what it could be).
CACHE_PREFIX_TOKENS, CACHE_LOW_SHARE, CACHE_AFTER_REPLIES = 1024, 0.05, 50


class Ledger:
    def __init__(
        self,
        *,
        job: JobSpec,
        price: ModelPrice,
        config: RunConfig,
        state: RunState,
        control: Control,
        balance: BalanceReader | None = None,
        others: OthersReader | None = None,
    ) -> None:
        self.job, self.price, self.config = job, price, config
        self.state, self.control, self.emit = state, control, control.emit
        self.money = state.money
        self.cap = (
            SpendCap(config.cap_ticks, config.estimate_unit_ticks or 0)
            if config.cap_ticks is not None
            else None
        )
        self.drift = DriftMonitor(config.drift_every, config.drift_tolerance)
        self.failure_rate = FailureRate()
        self._balance, self._others = balance, others
        self._balance_at_start: int | None = None
        self._balance_check: asyncio.Task[None] | None = None
        self._next_unbilled_check = 0  # replies: while bills are missing, the balance decides
        # A drift check has passed over a full interval of this run's units: the prices are
        # true (a batch adds its bulk only after that).
        self.verified = False
        self._prefix_tokens = prompt_tokens([{"content": job.shared_prefix}])
        self._cache_checked = False

    async def start(self) -> None:
        if self._balance is not None:
            self._balance_at_start = await self._balance()

    async def finish(self) -> None:
        if self._balance_check is not None:
            with contextlib.suppress(Exception):
                await self._balance_check

    # -- each paid request ------------------------------------------------------------------------

    def record(self, judged: judge.Judged) -> tuple[list[AttemptRefund], DriftReading | None]:
        """Count one outcome's money; returns the attempt refunds the failure-rate guard asks
        for, and the drift reading to check (on the figures as they stand now) once the outcome
        is safe in the spool."""
        outcome = judged.outcome
        self.money.add(outcome)
        if outcome.latency_ms is not None:  # what the request took, for the run's summary
            self.state.latency.add(outcome.latency_ms)
        if self.cap is not None and outcome.charged:
            self.cap.observe(outcome.billed_ticks or outcome.tracked_ticks)
        refunds = self._judge_failure_rate(judged)
        self._watch_cache()
        if self.drift.due(self.state.processed):
            return refunds, self._reading()
        if (
            self.drift.unbilled_alarm(self.money)
            and self.money.replies >= self._next_unbilled_check
        ):
            # Bills are missing: the balance is the only check left, so it runs often.
            self._next_unbilled_check = self.money.replies + UNBILLED_CHECK_EVERY
            return refunds, self._reading()
        return refunds, None

    def _judge_failure_rate(self, judged: judge.Judged) -> list[AttemptRefund]:
        """Feed a paid reply to the failure-rate guard. When it trips, the failures behind it
        (and any after it) give their attempts back: the run was at fault, not the units."""
        outcome = judged.outcome
        if not judged.input_tokens and not (
            isinstance(outcome, UnitFailure) and outcome.reason in _REQUEST_FAULTS
        ):
            return []  # no reply and not a request the provider refused: not this guard's
        refund, reason = None, None
        if isinstance(outcome, UnitFailure):
            refund = AttemptRefund(outcome.unit_id, outcome.attempt_id, outcome.run_id)
            reason = outcome.reason
        already = self.failure_rate.tripped is not None
        message = self.failure_rate.record(reason, refund)
        if message is not None:
            self.control.request_stop(message, ExitCode.FAILURE_RATE)
            return self.failure_rate.window_refunds()
        return [refund] if already and refund is not None else []

    def _watch_cache(self) -> None:
        """Once: every prompt starts with the same long system prompt, yet next to nothing of
        it comes from xAI's prompt cache."""
        money = self.money
        if self._cache_checked or money.replies < CACHE_AFTER_REPLIES:
            return
        self._cache_checked = True
        share = money.cache_share or 0.0
        if self._prefix_tokens >= CACHE_PREFIX_TOKENS and share < CACHE_LOW_SHARE:
            self.emit(
                Event(
                    "cache_warning",
                    f"prompt cache: {share:.1%} of prompt tokens were cached over "
                    f"{money.replies} replies, although every prompt starts with the same "
                    f"system prompt of about {self._prefix_tokens:,} tokens: cached input costs "
                    f"{self.price.cached_input} against {self.price.input} USD per 1M, so the "
                    "input bill is several times what it could be (xAI caches a prefix per "
                    "conversation id; knrun sends one per worker as x-grok-conv-id)",
                )
            )

    # -- the cap ----------------------------------------------------------------------------------

    def allowance(self, committed_units: int) -> int | None:
        """Units the cap lets this run claim now (None: no cap). Every unit committed (in
        flight or queued) counts at its worst case, so in flight x worst case never passes the
        cap however high the pacing takes the concurrency. (What may be billed past the
        balance is bounded by the concurrency preflight planned for: go keeps to it.)"""
        if self.cap is None:
            return None
        return self.cap.allowance(self.money.spent_max_ticks, committed_units)

    def stop_at_cap(self) -> None:
        assert self.cap is not None
        left = max(self.cap.cap_ticks - self.money.spent_max_ticks, 0)
        self.control.request_stop(
            f"spend cap reached: spent {format_usd(self.money.spent_max_ticks)} "
            f"(at most) of {format_usd(self.cap.cap_ticks)}, {format_usd(left)} left, and one "
            f"more unit needs about {format_usd(self.cap.estimated_unit_ticks)} (up to "
            f"{format_usd(self.cap.worst_case_unit_ticks)} at worst, as the cap counts it)",
            ExitCode.SPEND_CAP,
        )

    def tokens_per_request(self, messages: list[dict[str, str]]) -> int:
        """What a request counts against the tokens-per-minute limit: its prompt and the
        output expected (reasoning included)."""
        return prompt_tokens(messages) + self._output_estimate()

    # -- what a request may cost ------------------------------------------------------------------

    def worst_case_ticks(self, messages: list[dict[str, str]] | None) -> int:
        """A request's dearest plausible cost: its prompt, max_output_tokens of visible output,
        and on top as much again as a unit's whole output (reasoning has no cap of its own).
        Without messages, an average prompt of this run (or none)."""
        replies = self.state.replies
        prompt = (
            prompt_tokens(messages)
            if messages is not None
            else (self.state.input_tokens // replies if replies else 0)
        )
        output = self.job.max_output_tokens + self._output_estimate()
        return self.price.estimate_ticks(prompt, output, per_request=prompt)

    def expected_ticks(self) -> int:
        """The best guess at what a possibly-billed request cost: this run's own average once
        it has a few replies, else the estimate."""
        money = self.money
        if money.replies >= 10:
            return (money.billed_ticks + money.unbilled_tracked_ticks) // money.replies
        return self.config.estimate_unit_ticks or self.price.estimate_ticks(
            0, self._output_estimate()
        )

    def _output_estimate(self) -> int:
        return self.config.output_tokens_estimate or self.job.estimate.output_tokens

    # -- drift and the balance --------------------------------------------------------------------

    def _reading(self) -> DriftReading:
        return DriftReading(
            units=self.state.processed,
            money=replace(self.money),  # a copy: the figures at this unit
            estimated_unit_ticks=self.config.estimate_unit_ticks,
            balance_slack_ticks=self.config.balance_slack_ticks,
        )

    def check(self, reading: DriftReading) -> None:
        """Decide on the figures as they stood at the unit that made the check due, at once;
        then, if nothing is wrong yet, read the balance in the background (a network call,
        during which more units land and are spooled)."""
        problems = self.drift.problems(reading)
        if problems or self._balance is None or self._balance_at_start is None:
            if not problems and self.drift.unbilled_alarm(reading.money):
                problems = [self._cannot_verify(reading)]
            self._found(reading, problems)
            return
        if self._balance_check is None or self._balance_check.done():
            self._balance_check = asyncio.create_task(self._check_balance(reading))

    async def _check_balance(self, reading: DriftReading) -> None:
        """The balance against what the run can account for when the balance comes back: every
        request billed by then, plus those in flight (xAI bills at acceptance) at their worst,
        plus what other runs on the account have spent meanwhile."""
        assert self._balance is not None and self._balance_at_start is not None
        in_flight = self.state.in_flight
        now = await self._balance()
        if now is None:
            if self.drift.unbilled_alarm(reading.money):
                self._found(reading, [self._cannot_verify(reading)])
            return
        in_flight = max(in_flight, self.state.in_flight)
        worst = self.worst_case_ticks(None)
        others = 0
        if self._others is not None:
            try:
                others = await self._others(worst)
            except StoreError as exc:  # not knowing them, this check could blame them: skip it
                self.emit(Event("store_error", f"reading other runs' spend: {exc}"))
                return
        reading = replace(
            self._reading(),
            balance_drop_ticks=self._balance_at_start - now,
            in_flight_ticks=in_flight * worst + others,
        )
        self._found(reading, self.drift.problems(reading))

    @staticmethod
    def _cannot_verify(reading: DriftReading) -> str:
        money = reading.money
        return (
            f"xAI sent no cost_in_usd_ticks with {money.unbilled_replies} of {money.replies} "
            "replies, and the prepaid balance cannot be read: knrun cannot see what this run "
            "is being billed (set XAI_MANAGEMENT_KEY so the balance is checked instead)"
        )

    def _found(self, reading: DriftReading, problems: list[str]) -> None:
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
            self.control.request_stop("cost drift: " + "; ".join(problems), ExitCode.DRIFT)
        elif reading.units >= self.drift.every:
            self.verified = True
