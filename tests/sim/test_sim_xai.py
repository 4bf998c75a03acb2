"""The xAI simulator: public shapes (the openai SDK reads them), faults, credit and billing lag."""

from __future__ import annotations

import asyncio
import contextlib
import json
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from conftest import FakeClock
from knrun.errors import ConfigError
from knrun.sim.scenario import Scenario, load_scenario
from knrun.sim.xai import XaiSimulator

pytestmark = pytest.mark.anyio
SCHEMA = {
    "type": "object",
    "properties": {"overview": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["overview", "score"],
    "additionalProperties": False,
}


@pytest.fixture
def sim(clock: FakeClock) -> XaiSimulator:
    return XaiSimulator(Scenario(latency={"median_s": 0}), clock=clock, sleep=clock.sleep)


def sdk(sim: XaiSimulator) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=sim.transport())
    return openai.AsyncOpenAI(
        api_key=sim.scenario.api_key, base_url="http://xai.sim/v1", http_client=http, max_retries=0
    )


async def test_the_openai_sdk_reads_a_chat_completion(sim) -> None:
    client = sdk(sim)
    completion = await client.chat.completions.create(
        model="grok-4.3",
        messages=[{"role": "system", "content": "notes"}, {"role": "user", "content": "unit"}],
        max_completion_tokens=4000,
        response_format={"type": "json_schema", "json_schema": {"name": "kn", "schema": SCHEMA}},
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert set(json.loads(choice.message.content or "{}")) == {"overview", "score"}
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens + (
        usage.completion_tokens_details.reasoning_tokens or 0
    )
    assert (usage.model_extra or {})["cost_in_usd_ticks"] > 0
    await client.close()


async def test_the_openai_sdk_lists_models_and_reads_errors(sim) -> None:
    client = sdk(sim)
    listed = [model.id async for model in client.models.list()]
    assert "grok-4.3" in listed and "grok-3-fast" not in listed
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="grok-2", messages=[{"role": "user", "content": "x"}]
        )
    sim.force("rate_limited")
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(
            model="grok-4.3-latest", messages=[{"role": "user", "content": "x"}]
        )
    await client.close()


async def test_forced_outcomes_shape_the_reply(sim) -> None:
    async with httpx.AsyncClient(
        transport=sim.transport(),
        base_url="http://xai.sim/v1",
        headers={"authorization": f"Bearer {sim.scenario.api_key}"},
    ) as http:
        body = {
            "model": "grok-4.3",
            "messages": [{"role": "user", "content": "u"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": SCHEMA},
            },
        }
        for outcome in ("malformed_json", "truncated", "refusal"):
            sim.force(outcome)
        malformed, truncated, refusal = [
            (await http.post("/chat/completions", json=body)).json() for _ in range(3)
        ]
        with pytest.raises(json.JSONDecodeError):
            json.loads(malformed["choices"][0]["message"]["content"])
        assert truncated["choices"][0]["finish_reason"] == "length"
        assert refusal["choices"][0]["message"]["content"] is None
        assert refusal["choices"][0]["message"]["refusal"]
        sim.force("server_error")
        assert (await http.post("/chat/completions", json=body)).status_code == 503
    assert sim.stats.paid_requests == 3  # refused requests are not billed


async def test_random_fault_rates_are_honoured_roughly(clock: FakeClock) -> None:
    scenario = Scenario(
        latency={"median_s": 0}, faults={"malformed_json": 0.2}, balance_usd=Decimal(1000)
    )
    sim = XaiSimulator(scenario, clock=clock, sleep=clock.sleep)
    async with httpx.AsyncClient(
        transport=sim.transport(),
        base_url="http://xai.sim/v1",
        headers={"authorization": f"Bearer {scenario.api_key}"},
    ) as http:
        body = {"model": "grok-4.3", "messages": [{"role": "user", "content": "u"}]}
        for _ in range(500):
            await http.post("/chat/completions", json=body)
    assert 70 <= sim.stats.outcomes["malformed_json"] <= 130


async def test_credit_exhausted_is_the_403_of_later_2026(clock: FakeClock) -> None:
    sim = XaiSimulator(Scenario(balance_usd=Decimal("0.01")), clock=clock)
    sim.balance_ticks = 0
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://xai.sim/v1") as http:
        reply = await http.post(
            "/chat/completions",
            headers={"authorization": f"Bearer {sim.scenario.api_key}"},
            json={"model": "grok-4.3-latest", "messages": []},
        )
    assert reply.status_code == 403
    assert "used all available credits" in reply.json()["error"]


async def test_a_team_that_never_bought_credit_hears_about_licences(clock: FakeClock) -> None:
    sim = XaiSimulator(Scenario(balance_usd=Decimal(0)), clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://xai.sim/v1") as http:
        reply = await http.post(
            "/chat/completions",
            headers={"authorization": f"Bearer {sim.scenario.api_key}"},
            json={"model": "grok-4.3", "messages": []},
        )
    assert reply.status_code == 403 and "any credits or licenses" in reply.json()["error"]


def api(sim: XaiSimulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=sim.transport(),
        base_url="http://xai.sim/v1",
        headers={"authorization": f"Bearer {sim.scenario.api_key}"},
    )


BODY = {"model": "grok-4.3", "messages": [{"role": "user", "content": "u" * 400}]}


async def test_a_request_is_billed_when_accepted_even_if_the_client_gives_up(
    clock: FakeClock,
) -> None:
    """The public record: xAI bills what it computes, whether or not the reply is read."""
    sim = XaiSimulator(
        Scenario(latency={"median_s": 30, "sigma": 0}), clock=clock, sleep=clock.sleep
    )
    async with api(sim) as http:
        asking = asyncio.ensure_future(http.post("/chat/completions", json=BODY))
        while sim.stats.in_flight == 0:  # noqa: ASYNC110 - watching a plain counter
            await asyncio.sleep(0)
        assert sim.stats.billed_ticks > 0  # charged before a single token was sent back
        asking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asking
    assert sim.stats.abandoned_requests == 1
    assert sim.stats.abandoned_ticks == sim.stats.billed_ticks > 0
    assert sim.stats.delivered_ticks == 0


async def test_rate_limits_are_rolling_windows_with_the_real_texts(clock: FakeClock) -> None:
    scenario = Scenario(
        latency={"median_s": 0},
        limits={"requests_per_s": 3, "tokens_per_min": 12_000},
        balance_usd=Decimal(100),
    )
    sim = XaiSimulator(scenario, clock=clock, sleep=clock.sleep)
    async with api(sim) as http:
        replies = [await http.post("/chat/completions", json=BODY) for _ in range(4)]
        assert [r.status_code for r in replies] == [200, 200, 200, 429]
        refused = replies[3]
        assert refused.json()["error"].endswith("Requests per Second (actual/limit): 4/3.")
        assert "retry-after" not in refused.headers  # none has been seen live
        assert not any(name.startswith("x-ratelimit") for name in refused.headers)
        assert replies[0].headers["x-ratelimit-limit-requests"] == "3"
        assert replies[2].headers["x-ratelimit-remaining-requests"] == "0"
        clock.advance(1.0)  # the second has rolled on
        assert (await http.post("/chat/completions", json=BODY)).status_code == 200
        # Tokens: each request spends about 3,000 (prompt + output + reasoning) of 12,000/min.
        statuses = []
        for _ in range(4):
            clock.advance(1.0)
            statuses.append((await http.post("/chat/completions", json=BODY)).status_code)
        assert 429 in statuses
        last = await http.post("/chat/completions", json=BODY)
        assert "Tokens per Minute (actual/limit): " in last.json()["error"]
        clock.advance(60.0)
        assert (await http.post("/chat/completions", json=BODY)).status_code == 200


async def test_a_reply_can_lack_its_bill(clock: FakeClock) -> None:
    sim = XaiSimulator(Scenario(latency={"median_s": 0}), clock=clock, sleep=clock.sleep)
    sim.force("missing_cost")
    async with api(sim) as http:
        usage = (await http.post("/chat/completions", json=BODY)).json()["usage"]
    assert "cost_in_usd_ticks" not in usage and usage["total_tokens"] > 0
    assert sim.stats.billed_ticks > 0  # billed all the same


async def test_some_refusals_are_plain_text(clock: FakeClock) -> None:
    sim = XaiSimulator(
        Scenario(latency={"median_s": 0}, unknown_model_status=400), clock=clock, sleep=clock.sleep
    )
    async with api(sim) as http:
        unknown = await http.post("/chat/completions", json=BODY | {"model": "grok-9"})
        broken = await http.post("/chat/completions", content=b"{not json")
        missing = await http.post("/chat/completions", json={"model": "grok-4.3"})
    assert (unknown.status_code, unknown.text) == (400, "Model not found: grok-9")
    assert broken.status_code == 422 and broken.headers["content-type"] == "text/plain"
    assert missing.status_code == 422 and "missing field `messages`" in missing.text


def test_scenarios_load_from_toml_with_exact_prices(tmp_path: Path) -> None:
    path = tmp_path / "scenario.toml"
    path.write_text(
        'balance_usd = 12.5\n[[models]]\nid = "m"\ninput = 0.2\ncached_input = 0.05\n'
        "output = 0.5\n[latency]\ntime_scale = 0.01\n"
    )
    scenario = load_scenario(path)
    assert (
        scenario.balance_usd == Decimal("12.5")
        and scenario.models[0].ticks_per_token("input") == 2000
    )
    path.write_text("[latency]\ntime_scale = 0\n")
    with pytest.raises(ConfigError, match=r"latency\.time_scale"):
        load_scenario(path)
