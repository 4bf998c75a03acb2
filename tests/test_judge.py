"""Judging a reply: a result with its columns and cost, or a failure with its reason."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLE_PRICING
from knrun import judge
from knrun.job import JobSpec
from knrun.pricing import Usage, load_pricing
from knrun.store.types import Unit, UnitFailure, UnitResult
from knrun.xai import ChatReply

REPLY = {
    "overview": "o",
    "key_knowledge": "k",
    "workplace_application": "w",
    "worked_example": "e",
    "common_mistakes": "c",
    "self_check": "s",
}
USAGE = Usage(
    prompt_tokens=2000,
    completion_tokens=900,
    cached_tokens=0,
    reasoning_tokens=2000,
    billed_ticks=18_500_000,
)


def reply(
    content: str | None, finish: str = "stop", refusal: str | None = None, usage: Usage = USAGE
) -> ChatReply:
    return ChatReply(content, finish, refusal, usage, "grok-4-1-fast-reasoning")


def run(job: JobSpec, chat: ChatReply) -> judge.Judged:
    price = load_pricing(EXAMPLE_PRICING).price_for(job.model)
    return judge.judge(chat, Unit(3, {}), job, price, run_id="r", owner="me")


def test_a_good_reply_becomes_a_result_with_columns_tokens_and_billed_cost(job: JobSpec) -> None:
    judged = run(job, reply(json.dumps(REPLY)))
    outcome = judged.outcome
    assert isinstance(outcome, UnitResult)
    assert outcome.values["kn_overview"] == "o" and len(outcome.values) == 6
    assert (outcome.input_tokens, outcome.output_tokens) == (2000, 2900)
    assert outcome.cost_ticks == judged.billed_ticks == 18_500_000
    assert judged.tracked_ticks == 2000 * 2000 + 2900 * 5000  # 18,500,000: pricing agrees


def test_tracked_cost_stands_in_when_the_provider_sends_no_bill(job: JobSpec) -> None:
    unbilled = Usage(prompt_tokens=10, completion_tokens=10)
    judged = run(job, reply(json.dumps(REPLY), usage=unbilled))
    assert judged.billed_ticks == judged.tracked_ticks == 10 * 2000 + 10 * 5000


@pytest.mark.parametrize(
    ("chat", "reason", "detail"),
    [
        (reply('{"overview": "o"'), judge.INVALID_JSON, "Invalid JSON"),
        (reply(json.dumps({**REPLY, "extra": 1})), judge.SCHEMA_MISMATCH, "extra: Extra inputs"),
        (
            reply(json.dumps({**REPLY, "overview": ""})),
            judge.SCHEMA_MISMATCH,
            "overview: String should",
        ),
        (
            reply(json.dumps(REPLY)[:50], finish="length"),
            judge.TRUNCATED,
            "max_output_tokens (8000)",
        ),
        (reply(None, refusal="I can't help with that."), judge.REFUSAL, "I can't help"),
    ],
)
def test_unusable_replies_become_failures_that_still_count_their_cost(
    job, chat, reason, detail
) -> None:
    judged = run(job, chat)
    outcome = judged.outcome
    assert isinstance(outcome, UnitFailure)
    assert outcome.reason == reason and detail in outcome.detail
    assert outcome.owner == "me" and judged.billed_ticks == 18_500_000


def test_a_reasoning_model_stopped_by_the_token_cap_with_no_content_is_truncated(
    job: JobSpec,
) -> None:
    outcome = run(job, reply(None, finish="length")).outcome
    assert isinstance(outcome, UnitFailure) and outcome.reason == judge.TRUNCATED
