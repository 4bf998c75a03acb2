"""Pricing: money in ticks, and a usage priced exactly the way xAI bills it."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import EXAMPLE_PRICING
from knrun.errors import ConfigError
from knrun.pricing import (
    ModelPrice,
    Usage,
    format_usd,
    load_pricing,
    ticks_to_usd,
    usd_per_m_from_live,
    usd_to_ticks,
)


@pytest.fixture
def grok() -> ModelPrice:
    return load_pricing(EXAMPLE_PRICING).price_for("grok-4.3")


def test_worked_example_with_cached_and_reasoning_tokens(grok: ModelPrice) -> None:
    # Worked by hand. Prices $1.25 / $0.20 / $2.50 per 1M = 12,500 / 2,000 / 25,000 ticks/token.
    # prompt 2,150 tokens of which 1,024 cached; 1,100 visible completion; 1,800 reasoning.
    #   uncached input 1,126 x 12,500 = 14,075,000
    #   cached input   1,024 x  2,000 =  2,048,000
    #   output (1,100 + 1,800) x 25,000 = 72,500,000
    #   total                         = 88,623,000 ticks = $0.0088623
    usage = Usage(
        prompt_tokens=2150, completion_tokens=1100, cached_tokens=1024, reasoning_tokens=1800
    )
    assert usage.output_tokens == 2900
    assert grok.cost_ticks(usage) == 88_623_000
    assert ticks_to_usd(88_623_000) == Decimal("0.0088623")


def test_forgetting_reasoning_tokens_would_undercount(grok: ModelPrice) -> None:
    with_reasoning = Usage(prompt_tokens=500, completion_tokens=100, reasoning_tokens=900)
    without = Usage(prompt_tokens=500, completion_tokens=100)
    assert grok.cost_ticks(with_reasoning) == 500 * 12_500 + 1000 * 25_000 == 31_250_000
    assert grok.cost_ticks(without) == 8_750_000  # 3.6x less


def test_a_long_prompt_puts_every_token_at_the_long_context_rate(grok: ModelPrice) -> None:
    # grok-4.3 from 200,000 prompt tokens: $2.50 / $0.40 / $5.00 per 1M, for all the tokens.
    assert grok.long_context_threshold == 200_000
    short = Usage(prompt_tokens=199_999, completion_tokens=1000)
    long = Usage(prompt_tokens=200_000, completion_tokens=1000, cached_tokens=100_000)
    assert grok.cost_ticks(short) == 199_999 * 12_500 + 1000 * 25_000
    assert grok.cost_ticks(long) == 100_000 * 25_000 + 100_000 * 4_000 + 1000 * 50_000
    assert grok.estimate_ticks(250_000, 1000, per_request=250_000) == (
        250_000 * 25_000 + 1000 * 50_000
    )


def test_estimate_standard_and_batch(grok: ModelPrice) -> None:
    # 15,119 units x (2,000 in + 2,900 out): in 30,238,000 x 12,500; out 43,845,100 x 25,000.
    standard = grok.estimate_ticks(15_119 * 2000, 15_119 * 2900)
    assert standard == 30_238_000 * 12_500 + 43_845_100 * 25_000
    assert format_usd(standard, 2) == "$147.41"
    # grok-4.3's batch discount in late 2026 is 20%, not the 50% peers assume.
    assert grok.estimate_ticks(15_119 * 2000, 15_119 * 2900, batch=True) == standard * 4 // 5


def test_sub_tick_prices_round_once_per_request_half_even() -> None:
    price = ModelPrice(
        "m", Decimal("0.00005"), Decimal(0), Decimal(0), None, None, "s", date(2026, 1, 1)
    )
    assert price.ticks_per_token("input") == Decimal("0.5")
    assert price.cost_ticks(Usage(prompt_tokens=3, completion_tokens=0)) == 2  # 1.5 -> 2
    assert price.cost_ticks(Usage(prompt_tokens=5, completion_tokens=0)) == 2  # 2.5 -> 2


def test_live_price_units_are_ticks_per_token() -> None:
    # The live list gives USD cents per 100M tokens: 2,000 is $0.20 per 1M.
    assert usd_per_m_from_live(2000) == Decimal("0.2")
    assert usd_per_m_from_live(150_000) == Decimal(15)
    assert usd_to_ticks(Decimal("0.2")) == 2_000_000_000


def test_format_usd() -> None:
    assert format_usd(17_264_000) == "$0.0017"
    assert format_usd(250_000_000_000, 2) == "$25.00"
    assert format_usd(-12_500_000_000, 2) == "-$1.25"


def test_prices_are_read_as_exact_decimals() -> None:
    table = load_pricing(EXAMPLE_PRICING)
    assert table.models["grok-4.3"].input == Decimal("1.25")
    # a TOML date, not a string; the shipped file was verified on the release date (a
    # `pricing sync` only moves it on)
    assert table.models["grok-4.3"].verified_at >= date(2026, 12, 4)
    assert {"grok-3-fast", "grok-4-1-fast-reasoning"} <= table.retired


def test_retired_and_unknown_models_are_refused() -> None:
    table = load_pricing(EXAMPLE_PRICING)
    with pytest.raises(ConfigError, match="retired"):
        table.price_for("grok-3-fast")
    with pytest.raises(ConfigError, match="not priced"):
        table.price_for("grok-9")


def test_fingerprint_follows_prices_not_dates(grok: ModelPrice) -> None:
    from dataclasses import replace

    assert replace(grok, verified_at=date(2026, 11, 1)).fingerprint() == grok.fingerprint()
    assert replace(grok, output=Decimal("2.51")).fingerprint() != grok.fingerprint()
    assert replace(grok, output_long=Decimal("5.01")).fingerprint() != grok.fingerprint()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.m]\ninput = -1\n", "models.m.input"),
        ("[models.m]\ninput = 1\n", "models.m.cached_input: Field required"),
        ("models = 3\n", "models"),
        ("[models.m\n", "not valid TOML"),
        (
            '[models.m]\ninput = 1\ncached_input = 1\noutput = 1\nsource = "s"\n'
            "verified_at = 2026-11-01\nlong_context_threshold = 1000\n",
            "long_context_threshold needs input_long",
        ),
    ],
)
def test_bad_pricing_files_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "pricing.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_pricing(path)
