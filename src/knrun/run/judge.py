"""Turning one chat reply into a result to store, or a failure with a reason, and its cost."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import BaseModel, ValidationError

from knrun.clock import utc_now
from knrun.job import JobSpec
from knrun.pricing import ModelPrice
from knrun.store.types import Unit, UnitFailure, UnitResult
from knrun.xai import ChatReply

# Failure reasons (the part of `kn_error` before the colon; `knrun status` groups by them).
INVALID_JSON = "invalid_json"
SCHEMA_MISMATCH = "schema_mismatch"
TRUNCATED = "truncated"
REFUSAL = "refusal"
PROMPT_TOO_LONG = "prompt_too_long"
BAD_REQUEST = "bad_request"
BAD_RESPONSE = "bad_response"  # a 2xx knrun cannot read: billed by an unknown amount
RETRIES_EXHAUSTED = "retries_exhausted"  # never reached xAI (or fast 5xx) after every retry
TIMEOUT = "timeout"  # sent, no reply in time: may have been billed
DROPPED = "dropped"  # sent, then the connection failed (or a slow 5xx): may have been billed
BATCH_ERROR = "batch_error"  # the Batch API returned an error for the request (not billed)
# The prompt alone is over the account's tokens-per-minute limit: xAI could never take it, so
# it was not sent (not billed).
TOO_LARGE = "too_large_for_rate_limit"


@dataclass(frozen=True)
class Attempt:
    """Who is asking, for which request: stamped on every outcome of one request."""

    run_id: str
    owner: str
    attempt_id: str
    request_hash: str


@dataclass(frozen=True)
class Judged:
    outcome: UnitResult | UnitFailure
    input_tokens: int = 0  # from the reply's usage; 0 when there was no reply
    output_tokens: int = 0


def judge(
    reply: ChatReply,
    unit: Unit,
    job: JobSpec,
    price: ModelPrice,
    attempt: Attempt,
    latency_ms: int | None = None,
) -> Judged:
    usage = reply.usage
    tracked = price.cost_ticks(usage)
    billed = usage.billed_ticks  # None: the reply carried no bill, and tracked does not stand in
    parsed = _parse(reply, job)
    outcome: UnitResult | UnitFailure
    if isinstance(parsed, tuple):
        reason, detail = parsed
        outcome = replace(
            failure(unit, reason, detail, attempt, billed_ticks=billed, tracked_ticks=tracked),
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.output_tokens,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            latency_ms=latency_ms,
        )
    else:
        values = {
            job.output_column(field): field.to_column_value(getattr(parsed, field.name))
            for field in job.outputs
        }
        outcome = UnitResult(
            unit_id=unit.id,
            values=values,
            model=reply.model,
            cost_ticks=tracked if billed is None else billed,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.output_tokens,
            processed_at=utc_now(),
            run_id=attempt.run_id,
            attempt_id=attempt.attempt_id,
            billed_ticks=billed,
            tracked_ticks=tracked,
            cached_tokens=usage.cached_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            latency_ms=latency_ms,
        )
    return Judged(outcome, usage.prompt_tokens, usage.output_tokens)


def failure(
    unit: Unit,
    reason: str,
    detail: str,
    attempt: Attempt,
    *,
    billed_ticks: int | None = None,
    tracked_ticks: int = 0,
    possible_ticks: int = 0,
    expected_ticks: int = 0,
) -> UnitFailure:
    return UnitFailure(
        unit_id=unit.id,
        reason=reason,
        detail=detail[:500],
        processed_at=utc_now(),
        run_id=attempt.run_id,
        owner=attempt.owner,
        attempt_id=attempt.attempt_id,
        billed_ticks=billed_ticks,
        tracked_ticks=tracked_ticks,
        possible_ticks=possible_ticks,
        expected_ticks=expected_ticks,
        request_hash=attempt.request_hash,
    )


def _parse(reply: ChatReply, job: JobSpec) -> BaseModel | tuple[str, str]:
    """The validated reply, or (reason, detail) saying why it is not usable."""
    if reply.finish_reason == "length":  # first: a reasoning model can stop with no content
        return TRUNCATED, f"output stopped at max_output_tokens ({job.max_output_tokens})"
    if reply.refusal or reply.content is None:
        return REFUSAL, reply.refusal or "the reply had no content"
    try:
        return job.output_model.model_validate_json(reply.content)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return INVALID_JSON, first["msg"]
        where = ".".join(str(part) for part in first["loc"]) or "(reply)"
        return SCHEMA_MISMATCH, f"{where}: {first['msg']}"
