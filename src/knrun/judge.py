"""Turning one chat reply into a result to store, or a failure with a reason, and its cost."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ValidationError

from knrun.job import JobSpec
from knrun.pricing import ModelPrice
from knrun.store.types import Outcome, Unit, UnitFailure, UnitResult
from knrun.xai import ChatReply

# Failure reasons (the part of `kn_error` before the colon; `knrun status` groups by them).
INVALID_JSON = "invalid_json"
SCHEMA_MISMATCH = "schema_mismatch"
TRUNCATED = "truncated"
REFUSAL = "refusal"
PROMPT_TOO_LONG = "prompt_too_long"
BAD_REQUEST = "bad_request"
BAD_RESPONSE = "bad_response"
RETRIES_EXHAUSTED = "retries_exhausted"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Judged:
    outcome: Outcome
    tracked_ticks: int  # pricing.toml x usage
    billed_ticks: int  # cost_in_usd_ticks (tracked, when the provider sent none)
    input_tokens: int = 0  # from the reply's usage; 0 when there was no reply
    output_tokens: int = 0


def judge(
    reply: ChatReply, unit: Unit, job: JobSpec, price: ModelPrice, *, run_id: str, owner: str
) -> Judged:
    usage = reply.usage
    tracked = price.cost_ticks(usage)
    billed = usage.billed_ticks if usage.billed_ticks is not None else tracked
    parsed = _parse(reply, job)
    if isinstance(parsed, tuple):
        reason, detail = parsed
        outcome: Outcome = failure(unit, reason, detail, run_id=run_id, owner=owner)
    else:
        values = {
            job.output_column(field): field.to_column_value(getattr(parsed, field.name))
            for field in job.outputs
        }
        outcome = UnitResult(
            unit_id=unit.id,
            values=values,
            model=reply.model,
            cost_ticks=billed,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.output_tokens,
            processed_at=utc_now(),
            run_id=run_id,
        )
    return Judged(outcome, tracked, billed, usage.prompt_tokens, usage.output_tokens)


def failure(unit: Unit, reason: str, detail: str, *, run_id: str, owner: str) -> UnitFailure:
    return UnitFailure(
        unit_id=unit.id,
        reason=reason,
        detail=detail[:500],
        processed_at=utc_now(),
        run_id=run_id,
        owner=owner,
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
