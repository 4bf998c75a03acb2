"""Judging a reply: a result with its columns and cost, or a failure with its reason."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLE_PRICING
from knrun.job import JobSpec
from knrun.pricing import Usage, load_pricing
from knrun.run import judge
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
    billed_ticks=97_500_000,
)


def reply(
    content: str | None, finish: str = "stop", refusal: str | None = None, usage: Usage = USAGE
) -> ChatReply:
    return ChatReply(content, finish, refusal, usage, "grok-4.3")


ATTEMPT = judge.Attempt(run_id="r", owner="me", attempt_id="r:1", request_hash="h")


def run(job: JobSpec, chat: ChatReply) -> judge.Judged:
    price = load_pricing(EXAMPLE_PRICING).price_for(job.model)
    return judge.judge(chat, Unit(3, {}), job, price, ATTEMPT)


def test_a_good_reply_becomes_a_result_with_columns_tokens_and_billed_cost(job: JobSpec) -> None:
    judged = run(job, reply(json.dumps(REPLY)))
    outcome = judged.outcome
    assert isinstance(outcome, UnitResult)
    assert outcome.values["kn_overview"] == "o" and len(outcome.values) == 6
    assert (outcome.input_tokens, outcome.output_tokens) == (2000, 2900)
    assert outcome.cost_ticks == outcome.billed_ticks == 97_500_000
    assert outcome.tracked_ticks == 2000 * 12_500 + 2900 * 25_000  # 97,500,000: pricing agrees
    assert outcome.attempt_id == "r:1" and outcome.charged


def test_a_reply_without_a_bill_is_not_billed_at_the_tracked_price(job: JobSpec) -> None:
    """Tracked cost never stands in for billed: the drift check would compare pricing.toml with
    itself. The unit's own cost column still gets the best figure there is."""
    unbilled = Usage(prompt_tokens=10, completion_tokens=10)
    outcome = run(job, reply(json.dumps(REPLY), usage=unbilled)).outcome
    assert isinstance(outcome, UnitResult)
    assert outcome.billed_ticks is None and outcome.charged
    assert outcome.tracked_ticks == outcome.cost_ticks == 10 * 12_500 + 10 * 25_000


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
    assert outcome.owner == "me" and outcome.billed_ticks == 97_500_000
    assert outcome.request_hash == "h" and outcome.attempt_id == "r:1" and outcome.charged


def test_a_reasoning_model_stopped_by_the_token_cap_with_no_content_is_truncated(
    job: JobSpec,
) -> None:
    outcome = run(job, reply(None, finish="length")).outcome
    assert isinstance(outcome, UnitFailure) and outcome.reason == judge.TRUNCATED
