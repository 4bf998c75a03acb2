"""`knrun go` end to end through the CLI, against the xAI simulator on a loopback port and the
SQLite store: the guards each stop the run with their exit code, and nothing paid is lost."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from clirun import knrun, rows
from conftest import write_receipt
from knrun.pricing import usd_to_ticks
from knrun.sim.xai import XaiSimulator


def status() -> dict[str, Any]:
    code, out, err = knrun("status", "--json")
    assert code == 0, err
    return json.loads(out)


def last_run() -> dict[str, Any]:
    conn = sqlite3.connect("knrun.sqlite")
    conn.row_factory = sqlite3.Row
    row = conn.execute(
        "SELECT * FROM knrun_runs WHERE kind = 'go' ORDER BY started_at DESC"
    ).fetchone()
    conn.close()
    return dict(row)


def test_500_units_with_2_percent_malformed_replies_finish_with_every_failure_recorded(
    ready: Path, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.faults.malformed_json = 0.02
    code, out, err = knrun("go")
    assert code == 0, err
    figures = status()
    malformed = xai_server.stats.outcomes["malformed_json"]
    assert 0 < malformed < 40
    assert figures["remaining"] == 0 and figures["leased"] == 0
    assert figures["done"] == figures["total"] - malformed
    assert figures["failed_by_reason"] == {"invalid_json": malformed}
    errors = rows("SELECT kn_error, kn_attempts FROM units WHERE kn_status = 'failed'")
    assert len(errors) == malformed
    assert all(error.startswith("invalid_json: ") and attempts == 1 for error, attempts in errors)
    # Every reply paid for is accounted for, and billed equals tracked: pricing.toml is true.
    run = last_run()
    assert run["exit_code"] == 0 and run["units_ok"] + run["units_failed"] == figures["total"]
    assert run["billed_ticks"] == run["tracked_ticks"] == xai_server.stats.billed_ticks
    assert "all eligible units processed" in out
    assert rows("SELECT COUNT(*) FROM units WHERE kn_prompt_version = '1.6'") == [
        (figures["done"],)
    ]
    history = Path("checklist.md").read_text()
    assert f"| go {run['run_id']} | kn v1.6 | grok-4.3 |" in history
    log = [
        json.loads(line)
        for line in Path(f".knrun/runs/{run['run_id']}.jsonl").read_text().splitlines()
    ]
    kinds = [event["kind"] for event in log]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("unit_done") == figures["done"]
    assert kinds.count("unit_failed") == malformed


@pytest.mark.parametrize("status_code", [429, 403])
def test_credit_running_out_stops_the_run_at_once_and_fails_no_unit(
    ready: Path, xai_server: XaiSimulator, status_code: int
) -> None:
    xai_server.scenario.credit_exhausted_status = status_code
    xai_server.balance_ticks = 100 * 80_000_000  # about 100 units' worth
    code, _, err = knrun("go")
    assert code == 3
    assert "credit exhausted" in err and "used all available credits" in err
    figures = status()
    assert figures["failed"] == 0  # an empty account is never the unit's fault
    assert figures["leased"] == 0
    assert figures["remaining"] == figures["total"] - figures["done"] > 0
    assert 80 <= figures["done"] <= 200
    # Within one round of in-flight requests: no worker starts a request after the stop.
    assert xai_server.stats.outcomes["credit_exhausted"] <= 50


def test_ten_rounds_of_rate_limits_in_a_row_trip_the_breaker(
    ready: Path, xai_server: XaiSimulator
) -> None:
    xai_server.force("rate_limited", 100_000)
    xai_server.scenario.faults.retry_after_s = 1.0  # x 0.001: each pause is a millisecond
    code, _, err = knrun("go")
    assert code == 3 and "rate-limit storm: 10 rounds of 429s in a row" in err
    figures = status()
    assert figures["done"] == figures["failed"] == 0 and figures["leased"] == 0
    # No hammering: the rate halves while nothing is accepted, and each refused request backs
    # off on its own; no more than the old pool of 50 sent in its ten rounds.
    assert 10 <= xai_server.stats.outcomes["rate_limited"] <= 11 * 50


def test_occasional_rate_limits_pause_the_run_and_it_completes(
    ready: Path, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.faults.rate_limited = 0.05
    code, _, err = knrun("go")
    assert code == 0, err
    assert xai_server.stats.outcomes["rate_limited"] > 5
    figures = status()
    assert figures["done"] == figures["total"] and figures["failed"] == 0


def test_pricing_66x_low_trips_the_drift_alarm_by_unit_100(
    ready: Path, xai_server: XaiSimulator
) -> None:
    pricing = Path("pricing.toml")
    text = pricing.read_text()
    block = text[text.index('[models."grok-4.3"]') :]
    pricing.write_text(text.replace(block, block.replace("output = 2.50", "output = 0.3788", 1)))
    write_receipt(ready)  # preflight would have passed on these (wrong) prices
    # A pool of 50, so the bound below is exact: at auto concurrency the pacing may have more
    # in flight at the check (each of them is counted; it is the bound that moves).
    code, _, err = knrun("go", "--concurrency", "50")
    assert code == 5
    assert "cost drift: tracked cost $" in err and "vs billed $" in err
    figures = status()
    assert figures["done"] <= 100 + 50  # halted at the 100-unit check; in-flight ones finish
    run = last_run()
    assert run["billed_ticks"] > 4 * run["tracked_ticks"]  # output 6.6x low, input right: ~5x


def test_the_spend_cap_stops_the_run_and_spend_stays_under_it(
    ready: Path, xai_server: XaiSimulator
) -> None:
    code, _, err = knrun("go", "--max-spend", "0.05")
    assert code == 4 and "spend cap reached" in err
    assert 0 < xai_server.stats.billed_ticks <= usd_to_ticks(__import__("decimal").Decimal("0.05"))
    assert last_run()["billed_ticks"] == xai_server.stats.billed_ticks
    assert status()["leased"] == 0


def test_the_default_cap_is_the_receipts_approval_less_earlier_runs(
    ready: Path, xai_server: XaiSimulator
) -> None:
    write_receipt(ready, approved_ticks=usd_to_ticks(__import__("decimal").Decimal("0.10")))
    assert knrun("go")[0] == 4
    first = xai_server.stats.billed_ticks
    code, _, _err = knrun("go")  # a restart may not spend the approval twice
    assert code == 4
    assert xai_server.stats.billed_ticks <= usd_to_ticks(__import__("decimal").Decimal("0.10"))
    assert first > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("none", "no preflight receipt"),
        ("prompt", "the job file changed since preflight"),
        ("pricing", "pricing for grok-4.3 changed since preflight"),
        ("model", "the job's model changed since preflight"),
        ("age", "is 25 h old (valid for 24 h)"),
    ],
)
def test_go_refuses_without_a_matching_fresh_receipt(
    ready: Path, xai_server: XaiSimulator, change: str, message: str
) -> None:
    job, pricing = Path("prompts/kn-1.6.toml"), Path("pricing.toml")
    if change == "none":
        Path(".knrun/receipts/kn-1.6.json").unlink()
    elif change == "prompt":
        job.write_text(job.read_text().replace("Write the knowledge notes", "Write notes"))
    elif change == "pricing":
        pricing.write_text(pricing.read_text().replace("output = 2.50", "output = 2.55", 1))
    elif change == "model":
        job.write_text(job.read_text().replace('"grok-4.3"', '"grok-4.20-0309-non-reasoning"'))
    else:
        old = (datetime.now(UTC) - timedelta(hours=25)).isoformat()
        write_receipt(ready, created_at=old)
    code, _, err = knrun("go")
    assert code == 2 and message in err
    assert xai_server.stats.chat_requests == 0


def test_a_prompt_over_the_accounts_token_limit_fails_with_its_reason_not_a_silent_wait(
    ready: Path, xai_server: XaiSimulator
) -> None:
    """A tokens-per-minute limit below one prompt: xAI refuses it once, its 429 names the
    limit, and from then on such a unit fails as `too_large_for_rate_limit` without being sent
    (the gate used to wait for ever for room that could never come)."""
    xai_server.scenario.limits.tokens_per_min = 300  # a prompt here is about 450 tokens
    code, _, err = knrun("go", "--concurrency", "5")
    assert code == 0, err
    figures = status()
    assert figures["failed_by_reason"] == {"too_large_for_rate_limit": figures["total"]}
    assert xai_server.stats.billed_ticks == 0


def test_a_400_that_mentions_credit_is_a_bad_request_not_an_empty_account(
    ready: Path, xai_server: XaiSimulator
) -> None:
    """xAI's own credit words stop a run (exit 3); a refusal that happens to say "credit" is
    the request's problem, recorded as such, and the run goes on (it once stopped with exit
    3, the account full of credit)."""
    xai_server.force("schema_refused", 3)
    code, _, err = knrun("go", "--concurrency", "5")
    assert code == 0, err
    figures = status()
    assert figures["failed_by_reason"] == {"bad_request": 3}
    assert figures["done"] == figures["total"] - 3


def long_system_prompt() -> None:
    """A system prompt of about 2,000 tokens, the same for every unit."""
    job = Path("prompts/kn-1.6.toml")
    text = job.read_text()
    rules = " ".join(f"Rule {n}: write plainly, cite the unit's own words." for n in range(160))
    text = text.replace('system = """', f'system = """{rules}\n', 1)
    job.write_text(text)


@pytest.mark.parametrize("cached", [True, False])
def test_a_long_shared_prompt_the_cache_does_not_serve_is_warned_about(
    ready: Path, xai_server: XaiSimulator, cached: bool
) -> None:
    long_system_prompt()
    write_receipt(ready, estimate_unit_ticks=110_000_000)  # the job changed: dearer units
    xai_server.scenario.prompt_cache = cached
    code, _, err = knrun("go", "--concurrency", "5")
    assert code == 0, err
    share = status()["cache_share"]
    log = "".join(path.read_text() for path in Path(".knrun/runs").glob("*.jsonl"))
    if cached:
        assert share > 0.5 and "cache_warning" not in log
    else:
        assert share == 0 and "cache_warning" in log
