"""The end of a run through the CLI, against the xAI simulator: one summary (on a terminal and
off it), repeated events folded, `--json` on go and retry, and retry's list of what still
fails."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from clirun import fail_units, knrun
from conftest import prepare_units, refresh_pricing_dates
from knrun.display import console
from knrun.sim.xai import XaiSimulator

CREDIT_TEXT = "used all available credits"


def test_go_ends_with_one_summary_of_units_tokens_spend_latency_and_429s(
    ready: Path, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.faults.malformed_json = 0.02
    xai_server.scenario.faults.rate_limited = 0.05
    code, out, err = knrun("go")
    assert code == 0, err
    summary = out[out.index("(go) in ") :]
    failed = xai_server.stats.outcomes["malformed_json"]
    assert re.search(rf"units +\d+ of \d+ eligible: \d+ done, {failed} failed", summary)
    assert f"(invalid_json {failed})" in summary
    assert re.search(r"tokens +[\d,]+ in \(\d+% cached\) · [\d,]+ out \([\d,]+ reasoning\)", out)
    assert re.search(r"spend +\$[\d.]+ of \$[\d.]+ allowed .* per unit done · billed", out)
    assert re.search(r"latency +p50 \d+ ms · p95 \d+ ms over [\d,]+ replies", out)
    assert re.search(r"throughput +[\d,]+ units/min · [\d,]+ tokens/s", out)
    assert re.search(r"429s +[\d,]+ of [\d,]+ requests \([\d.]+%\) in \d+ rounds", out)
    # Off a terminal, a burst of 429s is one line and a count, never a line per round.
    rounds = out.count("rate_limited: 429s")
    assert rounds == 1, out
    assert re.search(r"events +rate_limited x\d+ \(round", out)
    assert "run_finished" not in out  # the last line says how it ended


def test_go_json_is_one_object_on_stdout_with_money_as_decimal_strings(
    ready: Path, xai_server: XaiSimulator
) -> None:
    code, out, err = knrun("go", "--json")
    assert code == 0, err
    result = json.loads(out)  # stdout is the object and nothing else
    assert result["kind"] == "go" and result["exit_code"] == 0
    assert result["done"] == result["eligible"] > 0 and result["failed"] == 0
    assert result["billed_usd"] == result["spent_usd"] and "." in result["spent_usd"]
    assert isinstance(result["cost_per_unit_usd"], str) and isinstance(result["cap_usd"], str)
    assert result["latency_p50_ms"] <= result["latency_p95_ms"]
    assert result["latency_replies"] == result["done"]
    assert result["input_tokens"] > 0 and result["output_tokens"] > 0
    assert "run_started: " in err and "(go) in " in err  # the log and the summary: stderr


def test_credit_running_out_is_said_once_and_go_json_keeps_exit_code_3(
    ready: Path, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.credit_exhausted_status = 403
    xai_server.balance_ticks = 100 * 80_000_000
    code, out, err = knrun("go", "--json")
    assert code == 3
    result = json.loads(out)
    assert result["exit_code"] == 3 and CREDIT_TEXT in result["reason"]
    assert "stopping: credit exhausted (the full reason ends the run)" in err
    assert err.count(CREDIT_TEXT) == 1  # on the last line only
    assert "error: run " in err.splitlines()[-1]


def test_retry_lists_what_still_fails_by_reason_with_ids_bounded(
    project: Path, xai_server: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 100)
    fail_units(25, attempts=3, reason="truncated")  # retry leaves these alone
    fail_units(5)
    code, out, err = knrun("retry", "--max-attempts", "3")
    assert code == 0, err
    assert "still failing  25 units (25 failed 3 times: retry leaves them alone)" in out
    line = next(line for line in out.splitlines() if "truncated 25: " in line)
    assert line.endswith("and 5 more") and len(line.split(": ", 1)[1].split(", ")) == 20
    code, out, err = knrun("retry", "--max-attempts", "3", "--json")
    assert code == 0, err
    still = json.loads(out)["still_failing"]
    assert still["total"] == 25 and still["exhausted"] == 25
    truncated = still["by_reason"]["truncated"]
    assert truncated["count"] == 25 and len(truncated["unit_ids"]) == 20
    assert truncated["more"] == 5


def test_on_a_terminal_the_final_panel_is_drawn_once_whole_and_without_markup(
    ready: Path, xai_server: XaiSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(console.out, "_file", screen)
    monkeypatch.setattr(console.out, "_force_terminal", True)
    monkeypatch.setattr(console.out, "_width", 80)
    monkeypatch.setattr(console.out, "_height", 40)
    xai_server.scenario.credit_exhausted_status = 403
    xai_server.balance_ticks = 100 * 80_000_000
    code, _, err = knrun("go")
    assert code == 3, err
    text = screen.getvalue()
    # The live display moves the cursor up to redraw; after its last frame, nothing redraws.
    last_frame = re.split(r"\x1b\[\d*A", text)[-1]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last_frame)
    assert plain.count("knrun run ") == 1, plain
    assert "[green]" not in text and "[/]" not in text
    # The stopping line wraps inside the panel: xAI's sentence ends in it.
    inside = " ".join(line.strip("│ ") for line in plain.splitlines())
    assert "raise your spending limit" in inside
    assert "(go) in " in plain  # and the summary follows the panel
