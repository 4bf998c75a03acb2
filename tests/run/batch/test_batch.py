"""`knrun go --batch` end to end through the CLI, against the simulator's Batch API on a loopback
port and the SQLite store. Each guard is judged by the money and data it lets through: what xAI
billed against what reached the store, requests added twice, units left leased."""

from __future__ import annotations

import heapq
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from clirun import BATCH_OK, batch_runs, knrun, run_now
from clirun import fresh_status as status
from conftest import prepare_units, refresh_pricing_dates, set_price, write_receipt
from knrun.sim.xai import XaiSimulator


@pytest.fixture
def batch_ready(project: Path, xai_server: XaiSimulator) -> int:
    """2,000 imported units (those the job's `where` takes are returned), a batch receipt."""
    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 2000)
    write_receipt(project, batch=BATCH_OK, approved_ticks=10**12)
    return eligible


def test_2000_units_through_one_batch_every_unit_once_billed_at_the_batch_price(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    code, _, err = knrun("go", "--batch")
    assert code == 0, err
    figures = status()
    stats = xai_server.batch.stats
    assert figures["done"] == batch_ready and figures["failed"] == figures["leased"] == 0
    assert stats.created == 1 and stats.added == batch_ready and stats.duplicates == 0
    assert xai_server.stats.chat_requests == 0  # nothing went live
    # What xAI billed is what the store holds and what pricing.toml's batch prices say: 20% off.
    assert figures["billed_usd"] == figures["tracked_usd"] == figures["spent_usd"]
    assert figures["spent_ticks"] == stats.billed_ticks
    assert stats.billed_ticks == pytest.approx(stats.live_ticks * 0.8, rel=1e-6)
    # Chunks of up to 100, not a call per unit (smaller ones while the first drift check is
    # awaited: at most 200 requests are outstanding until then).
    assert stats.add_calls <= batch_ready // 50
    [record] = batch_runs()
    assert record["id"] == "batch_sim_0001" and record["open"] is False


def test_per_request_errors_become_unit_failures_with_their_reason(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.batch.error_rate = 0.05
    code, _, err = knrun("go", "--batch")
    assert code == 0, err
    figures = status()
    errors = xai_server.batch.stats.errors
    assert 40 < errors < 160
    assert figures["failed_by_reason"] == {"batch_error": errors}
    assert figures["done"] + figures["failed"] == batch_ready
    assert figures["spent_ticks"] == xai_server.batch.stats.billed_ticks  # errors cost nothing


def test_a_batch_xai_cancels_is_reported_in_its_words_and_what_ran_is_kept(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    """xAI cancels the batch itself after 300 results; the requests already running when the
    cancel spreads still finish, and are billed: every one of them is written, the rest go
    back to the pool."""
    xai_server.scenario.batch.xai_cancels_after = 300
    code, _, err = knrun("go", "--batch")
    assert code == 3, err
    assert "the team's batch quota was exceeded" in err
    figures = status()
    stats = xai_server.batch.stats
    assert figures["done"] == stats.processed >= 300
    assert figures["spent_ticks"] == stats.billed_ticks
    assert figures["leased"] == 0 and figures["remaining"] == batch_ready - stats.processed


def test_go_batch_needs_a_batch_canary_in_the_receipt(
    ready: Path, xai_server: XaiSimulator
) -> None:
    code, _, err = knrun("go", "--batch")
    assert code == 2
    assert "knrun preflight --batch" in err
    assert xai_server.batch.stats.created == 0


def test_a_model_without_batch_prices_is_not_assumed_to_have_any(
    project: Path, xai_server: XaiSimulator
) -> None:
    job = project / "prompts" / "kn-1.6.toml"
    job.write_text(job.read_text().replace('model = "grok-4.3"', 'model = "grok-4.5"'))
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 50)
    code, out, err = knrun("preflight", "--batch", "--canary", "5")
    assert code == 2
    assert "grok-4.5 has no batch prices" in out + err
    assert xai_server.batch.stats.created == 0


def test_a_model_the_batch_api_refuses_fails_the_batch_canary_with_xais_words(
    project: Path, xai_server: XaiSimulator
) -> None:
    """Someone copied grok-4.3's batch prices to grok-4.5: the Batch API refuses the model, and
    preflight says so in xAI's words; nothing is added to a batch, no receipt is written, and
    `go --batch` will not run."""
    job = project / "prompts" / "kn-1.6.toml"
    job.write_text(job.read_text().replace('model = "grok-4.3"', 'model = "grok-4.5"'))
    refresh_pricing_dates(project / "pricing.toml")
    set_price(project / "pricing.toml", "grok-4.5", "batch_input", "1.60")
    set_price(project / "pricing.toml", "grok-4.5", "batch_output", "4.80")
    prepare_units(project, 50)
    code, out, err = knrun("preflight", "--batch", "--canary", "5")
    assert code == 2, out + err
    assert "Model grok-4.5 is not supported for batch processing." in out
    assert "6 batch canary" in out
    assert xai_server.batch.stats.added == 0
    assert not (project / ".knrun" / "receipts" / "kn-1.6.json").exists()
    billed_before = xai_server.stats.billed_ticks
    code, _, err = knrun("go", "--batch")
    assert code == 2 and xai_server.stats.billed_ticks == billed_before


def test_preflight_batch_measures_the_discount_and_go_batch_runs_on_its_receipt(
    project: Path, xai_server: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 200)
    code, out, err = knrun("preflight", "--batch", "--canary", "5")
    assert code == 0, out + err
    assert "20.0% off the live price (pricing.toml: 20.0%)" in out
    receipt = json.loads((project / ".knrun" / "receipts" / "kn-1.6.json").read_text())
    assert receipt["batch"]["accepted"] is True
    assert receipt["batch"]["discount_measured"] == "0.2000"
    code, _, err = knrun("go", "--batch")
    assert code == 0, err
    assert status()["done"] == eligible
    assert xai_server.batch.stats.duplicates == 0


def test_batch_list_and_cancel_for_the_operator(batch_ready: int, xai_server: XaiSimulator) -> None:
    """`knrun batch cancel` cancels at xAI, then collects: what ran before the cancel reached
    it is written (it was billed), and only the units xAI lists as cancelled go back."""
    xai_server.scenario.batch.delay_s = 10**6  # nothing finishes on its own
    xai_server.scenario.batch.add_latency_s = 0
    # Submit what the guards allow before any result is back, and leave.
    code, out, err = knrun("go", "--batch", "--no-wait")
    assert code == 0, err
    submitted = xai_server.batch.stats.added
    assert "knrun batch collect" in out + err and 0 < submitted < batch_ready
    code, out, err = knrun("batch", "list")
    assert code == 0, err
    assert "batch_sim_0001" in out and "open" in out and f"{submitted:,} pending" in out
    code, out, err = knrun("batch", "list", "--json")
    assert code == 0, err
    [listed] = json.loads(out)["batches"]
    assert listed["batch_id"] == "batch_sim_0001" and listed["open"] is True
    assert listed["xai"]["pending"] == submitted and listed["problem"] is None
    assert status()["leased"] == submitted
    run_now(xai_server, 30)
    code, out, err = knrun("batch", "cancel", "batch_sim_0001")
    assert code == 0, out + err
    figures = status()
    assert figures["done"] == xai_server.batch.stats.processed >= 30
    assert figures["spent_ticks"] == xai_server.batch.stats.billed_ticks
    assert figures["leased"] == 0 and figures["open_batches"] == []
    code, out, err = knrun("batch", "list")
    assert "closed" in out and "open" not in out.replace("closed", "")


def test_a_cancel_that_spreads_slowly_loses_nothing_it_bills(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    """The cancel reaches xAI's workers only after a while; 20 requests start meanwhile and
    are billed. `knrun batch cancel` keeps collecting until xAI lists nothing pending: those
    20 are written, and only the units whose requests xAI lists as cancelled go back (it
    once read the cancel reply's counters and gave every unit back)."""
    xai_server.scenario.batch.delay_s = 10**6
    xai_server.scenario.batch.cancel_spread_s = 1000  # 1 s real
    code, _, err = knrun("go", "--batch", "--no-wait")
    assert code == 0, err
    [batch] = xai_server.batch.batches.values()
    for entry in batch.added[:20]:
        entry.due = xai_server.now() + 0.3
    batch.queue = [(entry.due, entry.seq, entry) for _, _, entry in batch.queue]
    heapq.heapify(batch.queue)
    code, out, err = knrun("batch", "cancel", batch.batch_id)
    assert code == 0, out + err
    stats = xai_server.batch.stats
    assert stats.processed_after_cancel == stats.processed == 20
    figures = status()
    assert figures["done"] == 20 and figures["spent_ticks"] == stats.billed_ticks
    assert figures["leased"] == 0 and figures["open_batches"] == []


def test_collecting_needs_no_receipt(
    project: Path, batch_ready: int, xai_server: XaiSimulator
) -> None:
    """A batch outlives its receipt (xAI takes up to 24 h): collecting buys nothing, so
    neither `knrun batch collect` nor `go --batch` needs a fresh receipt to write its
    results; adding more does."""
    xai_server.scenario.batch.delay_s = 10**6
    code, _, err = knrun("go", "--batch", "--no-wait")
    assert code == 0, err
    submitted = xai_server.batch.stats.added
    stale = (datetime.now(UTC) - timedelta(hours=30)).isoformat(timespec="seconds")
    write_receipt(project, batch=BATCH_OK, approved_ticks=10**12, created_at=stale)
    run_now(xai_server, submitted // 2)
    code, out, err = knrun("batch", "collect", "--max-wait", "0")
    assert code == 0, out + err
    assert status()["done"] == submitted // 2
    assert status()["open_batches"]  # the rest is still at xAI
    run_now(xai_server, submitted)
    code, out, err = knrun("go", "--batch")
    assert code == 2, out + err  # collected, but adding the rest needs a receipt
    assert "knrun preflight" in err
    figures = status()
    assert figures["done"] == submitted and figures["open_batches"] == []
    assert figures["leased"] == 0 and xai_server.batch.stats.added == submitted


def test_credit_exhausted_when_adding_stops_the_run_in_xais_words_and_frees_the_units(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    xai_server.balance_ticks = 0
    code, _, err = knrun("go", "--batch")
    assert code == 3, err
    assert "credit exhausted" in err and "used all available credits" in err
    figures = status()
    assert figures["failed"] == 0 and figures["leased"] == 0  # never the units' fault
    assert xai_server.batch.stats.added == 0 and xai_server.batch.stats.billed_ticks == 0
    assert batch_runs()[-1]["open"] is False


def test_preflights_batch_canary_never_adds_to_or_waits_for_an_open_batch(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.batch.delay_s = 10**6  # the run's batch: nothing finishes
    # $1 of the corpus submitted (the cap counts each at its worst case), the rest left.
    code, out, err = knrun("go", "--batch", "--no-wait", "--max-spend", "1")
    assert code == 0, out + err
    submitted = xai_server.batch.stats.added
    assert 0 < submitted < batch_ready
    xai_server.scenario.batch.delay_s = 600  # the canary's: done in about a second
    xai_server.balance_ticks = 1000 * 10**10  # $1,000: the balance step passes
    code, out, err = knrun("preflight", "--batch", "--canary", "5")
    assert code == 0, out + err
    first, canary = xai_server.batch.batches.values()
    assert first.count("pending") == submitted  # nothing added to it, nothing taken from it
    assert canary.count("succeeded") == 5
    assert [b["batch_id"] for b in status()["open_batches"]] == [first.batch_id]


def test_an_add_applied_then_answered_503_is_not_added_again(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    """A 5xx to an add may come after xAI applied it: sending it again would buy those
    requests twice. knrun reads the batch's own list of ids instead."""
    xai_server.scenario.batch.adds_applied_then_503 = 3
    code, _, err = knrun("go", "--batch")
    assert code == 0, err
    stats = xai_server.batch.stats
    assert stats.duplicates == 0 and stats.added == batch_ready
    figures = status()
    assert figures["done"] == batch_ready and figures["spent_ticks"] == stats.billed_ticks
