"""Every dollar xAI could bill is counted, and a run that fails systematically stops: the guards
judged by the money they let through, through the CLI, against a simulator that bills a request
when it accepts it (as xAI does), can drop `cost_in_usd_ticks`, and sends no Retry-After."""

from __future__ import annotations

import json
import re
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import write_receipt
from knrun.cli import app
from knrun.sim.xai import XaiSimulator

runner = CliRunner()
JOB = Path("prompts/kn-1.6.toml")


def knrun(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def status() -> dict[str, Any]:
    code, out, err = knrun("status", "--json")
    assert code == 0, err
    return json.loads(out)


def attempts() -> list[int]:
    conn = sqlite3.connect("knrun.sqlite")
    try:
        rows = conn.execute("SELECT kn_attempts FROM units WHERE kn_status = 'failed'").fetchall()
    finally:
        conn.close()
    return [row[0] for row in rows]


def usd(text: str) -> Decimal:
    return Decimal(text)


def ticks_usd(ticks: int) -> Decimal:
    return Decimal(ticks) / 10**10


def edit_job(pattern: str, replacement: str) -> None:
    JOB.write_text(re.sub(pattern, replacement, JOB.read_text(), count=1, flags=re.M))


def test_every_reply_malformed_after_a_good_canary_stops_within_100_paid_replies(
    ready: Path, xai_server: XaiSimulator
) -> None:
    """Row 1: a model update, a proxy, a new slice of the corpus: every reply fails. Each one
    is paid for, so the run must stop, non-zero, long before the corpus is bought."""
    xai_server.force("malformed_json", 100_000)
    code, _, err = knrun("go")
    assert code == 6, err
    assert "failure rate: 20 replies in a row failed (invalid_json)" in err
    assert xai_server.stats.paid_requests <= 100  # 20 in a row, plus the 50 in flight
    figures = status()
    assert figures["remaining"] > 0 and figures["failed_by_reason"] == {
        "invalid_json": figures["failed"]
    }
    # The run was at fault, not the units: their failed attempt is given back.
    assert attempts() and set(attempts()) == {0}


def test_requests_slower_than_the_timeout_are_counted_as_possibly_billed_and_never_resent(
    ready: Path, xai_server: XaiSimulator
) -> None:
    """Row 2: xAI bills every request it computes, even one the client gave up on. A run where
    every request times out must count them all (against the cap, the drift check and
    `status`), resend none, and stop."""
    edit_job(r"^timeout_s = .*$", "timeout_s = 0.05")
    write_receipt(ready)  # the job changed: preflight would have passed on it
    xai_server.scenario.latency.median_s = 300  # x 0.001: 0.3 s, six times the timeout
    code, _, err = knrun("go")
    assert code in (1, 5), err
    stats = xai_server.stats
    assert stats.abandoned_requests > 0  # billed, and the reply went nowhere
    assert max(stats.paid_by_prompt.values()) == 1  # and none of them sent twice
    figures = status()
    assert figures["possibly_billed_requests"] == stats.paid_requests
    spent = usd(figures["spent_usd"])
    billed = ticks_usd(stats.billed_ticks)
    assert abs(spent - billed) <= billed / 10, (spent, billed)
    assert usd(figures["spent_max_usd"]) > billed  # and the cap counted them at their worst
    assert set(figures["failed_by_reason"]) == {"timeout"}


def test_replies_without_a_bill_and_a_66x_low_pricing_toml_are_caught_early(
    ready: Path, xai_server: XaiSimulator
) -> None:
    """Row 3: the replies carry no cost_in_usd_ticks and pricing.toml is 6.6x low. Tracked cost
    must not stand in for billed (the drift check would compare pricing.toml with itself):
    the missing bills are counted, and the prepaid balance decides, blaming the prices."""
    xai_server.scenario.faults.missing_cost = 1.0
    pricing = Path("pricing.toml")
    text = pricing.read_text()
    block = text[text.index('[models."grok-4.3"]') :]
    pricing.write_text(text.replace(block, block.replace("output = 2.50", "output = 0.3788", 1)))
    write_receipt(ready)
    # A pool of 50: what is in flight at the stop is paid too (see the bound below).
    code, _, err = knrun("go", "--concurrency", "50")
    assert code == 5, err
    assert "xAI sent no bill for" in err and "pricing.toml is likely wrong" in err
    # The incident's alarm came at unit 247, and the old code's never came. The bound here is
    # the first balance check (5% unbilled, then every 20 replies) plus a pool of 50 in flight
    # and the simulated billing lag, which is wall-clock: a loaded machine sends more inside it.
    assert xai_server.stats.paid_requests <= 200
    figures = status()
    assert figures["unbilled_replies"] > 0 and usd(figures["billed_usd"]) == 0
    assert usd(figures["unbilled_tracked_usd"]) > 0


def test_replies_without_a_bill_and_no_way_to_read_the_balance_stop_the_run(
    ready: Path, xai_server: XaiSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XAI_MANAGEMENT_KEY")
    xai_server.scenario.faults.missing_cost = 1.0
    code, _, err = knrun("go")
    assert code == 5, err
    assert "knrun cannot see what this run is being billed" in err
    assert xai_server.stats.paid_requests <= 20 + 50


def test_one_round_of_429s_at_fifty_workers_is_a_burst_not_a_storm(
    ready: Path, xai_server: XaiSimulator
) -> None:
    """Row 4: fifty requests in flight answered 429 together (no Retry-After, as live) are one
    round: the breaker counts rounds, and the run pauses, then finishes."""
    xai_server.force("rate_limited", 50)
    code, _, err = knrun("go")
    assert code == 0, err
    assert xai_server.stats.outcomes["rate_limited"] == 50
    figures = status()
    assert figures["done"] == figures["total"] and figures["failed"] == 0


def test_a_canary_whose_replies_carry_no_bill_fails_preflight(
    project: Path, xai_server: XaiSimulator
) -> None:
    from conftest import prepare_units, refresh_pricing_dates

    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 50)
    xai_server.scenario.faults.missing_cost = 1.0
    code, out, _ = knrun("preflight")
    assert code == 2
    assert "10 of 10 replies carried no cost_in_usd_ticks" in out
    assert not Path(".knrun/receipts/kn-1.6.json").exists()


def test_preflight_shows_the_reasoning_effort_it_will_send(
    project: Path, xai_server: XaiSimulator
) -> None:
    from conftest import prepare_units, refresh_pricing_dates

    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 50)
    edit_job(r"^# reasoning_effort = .*$", 'reasoning_effort = "low"')
    code, out, err = knrun("preflight")
    assert code == 0, err
    assert "reasoning_effort: low" in out
    assert json.loads(Path(".knrun/receipts/kn-1.6.json").read_text())["remaining_units"] > 0
