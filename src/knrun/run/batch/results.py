"""What one batch result means for its unit: a reply, judged as a live reply is (paid); a failure
with its reason; or the unit handed back to the pool, untouched, because its request never ran
(cancelled) or the account, not the unit, was at fault (no credit, a model the account cannot
use) -- the latter also stops the run, in xAI's words."""

from __future__ import annotations

from dataclasses import dataclass

from knrun.errors import ExitCode
from knrun.job import JobSpec
from knrun.pricing import ModelPrice
from knrun.run import judge
from knrun.run.ledger import Ledger
from knrun.store.types import Unit
from knrun.xai import (
    AuthFailed,
    CreditExhausted,
    ModelUnavailable,
    PromptTooLong,
    XaiError,
    classify_message,
)
from knrun.xai.batch import BatchResult


@dataclass(frozen=True)
class GiveBack:
    """The unit goes back to the pool as it was; `stop` (reason, exit code) stops the run."""

    unit: Unit
    stop: tuple[str, ExitCode] | None = None


def take(
    result: BatchResult,
    unit: Unit,
    *,
    job: JobSpec,
    price: ModelPrice,
    ledger: Ledger,
    attempt: judge.Attempt,
) -> judge.Judged | GiveBack:
    if result.reply is not None:
        return judge.judge(result.reply, unit, job, price, attempt)
    if result.unreadable:
        # A reply came and cannot be read: xAI may have billed it, so it counts at its worst
        # case, as an unreadable live reply does.
        worst = ledger.worst_case_ticks(job.render(unit.inputs))
        failed = judge.failure(
            unit,
            judge.BAD_RESPONSE,
            f"{result.error}; counted as possibly billed",
            attempt,
            possible_ticks=worst,
            expected_ticks=min(ledger.expected_ticks(), worst),
        )
        return judge.Judged(failed)
    if result.cancelled:
        return GiveBack(unit)
    message = result.error or ""
    error = classify_message(message, None)
    if isinstance(error, CreditExhausted):
        return GiveBack(unit, (f"credit exhausted: {message}", ExitCode.BREAKER))
    if isinstance(error, AuthFailed | ModelUnavailable):
        return GiveBack(unit, (message, ExitCode.USAGE))
    reason = judge.PROMPT_TOO_LONG if isinstance(error, PromptTooLong) else judge.BATCH_ERROR
    return judge.Judged(judge.failure(unit, reason, message, attempt))


def stop_for(exc: XaiError) -> tuple[str, ExitCode]:
    """What a failed Batch API call means for the run: its reason and exit code."""
    if isinstance(exc, CreditExhausted):
        return f"credit exhausted: {exc}", ExitCode.BREAKER
    if isinstance(exc, AuthFailed | ModelUnavailable):
        return str(exc), ExitCode.USAGE
    return f"the Batch API failed: {exc}", ExitCode.FAILURE
