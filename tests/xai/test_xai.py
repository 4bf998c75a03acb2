"""The xAI client: error classes from the real message strings, retries, parsing, secrets."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
import respx
from pydantic import SecretStr

from conftest import EXAMPLE_PRICING, FakeClock
from knrun.errors import ExitCode
from knrun.pricing import load_pricing
from knrun.sim.scenario import Scenario
from knrun.sim.xai import XaiSimulator
from knrun.xai import (
    AuthFailed,
    BadRequest,
    BadResponse,
    CreditExhausted,
    Dropped,
    ModelUnavailable,
    NotSent,
    PossiblyBilled,
    PromptTooLong,
    RateLimited,
    ServerError,
    Timeout,
    XaiClient,
    classify,
    find_live,
)

pytestmark = pytest.mark.anyio

API = "https://api.x.ai/v1"
TEAM = "6f3c0b52-team"
SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "string"}},
    "required": ["a"],
    "additionalProperties": False,
}


def xai_response(
    status: int, message: str, code: str = "x", headers: dict | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        json={"code": code, "error": message},
        headers=headers,
        request=httpx.Request("POST", f"{API}/chat/completions"),
    )


CREDIT = (
    f"Your team {TEAM} has either used all available credits or reached its monthly "
    "spending limit. To continue making API requests, please purchase more credits or "
    "raise your spending limit."
)
RATE = (
    f"Too many requests for team {TEAM} and model grok-4.3. "
    "Requests per Second (actual/limit): 31/30."
)


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (429, RATE, RateLimited),
        (
            429,
            f"Too many tokens for team {TEAM} and model grok-4. Tokens per Minute: 9/8.",
            RateLimited,
        ),
        (429, "The model is currently at capacity due to high demand.", RateLimited),
        (429, CREDIT, CreditExhausted),
        (403, CREDIT, CreditExhausted),
        (402, "Payment required", CreditExhausted),
        # Not xAI's documented words for an empty account: each keeps its own class.
        (403, f"Team {TEAM}: billing is suspended until the invoice is paid.", AuthFailed),
        (400, "Your licence does not cover this model.", BadRequest),
        (
            403,
            f"Your newly created team {TEAM} doesn't have any credits or licenses yet. "
            "You can purchase credits on https://console.x.ai.",
            CreditExhausted,
        ),
        (
            404,
            f"The model grok-3-fast does not exist or your team {TEAM} does not have access to it.",
            ModelUnavailable,
        ),
        (
            400,
            "Incorrect API key provided: xa***ey. You can obtain an API key from "
            "https://console.x.ai.",
            AuthFailed,
        ),
        (401, "Missing bearer authentication in header", AuthFailed),
        (403, "Your team is blocked.", AuthFailed),
        (
            400,
            "This model's maximum prompt length is 131072 but the request contains 140011 tokens.",
            PromptTooLong,
        ),
        (400, "Model grok-4 does not support parameter presencePenalty.", BadRequest),
        (422, "Failed to deserialize the JSON body into the target type", BadRequest),
        (500, "Internal server error", ServerError),
        (503, "The service is temporarily unavailable.", ServerError),
        (408, "Request timeout", Timeout),
    ],
)
def test_errors_are_classified_from_the_real_messages(status, message, expected) -> None:
    assert type(classify(xai_response(status, message))) is expected


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (
            400,
            "Invalid JSON schema: property 'credit_points' has unsupported type 'decimal'.",
            BadRequest,
        ),
        (400, "Argument not supported: billing_reference", BadRequest),
        (422, "Failed to deserialize the JSON body: unknown field `payment_terms`", BadRequest),
        (400, "The licence text in the prompt exceeds the allowed length.", BadRequest),
        (
            429,
            f"Too many requests for team {TEAM} and model grok-4.3 (credit tier 0). "
            "Requests per Second (actual/limit): 31/30.",
            RateLimited,
        ),
        (500, "Internal error while checking credits. Please retry.", ServerError),
    ],
)
def test_credit_words_in_other_errors_are_not_credit_exhaustion(status, message, expected) -> None:
    """Only xAI's own phrases for an empty account stop a run as credit exhausted; a schema
    property, a parameter or a prompt that mentions credit, billing, payment or a licence
    keeps its own class (each of these once stopped a run with exit 3)."""
    assert type(classify(xai_response(status, message))) is expected


def test_a_credit_exhausted_429_is_never_a_rate_limit() -> None:
    error = classify(xai_response(429, CREDIT, headers={"retry-after": "5"}))
    assert isinstance(error, CreditExhausted) and not isinstance(error, RateLimited)
    assert error.exit_code == ExitCode.BREAKER


def test_rate_limits_carry_retry_after_when_sent_and_the_window_they_name() -> None:
    limited = classify(xai_response(429, RATE, headers={"retry-after": "3"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 3
    assert limited.window == "second"
    tokens = classify(
        xai_response(
            429,
            f"Too many tokens for team {TEAM} and model grok-4.3. "
            "Tokens per Minute (actual/limit): 10000512/10000000.",
        )
    )
    assert isinstance(tokens, RateLimited) and tokens.window == "minute"
    assert tokens.retry_after is None


def test_a_slow_5xx_may_have_been_billed_and_a_fast_one_was_not() -> None:
    assert type(classify(xai_response(500, "Internal error"), elapsed_s=0.5)) is ServerError
    slow = classify(xai_response(504, "Gateway timeout"), elapsed_s=95)
    assert isinstance(slow, PossiblyBilled) and "may have been billed" in str(slow)


def test_plain_text_error_bodies_are_read_as_xai_sends_them() -> None:
    request = httpx.Request("POST", f"{API}/chat/completions")
    unknown = httpx.Response(400, text="Model not found: grok-9", request=request)
    assert type(classify(unknown)) is ModelUnavailable and "grok-9" in str(classify(unknown))
    body = "Failed to deserialize the JSON body into the target type: missing field `messages`"
    assert type(classify(httpx.Response(422, text=body, request=request))) is BadRequest


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (502, "<html><body><h1>502 Bad Gateway</h1>cloudflare</body></html>", ServerError),
        (403, "<html><title>Attention Required! | Cloudflare</title></html>", AuthFailed),
        (429, "slow down", RateLimited),
        (404, "", BadRequest),
        (200, "{not json", BadRequest),
    ],
)
def test_non_json_bodies_are_classified_without_crashing(status, body, expected) -> None:
    response = httpx.Response(status, text=body, request=httpx.Request("GET", API))
    error = classify(response)
    assert type(error) is expected and "<" not in str(error)


def test_openai_shaped_error_bodies_from_proxies_are_read() -> None:
    response = httpx.Response(
        429,
        json={"error": {"message": RATE, "type": "rate_limit"}},
        request=httpx.Request("GET", API),
    )
    assert isinstance(classify(response), RateLimited)


def test_keys_are_redacted_from_error_messages() -> None:
    error = classify(
        xai_response(400, "Incorrect API key provided: xai-AbCdEf123456789 (Bearer xai-Zz9)"),
        secrets=["xai-AbCdEf123456789"],
    )
    assert "AbCdEf" not in str(error) and "Zz9" not in str(error)


# -- the client against respx ---------------------------------------------------------------------


def chat_body(**usage_overrides) -> dict:
    usage = {
        "prompt_tokens": 2150,
        "completion_tokens": 1100,
        "total_tokens": 5050,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 1800},
        "cost_in_usd_ticks": 17_264_000,
    } | usage_overrides
    return {
        "id": "x",
        "model": "grok-4.3",
        "usage": usage,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": '{"a": "b"}'},
            }
        ],
    }


def client(clock: FakeClock, **overrides) -> XaiClient:
    """Through httpx's own transport, which respx intercepts (chat's lean connection is tested
    against a real server in test_wire.py)."""
    settings = {
        "api_key": SecretStr("xai-test-key-0123456789"),
        "base_url": API,
        "sleep": clock.sleep,
        "transport": httpx.AsyncHTTPTransport(),
    }
    return XaiClient(**(settings | overrides))


async def call_chat(
    xai: XaiClient,
    conv_id: str | None = "conv-1",
    model: str = "grok-4.3",
    effort: str | None = None,
):
    return await xai.chat(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.3,
        max_completion_tokens=8000,
        response_schema=SCHEMA,
        schema_name="kn_output",
        reasoning_effort=effort,
        conv_id=conv_id,
    )


@respx.mock
async def test_chat_sends_schema_cap_and_conversation_id_and_reads_usage(clock) -> None:
    route = respx.post(f"{API}/chat/completions").respond(200, json=chat_body())
    xai = client(clock)
    reply = await call_chat(xai)
    sent = json.loads(route.calls.last.request.content)
    assert sent["max_completion_tokens"] == 8000 and "max_tokens" not in sent
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "kn_output", "schema": SCHEMA},
    }
    assert "service_tier" not in sent and "stop" not in sent
    assert "reasoning_effort" not in sent  # sent only when the job sets it
    assert route.calls.last.request.headers["x-grok-conv-id"] == "conv-1"
    assert route.calls.last.request.headers["authorization"] == "Bearer xai-test-key-0123456789"
    assert reply.content == '{"a": "b"}' and reply.finish_reason == "stop"
    usage = reply.usage
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (2150, 1024, 1100)
    assert usage.reasoning_tokens == 1800 and usage.output_tokens == 5050 - 2150
    assert usage.billed_ticks == 17_264_000
    await xai.aclose()


@respx.mock
async def test_billed_output_is_total_minus_prompt_even_without_reasoning_details(clock) -> None:
    respx.post(f"{API}/chat/completions").respond(
        200, json=chat_body(completion_tokens_details=None)
    )
    xai = client(clock)
    assert (await call_chat(xai)).usage.output_tokens == 2900
    await xai.aclose()


@respx.mock
async def test_only_what_never_reached_xai_is_retried_a_bounded_number_of_times(clock) -> None:
    route = respx.post(f"{API}/chat/completions")
    route.side_effect = [
        httpx.Response(503, json={"code": "u", "error": "unavailable"}),
        httpx.ConnectError("refused"),
        httpx.Response(200, json=chat_body()),
    ]
    xai = client(clock)
    assert (await call_chat(xai)).usage.billed_ticks == 17_264_000
    assert route.call_count == 3
    route.side_effect = httpx.ConnectError("down")
    with pytest.raises(NotSent):
        await call_chat(xai)
    assert route.call_count == 3 + 3
    await xai.aclose()


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (httpx.ReadTimeout("slow"), Timeout),
        (httpx.RemoteProtocolError("peer closed connection"), Dropped),
        (httpx.ReadError("connection reset"), Dropped),
    ],
)
@respx.mock
async def test_a_request_that_was_sent_is_never_sent_again(clock, failure, expected) -> None:
    route = respx.post(f"{API}/chat/completions")
    route.side_effect = [failure, httpx.Response(200, json=chat_body())]
    xai = client(clock)
    with pytest.raises(expected) as raised:
        await call_chat(xai)
    assert isinstance(raised.value, PossiblyBilled)
    assert route.call_count == 1  # xAI may be computing (and billing) it still
    await xai.aclose()


@respx.mock
async def test_reads_that_cost_nothing_are_retried_after_a_timeout(clock) -> None:
    route = respx.get(f"{API}/language-models")
    route.side_effect = [httpx.ReadTimeout("slow"), httpx.Response(200, json={"models": []})]
    xai = client(clock)
    assert await xai.language_models() == []
    assert route.call_count == 2
    await xai.aclose()


@respx.mock
async def test_reasoning_effort_is_sent_when_set_and_rate_headers_are_read(clock) -> None:
    headers = {
        "x-ratelimit-limit-requests": "30",
        "x-ratelimit-remaining-requests": "12",
        "x-ratelimit-limit-tokens": "10000000",
        "x-ratelimit-remaining-tokens": "9870000",
    }
    route = respx.post(f"{API}/chat/completions").respond(200, json=chat_body(), headers=headers)
    xai = client(clock)
    reply = await call_chat(xai, effort="medium")
    assert json.loads(route.calls.last.request.content)["reasoning_effort"] == "medium"
    assert reply.rate is not None and reply.rate.remaining_requests == 12
    assert reply.rate.limit_tokens == 10_000_000
    await xai.aclose()


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (429, RATE, RateLimited),
        (429, CREDIT, CreditExhausted),
        (400, "Incorrect API key provided: xa***ey", AuthFailed),
        (
            404,
            "The model x does not exist or your team t does not have access to it.",
            ModelUnavailable,
        ),
    ],
)
@respx.mock
async def test_rate_limits_credit_auth_and_model_errors_are_never_retried(
    clock, status, message, expected
) -> None:
    route = respx.post(f"{API}/chat/completions").respond(
        status, json={"code": "c", "error": message}
    )
    xai = client(clock)
    with pytest.raises(expected):
        await call_chat(xai)
    assert route.call_count == 1
    await xai.aclose()


@respx.mock
async def test_a_2xx_without_choices_is_a_bad_response_and_not_repeated(clock) -> None:
    route = respx.post(f"{API}/chat/completions").respond(200, json={"id": "x"})
    xai = client(clock)
    with pytest.raises(BadResponse):
        await call_chat(xai)
    assert route.call_count == 1
    await xai.aclose()


def test_the_key_never_appears_in_the_clients_repr(clock) -> None:
    xai = client(clock)
    assert "xai-test-key" not in repr(xai) and "xai-test-key" not in repr(vars(xai))


# -- the client against the simulator -------------------------------------------------------------


@pytest.fixture
def sim(clock: FakeClock) -> XaiSimulator:
    scenario = Scenario(latency={"median_s": 0}, billing_lag_s=10, balance_usd=Decimal("1.00"))
    return XaiSimulator(scenario, clock=clock, sleep=clock.sleep)


def sim_client(sim: XaiSimulator, clock: FakeClock, management: bool = True) -> XaiClient:
    return XaiClient(
        api_key=SecretStr(sim.scenario.api_key),
        base_url="http://xai.sim/v1",
        management_key=SecretStr(sim.scenario.management_key) if management else None,
        management_base_url="http://xai.sim",
        transport=sim.transport(),
        sleep=clock.sleep,
    )


async def test_live_models_convert_prices_and_hide_retired_models(sim, clock) -> None:
    xai = sim_client(sim, clock)
    models = await xai.language_models()
    current = find_live(models, "grok-4.3-latest")  # by alias
    assert current is not None and current.id == "grok-4.3"
    assert (current.input, current.cached_input, current.output) == (
        Decimal("1.25"),
        Decimal("0.2"),
        Decimal("2.5"),
    )
    assert current.long_context_threshold == 200_000 and current.output_long == Decimal(5)
    assert find_live(models, "grok-3-fast") is None  # still served, but off the list
    assert find_live(models, "grok-4-1-fast-reasoning") is None  # retired 2026-05-15
    await xai.aclose()


async def test_models_retired_in_may_2026_no_longer_answer(sim, clock) -> None:
    xai = sim_client(sim, clock)
    with pytest.raises(ModelUnavailable, match="does not exist"):
        await call_chat(xai, model="grok-4-1-fast-reasoning")
    assert sim.stats.billed_ticks == 0
    await xai.aclose()


async def test_grok_4_20_refuses_reasoning_effort_and_grok_4_3_takes_it(sim, clock) -> None:
    xai = sim_client(sim, clock)
    with pytest.raises(BadRequest, match="does not support parameter reasoningEffort"):
        await call_chat(xai, model="grok-4.20-0309-reasoning", effort="low")
    low = await call_chat(xai, effort="low")
    high = await call_chat(xai, effort="high")
    assert high.usage.reasoning_tokens > 2 * low.usage.reasoning_tokens
    await xai.aclose()


async def test_a_retired_model_still_answers_at_its_legacy_price(sim, clock) -> None:
    xai = sim_client(sim, clock)
    reply = await xai.chat(
        model="grok-3-fast",
        messages=[{"role": "user", "content": "x" * 400}],
        temperature=0,
        max_completion_tokens=100,
        response_schema=SCHEMA,
        schema_name="s",
    )
    assert reply.usage.billed_ticks == 100 * 30_000 + reply.usage.output_tokens * 45_000
    await xai.aclose()


async def test_team_and_prepaid_balance_with_billing_lag(sim, clock) -> None:
    xai = sim_client(sim, clock)
    team = (await xai.api_key_info()).team_id
    assert team == sim.scenario.team_id
    assert await xai.prepaid_balance_ticks(team) == 10**10  # $1.00
    reply = await call_chat(xai)
    assert await xai.prepaid_balance_ticks(team) == 10**10  # not yet on the ledger
    clock.advance(11)
    cost = reply.usage.billed_ticks
    assert (
        await xai.prepaid_balance_ticks(team)
        == 10**10 - (cost // 10**8 + (cost % 10**8 > 0)) * 10**8
    )
    await xai.aclose()


async def test_credit_runs_out_with_the_real_message(sim, clock) -> None:
    sim.balance_ticks = 1
    xai = sim_client(sim, clock)
    await call_chat(xai)  # admitted: the ledger still shows credit
    clock.advance(11)
    with pytest.raises(CreditExhausted, match="used all available credits"):
        await call_chat(xai)
    await xai.aclose()


async def test_balance_needs_the_management_key(sim, clock) -> None:
    xai = sim_client(sim, clock, management=False)
    with pytest.raises(AuthFailed, match="XAI_MANAGEMENT_KEY"):
        await xai.prepaid_balance_ticks("t")
    await xai.aclose()


@pytest.mark.parametrize("system_chars", [4000, 4 * 200_000])  # standard, then long context
async def test_pricing_and_the_simulator_bill_the_same_usage_to_the_tick(
    sim, clock, system_chars
) -> None:
    sim.balance_ticks = 10**12
    pricing = load_pricing(EXAMPLE_PRICING).price_for("grok-4.3")
    xai = sim_client(sim, clock)
    messages = [
        {"role": "system", "content": "s" * system_chars},
        {"role": "user", "content": "u" * 800},
    ]
    for _ in range(2):  # the second call hits the prompt cache through the conversation id
        reply = await xai.chat(
            model="grok-4.3",
            messages=messages,
            temperature=0.3,
            max_completion_tokens=8000,
            response_schema=SCHEMA,
            schema_name="s",
            conv_id="conv",
        )
    usage = reply.usage
    assert usage.cached_tokens == system_chars // 4 and usage.reasoning_tokens > 0
    assert pricing.is_long(usage.prompt_tokens) == (system_chars > 4000)
    assert pricing.cost_ticks(usage) == usage.billed_ticks
    await xai.aclose()


async def test_reasoning_models_reject_penalties_like_the_real_api(sim, clock) -> None:
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://xai.sim/v1") as http:
        reply = await http.post(
            "/chat/completions",
            headers={"authorization": f"Bearer {sim.scenario.api_key}"},
            json={
                "model": "grok-4.3",
                "presence_penalty": 0.5,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
    assert reply.status_code == 400
    assert reply.json()["error"] == "Model grok-4.3 does not support parameter presencePenalty."
