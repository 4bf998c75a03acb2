"""`knrun pricing check` and `sync` against the simulator served on a loopback port."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import set_price
from knrun.cli import app
from knrun.pricing import load_pricing
from knrun.sim.xai import XaiSimulator

runner = CliRunner()
TODAY = datetime.now(UTC).date()


def knrun(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def fresh_pricing(project: Path) -> Path:
    """The repository's pricing.toml, verified today (its own dates are months old)."""
    path = project / "pricing.toml"
    path.write_text(re.sub(r"verified_at = \S+", f"verified_at = {TODAY}", path.read_text()))
    return path


def test_check_passes_when_prices_match_and_are_fresh(
    fresh_pricing: Path, xai_server: XaiSimulator
) -> None:
    code, out, err = knrun("pricing", "check")
    assert code == 0, err
    assert "matches the live list" in out
    assert "grok-4.3" in out and "DIFFERS" not in out


def test_check_fails_naming_the_model_and_both_prices_when_the_file_is_66x_low(
    fresh_pricing: Path, xai_server: XaiSimulator
) -> None:
    # The incident: the script's constants were 6.6x below what was billed.
    set_price(fresh_pricing, "grok-4.3", "output", "0.3788")
    code, out, err = knrun("pricing", "check")
    assert code == 2
    expected = "grok-4.3 output: pricing.toml says $0.3788/M, live $2.50/M (6.6x)"
    assert f"FAIL: {expected}" in out
    assert "knrun pricing sync" in err


def test_check_fails_when_the_jobs_model_is_retired(
    fresh_pricing: Path, xai_server: XaiSimulator
) -> None:
    job = Path("prompts/kn-1.6.toml")
    text = job.read_text().replace('model = "grok-4.3"', 'model = "grok-3-fast"')
    job.write_text(text)
    code, out, _ = knrun("pricing", "check")
    assert code == 2
    assert "FAIL: job model grok-3-fast is in [retired]" in out
    assert "FAIL: job model grok-3-fast is not on the live list" in out


def test_check_fails_on_a_stale_verified_at(fresh_pricing: Path, xai_server: XaiSimulator) -> None:
    old = TODAY - timedelta(days=8)
    set_price(fresh_pricing, "grok-4.20-0309-reasoning", "verified_at", str(old))
    code, out, _ = knrun("pricing", "check")
    assert code == 2
    assert f"grok-4.20-0309-reasoning: verified_at {old} is 8 days old (limit 7)" in out
    assert knrun("pricing", "check", "--max-age-days", "10")[0] == 0


def test_when_only_dates_are_stale_check_and_sync_say_so_in_a_line_not_a_page(
    project: Path, xai_server: XaiSimulator
) -> None:
    path = project / "pricing.toml"
    old = TODAY - timedelta(days=30)
    path.write_text(re.sub(r"verified_at = \S+", f"verified_at = {old}", path.read_text()))
    code, out, _ = knrun("pricing", "check")
    assert code == 2 and "DIFFERS" not in out and "vs live (USD per 1M" not in out
    assert re.search(r"pricing.toml vs live: every price matches \(\d+ prices of .*grok-4.3", out)
    assert "verified_at" in out  # the FAIL lines: what is wrong
    code, out, _ = knrun("pricing", "sync", "--dry-run")
    assert code == 0 and "verified_at =" not in out and "@@" not in out
    assert out.strip().endswith(
        "every price matches the live list; would set today's verified_at date (only the "
        "dates change)"
    )
    code, out, _ = knrun("pricing", "sync")
    assert code == 0 and len(out.strip().splitlines()) == 1
    assert knrun("pricing", "check")[0] == 0


def test_check_without_a_key_is_one_line_and_exit_2(fresh_pricing: Path) -> None:
    code, _, err = knrun("pricing", "check")
    assert code == 2 and err.strip().startswith("error: XAI_API_KEY is not set")


def test_sync_writes_live_prices_and_today_keeping_comments(
    project: Path, xai_server: XaiSimulator
) -> None:
    path = project / "pricing.toml"
    set_price(path, "grok-4.3", "output", "0.3788")
    code, out, _ = knrun("pricing", "sync", "--dry-run")
    assert code == 0 and "-output = 0.3788" in out and "+output = 2.5" in out  # a real diff
    assert "0.3788" in path.read_text()  # dry run wrote nothing
    code, out, _ = knrun("pricing", "sync")
    assert code == 0 and "updated grok-4.3" in out
    text = path.read_text()
    assert "# grok-3-fast was still accepted by the API at legacy prices" in text  # comments
    table = load_pricing(path)
    grok = table.models["grok-4.3"]
    assert str(grok.output) == "2.5" and grok.verified_at == TODAY
    assert str(grok.batch_output) == "2.00"  # not on the live list: kept as written
    assert "grok-3-fast" in table.retired
    assert knrun("pricing", "check")[0] == 0
    code, out, _ = knrun("pricing", "sync")
    assert "already matches the live list" in out


def test_sync_adds_the_jobs_model_when_it_is_live_but_missing(
    project: Path, xai_server: XaiSimulator
) -> None:
    path = project / "pricing.toml"
    text = path.read_text()
    path.write_text(re.sub(r'\[models\."grok-4\.3"\][^\[]*', "", text))
    assert knrun("pricing", "show")[0] == 2
    code, out, _ = knrun("pricing", "sync")
    assert code == 0 and "added grok-4.3" in out
    added = load_pricing(path).models["grok-4.3"]
    assert added.batch_input is None
    assert (added.long_context_threshold, str(added.output_long)) == (200_000, "5.0")
    assert knrun("pricing", "show")[0] == 0


def test_check_compares_the_long_context_tier_too(project: Path, xai_server: XaiSimulator) -> None:
    path = project / "pricing.toml"
    set_price(path, "grok-4.3", "output_long", "2.50")
    code, out, _ = knrun("pricing", "check")
    assert code == 2 and "grok-4.3 output_long: pricing.toml says $2.50/M, live $5.00/M" in out
    set_price(path, "grok-4.3", "long_context_threshold", "128000")
    code, out, _ = knrun("pricing", "check")
    assert "long_context_threshold: pricing.toml says 128,000 tokens, live 200,000" in out
    assert knrun("pricing", "sync")[0] == 0 and knrun("pricing", "check")[0] == 0


def test_check_says_batch_prices_cannot_be_verified_from_the_live_list(
    fresh_pricing: Path, xai_server: XaiSimulator
) -> None:
    code, out, _ = knrun("pricing", "check")
    assert code == 0
    assert "batch prices ($1.00 in, $2.00 out per 1M) cannot be verified" in out
    job = fresh_pricing.parent / "prompts" / "kn-1.6.toml"
    job.write_text(job.read_text().replace('model = "grok-4.3"', 'model = "grok-4.6"'))
    code, out, _ = knrun("pricing", "check")
    assert code == 0
    assert "grok-4.6: no batch prices in pricing.toml, so `go --batch` will not run it" in out
