"""The xAI simulator: public shapes (the openai SDK reads them), faults, credit and billing lag."""

from __future__ import annotations

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
        model="grok-4-1-fast-reasoning",
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
    assert "grok-4-1-fast-reasoning" in listed and "grok-3-fast" not in listed
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="grok-2", messages=[{"role": "user", "content": "x"}]
        )
    sim.force("rate_limited")
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(
            model="grok-4-1-fast", messages=[{"role": "user", "content": "x"}]
        )
    await client.close()


async def test_forced_outcomes_shape_the_reply(sim) -> None:
    async with httpx.AsyncClient(
        transport=sim.transport(),
        base_url="http://xai.sim/v1",
        headers={"authorization": f"Bearer {sim.scenario.api_key}"},
    ) as http:
        body = {
            "model": "grok-4-1-fast-reasoning",
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
        body = {"model": "grok-4-1-fast-reasoning", "messages": [{"role": "user", "content": "u"}]}
        for _ in range(500):
            await http.post("/chat/completions", json=body)
    assert 70 <= sim.stats.outcomes["malformed_json"] <= 130


async def test_credit_exhausted_can_be_the_403_of_later_2026(clock: FakeClock) -> None:
    sim = XaiSimulator(Scenario(credit_exhausted_status=403, balance_usd=Decimal(0)), clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://xai.sim/v1") as http:
        reply = await http.post(
            "/chat/completions",
            headers={"authorization": f"Bearer {sim.scenario.api_key}"},
            json={"model": "grok-4-1-fast", "messages": []},
        )
    assert reply.status_code == 403
    assert "used all available credits" in reply.json()["error"]


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
