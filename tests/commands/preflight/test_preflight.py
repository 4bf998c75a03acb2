"""`knrun preflight` end to end against the xAI simulator: the incident replayed, the balance
rule, the canary's three ways to fail, and the receipt `go` then accepts or refuses."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import prepare_units, refresh_pricing_dates
from knrun.cli import app
from knrun.sim.scenario import SimModel
from knrun.sim.xai import XaiSimulator

runner = CliRunner()
RECEIPT = Path(".knrun/receipts/kn-1.6.json")


def knrun(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def receipt() -> dict[str, Any]:
    return json.loads(RECEIPT.read_text())


@pytest.fixture
def ready(project: Path, xai_server: XaiSimulator) -> XaiSimulator:
    """300 units imported, prices verified today, the simulator answering; no receipt yet.

    A steady model: ten canary units then predict a run well enough for its cap and drift
    checks. With the simulator's default spread (about 19% per unit), a 10-unit estimate is
    sometimes over 15% low, and `go` then stops at the cap near the end, as it should (see the
    README's limitations); these tests are about preflight, not that."""
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 300)
    xai_server.scenario.output.visible_tokens_sd = 50
    xai_server.scenario.output.reasoning_tokens_sd = 100
    return xai_server


def set_job_model(model: str) -> None:
    job = Path("prompts/kn-1.6.toml")
    job.write_text(re.sub(r'^model = "[^"]+"', f'model = "{model}"', job.read_text(), flags=re.M))


def test_a_good_preflight_passes_every_step_and_go_runs_on_its_receipt(ready: XaiSimulator) -> None:
    code, out, err = knrun("preflight")
    assert code == 0, err
    for step in (
        "1 model current",
        "2 prices true",
        "3 estimate",
        "4 balance",
        "5 canary",
        "6 receipt",
    ):
        assert re.search(rf"{step}\s+PASS", out), step
    assert "grok-4.3 (aliases: grok-4.3-latest; fingerprint fp_sim0001" in out
    assert "rendered all" in out and "cheapest first" in out
    issued = receipt()
    assert issued["balance_source"] == "management-api" and issued["balance_ticks"] == 25 * 10**10
    assert issued["canary"]["units"] == 10 and issued["canary"]["valid"] == 10
    assert ready.stats.paid_requests == 10  # the canary, and nothing else
    code, out, err = knrun("go")
    assert code == 0, err
    assert "all eligible units processed" in out


def test_a_model_gone_from_the_live_list_fails_at_step_1_without_spending(
    ready: XaiSimulator,
) -> None:
    pricing = Path("pricing.toml")
    pricing.write_text(
        pricing.read_text().replace('[models."grok-4.20-0309-reasoning"]', '[models."grok-2"]')
    )
    set_job_model("grok-2")  # priced, not retired in pricing.toml, but no longer served
    code, out, err = knrun("preflight")
    assert code == 2
    assert re.search(r"1 model current\s+FAIL\s+grok-2 is not on the live model list", out)
    assert "preflight failed at step 1 (model current): no receipt written" in err
    assert ready.stats.chat_requests == 0 and not RECEIPT.exists()


def test_preflight_json_is_one_object_on_stdout_for_pass_and_for_fail(
    ready: XaiSimulator,
) -> None:
    code, out, err = knrun("preflight", "--json")
    assert code == 0, err
    result = json.loads(out)  # the checklist went to stderr
    assert re.search(r"6 receipt\s+PASS", err)
    assert result["ok"] is True and result["exit_code"] == 0 and result["failed_step"] is None
    assert [step["number"] for step in result["steps"]] == [1, 2, 3, 4, 5, 5, 6]
    assert all(step["ok"] and step["summary"] for step in result["steps"])
    assert result["receipt"]["path"] == str(RECEIPT)
    assert result["receipt"]["approved_usd"] == str(
        Decimal(receipt()["approved_ticks"]).scaleb(-10).normalize()
    )
    assert result["estimate"]["remaining"] > 0 and "." in result["estimate"]["unit_usd"]
    set_job_model("grok-3-fast")
    code, out, err = knrun("preflight", "--json")
    assert code == 2 and "preflight failed at step 1" in err
    result = json.loads(out)
    assert result["ok"] is False and result["failed_step"] == 1 and result["receipt"] is None
    assert "not_listed" in result["steps"][0]["problems"]


def test_the_incidents_retired_model_fails_at_step_1(ready: XaiSimulator) -> None:
    set_job_model("grok-3-fast")  # still answers the API, at legacy prices, without warning
    code, out, _ = knrun("preflight")
    assert code == 2 and re.search(r"1 model current\s+FAIL\s+grok-3-fast is not on the live", out)
    assert ready.stats.chat_requests == 0 and not RECEIPT.exists()


def test_a_served_model_whose_live_price_is_10x_pricing_toml_fails_at_step_2(
    ready: XaiSimulator,
) -> None:
    ready.scenario.models.append(
        SimModel(
            id="grok-legacy-fast",
            input=Decimal("2.00"),
            cached_input=Decimal("0.50"),
            output=Decimal("5.00"),
        )
    )
    pricing = Path("pricing.toml")
    today = re.search(r"verified_at = (\S+)", pricing.read_text())
    assert today
    entry = (
        '[models."grok-legacy-fast"]\ninput = 0.20\ncached_input = 0.05\noutput = 0.50\n'
        f'source = "an old brief"\nverified_at = {today.group(1)}\n\n[retired]'
    )
    pricing.write_text(pricing.read_text().replace("[retired]", entry))
    set_job_model("grok-legacy-fast")
    code, out, _ = knrun("preflight")
    assert code == 2
    assert re.search(
        r"2 prices true\s+FAIL\s+grok-legacy-fast input: pricing.toml says \$0.20/M, "
        r"live \$2.00/M \(10.0x\)",
        out,
    )
    assert "knrun pricing sync --pricing pricing.toml" in out
    assert ready.stats.chat_requests == 0 and not RECEIPT.exists()


def test_a_balance_short_of_the_requirement_fails_step_4_with_the_numbers(
    ready: XaiSimulator,
) -> None:
    ready.balance_ticks = 2 * 10**10  # $2: the estimate is small, but the $5 allowance is not
    code, out, _ = knrun("preflight", "--overshoot", "5")
    assert code == 2
    assert re.search(
        r"4 balance\s+FAIL\s+\$2.00 \(management-api\) does NOT cover the run: needs "
        r"\$\d+\.\d\d = estimate \$\d+\.\d\d x 1.15 \+ \$5.00 overshoot",
        out,
    )
    assert ready.stats.chat_requests == 0 and not RECEIPT.exists()


def test_the_overshoot_allowance_follows_the_planned_concurrency(ready: XaiSimulator) -> None:
    """What may be billed past the balance is every request in flight when it runs out: the
    allowance is as many units as go may have in flight (or are left) at their worst case, and
    the receipt holds go to that many."""
    ready.balance_ticks = 10**10  # $1
    code, out, _ = knrun("preflight", "--max-concurrency", "200")
    assert code == 2  # 200 in flight at about 3 cents at worst: $1 does not cover it
    found = re.search(r"\+ \$(\d+\.\d\d) overshoot allowance \(200 in flight x \$(\S+) worst", out)
    assert found is not None, out
    assert float(found[1]) == pytest.approx(200 * float(found[2]), abs=0.01)
    ready.balance_ticks = 25 * 10**10
    code, out, err = knrun("preflight", "--max-concurrency", "20")
    assert code == 0, err
    assert "(20 in flight x" in out
    assert json.loads(RECEIPT.read_text())["max_concurrency"] == 20
    code, _, err = knrun("go", "--max-concurrency", "500")
    assert "at most 20 units in flight" in err


def test_without_a_management_key_the_balance_is_attested(
    ready: XaiSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XAI_MANAGEMENT_KEY")
    code, out, err = knrun("preflight")
    assert code == 2
    assert "set XAI_MANAGEMENT_KEY (to read it) or pass --balance USD" in out
    code, out, err = knrun("preflight", "--balance", "40")
    assert code == 0, err
    assert re.search(r"4 balance\s+PASS\s+\$40.00 \(attested\)", out)
    assert receipt()["balance_source"] == "attested" and receipt()["balance_ticks"] == 40 * 10**10


def test_a_canary_three_times_longer_than_estimated_fails_then_the_estimate_learns(
    ready: XaiSimulator,
) -> None:
    ready.scenario.output.visible_tokens_mean *= 3
    ready.scenario.output.reasoning_tokens_mean *= 3
    code, out, _ = knrun("preflight")
    assert code == 2
    assert re.search(
        r"5 canary\s+FAIL\s+cost per unit \$0\.\d+ vs estimate \$0\.\d+ \(\d+% off", out
    )
    assert not RECEIPT.exists()
    # The canary's ten units are this job's history now: the next estimate is honest, and passes.
    code, out, err = knrun("preflight")
    assert code == 0, err
    assert "average of 10 finished units" in out


def test_a_canary_with_two_malformed_replies_of_ten_fails(ready: XaiSimulator) -> None:
    ready.force("malformed_json", 2)
    code, out, _ = knrun("preflight")
    assert code == 2
    assert re.search(r"5 canary\s+FAIL\s+8/10 replies valid \(needs 9\)", out)
    assert not RECEIPT.exists()


def test_a_good_canary_re_estimates_from_its_own_averages(ready: XaiSimulator) -> None:
    code, _, err = knrun("preflight")
    assert code == 0, err
    issued = receipt()
    canary = issued["canary"]
    # The receipt's per-unit estimate is the canary's real averages priced, not the job default.
    input_tokens, output_tokens = canary["input_tokens_per_unit"], canary["output_tokens_per_unit"]
    assert issued["estimate_unit_ticks"] == input_tokens * 12_500 + output_tokens * 25_000
    # The estimate plus 15%, plus one unit at its worst case, so the cap can take the last one.
    worst_unit = 2 * issued["estimate_unit_ticks"]
    assert issued["approved_ticks"] == -(-issued["estimate_ticks"] * 115 // 100) + worst_unit
    assert issued["remaining_units"] == json.loads(knrun("status", "--json")[1])["remaining"]


def test_go_refuses_after_the_job_is_edited_following_a_real_preflight(ready: XaiSimulator) -> None:
    assert knrun("preflight")[0] == 0
    job = Path("prompts/kn-1.6.toml")
    job.write_text(job.read_text().replace("Write the knowledge notes", "Write short notes"))
    code, _, err = knrun("go")
    assert code == 2 and "the job file changed since preflight" in err


def test_nothing_left_to_run_needs_no_receipt(ready: XaiSimulator) -> None:
    assert knrun("preflight")[0] == 0 and knrun("go")[0] == 0
    RECEIPT.unlink()
    code, out, _ = knrun("preflight")
    assert code == 0 and "nothing to run" in out and not RECEIPT.exists()


def test_step_2_judges_only_the_jobs_model_not_one_whose_name_merely_starts_the_same(
    ready: XaiSimulator,
) -> None:
    # "grok-4.3-x" is stale, but the job runs "grok-4.3".
    ready.scenario.models.append(
        SimModel(
            id="grok-4.3-x",
            input=Decimal("1"),
            cached_input=Decimal("1"),
            output=Decimal("1"),
        )
    )
    pricing = Path("pricing.toml")
    pricing.write_text(
        pricing.read_text().replace(
            "[retired]",
            (
                '[models."grok-4.3-x"]\ninput = 1\ncached_input = 1\noutput = 1\n'
                'source = "x"\nverified_at = 2026-01-01\n\n[retired]'
            ),
        )
    )
    code, out, _ = knrun("preflight")
    assert code == 0
    assert re.search(r"2 prices true\s+PASS", out)
    assert "warning: other model: grok-4.3-x: verified_at 2026-01-01" in out
