"""The batch guards through the CLI, against a Batch API simulator that is hostile the ways the
public record allows: results pages in no order (and a last token with nothing behind it),
counters and results and the request list that disagree for a while, counters left out, a
cancel that takes time to spread (what runs meanwhile is billed), random 429s on every call,
credit errors inside the results. Each guard is judged by the money and data it lets through:
what xAI billed, what reached the store, what stayed leased."""

from __future__ import annotations

from pathlib import Path

import pytest

from clirun import BATCH_OK, batch_runs, knrun
from clirun import fresh_status as status
from conftest import prepare_units, refresh_pricing_dates, set_price, write_receipt
from knrun.sim.xai import XaiSimulator

ORDERS = ["completion", "newest_first", "shuffled"]


def every_result_written_nothing_leased(sim: XaiSimulator) -> dict[str, object]:
    """What a guard's stop must leave behind whatever it was: every result xAI produced (and
    billed) in the store, nothing of the batch outstanding, no unit leased to it."""
    stats = sim.batch.stats
    [batch] = sim.batch.batches.values()
    figures = status()
    assert batch.count("pending") == 0
    assert figures["done"] + figures["failed"] == stats.processed
    assert figures["spent_ticks"] == stats.billed_ticks  # spent = billed, to the tick
    assert figures["leased"] == 0 and figures["spool_pending"] == 0
    assert batch_runs()[-1]["open"] is False and figures["open_batches"] == []
    return figures


@pytest.fixture
def thousand(project: Path, xai_server: XaiSimulator) -> int:
    """About 1,000 eligible units, a batch receipt, results 2.5-7.5 s (simulated 2,500-7,500 s)
    after each add: slow enough that a guard can stop what has not run."""
    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 1110)
    write_receipt(project, batch=BATCH_OK, approved_ticks=10**12)
    xai_server.scenario.batch.delay_s = 5000
    return eligible


@pytest.mark.parametrize("order", ORDERS)
def test_a_price_twice_the_files_halts_a_1000_unit_batch_with_at_most_300_billed(
    project: Path, thousand: int, xai_server: XaiSimulator, order: str
) -> None:
    """pricing.toml says batch output is $1.00/M, xAI bills $2.00: the drift check halts the run
    at its first 100 results whatever order xAI lists them in, and the rest never runs (until
    that check has passed, a batch holds at most 200 requests)."""
    assert thousand >= 990
    set_price(project / "pricing.toml", "grok-4.3", "batch_output", "1.00")
    write_receipt(project, batch=BATCH_OK, approved_ticks=10**12)
    xai_server.scenario.batch.results_order = order
    code, _, err = knrun("go", "--batch")
    assert code == 5, err
    assert "drift" in err.lower()
    stats = xai_server.batch.stats
    assert stats.processed <= 300
    assert stats.cancel_calls <= 1  # none when all 200 had run before the check could judge
    every_result_written_nothing_leased(xai_server)


def test_every_reply_malformed_stops_with_at_most_60_billed_after_the_stop(
    thousand: int, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.faults.malformed_json = 1.0
    code, _, err = knrun("go", "--batch")
    assert code == 6, err
    stats = xai_server.batch.stats
    assert stats.processed_after_cancel <= 60
    figures = every_result_written_nothing_leased(xai_server)
    assert figures["failed_by_reason"] == {"invalid_json": stats.processed}


def test_credit_gone_mid_batch_stops_with_exit_3_and_no_unit_failed(
    thousand: int, xai_server: XaiSimulator
) -> None:
    """Once the prepaid credit is gone, xAI ends requests with errors in its credit words:
    the credit breaker, not unit failures (which `retry` would re-buy live)."""
    xai_server.balance_ticks = 5 * 10**9  # $0.50: about 60 units
    xai_server.scenario.batch.delay_s = 600  # quick, so the credit runs out mid-batch
    code, _, err = knrun("go", "--batch")
    assert code == 3, err
    assert "used all available credits" in err
    assert xai_server.batch.stats.credit_errors > 0
    figures = every_result_written_nothing_leased(xai_server)
    assert figures["failed"] == 0  # never the units' fault
    assert figures["remaining"] == thousand - figures["done"]


def test_the_cap_counts_a_unit_from_the_moment_it_is_taken(
    project: Path, batch_ready: int, xai_server: XaiSimulator
) -> None:
    """A $1 cap, each unit at its worst case (twice the estimate) from the moment it is taken
    from the claimer's queue: no more is added than that allows (it once leaked a whole chunk
    of units taken but not yet added: 250 added where the cap allowed 150)."""
    receipt = write_receipt(project, batch=BATCH_OK, approved_ticks=10**12)
    xai_server.scenario.batch.delay_s = 10**6  # nothing comes back to free the cap
    code, _, err = knrun("go", "--batch", "--max-spend", "1", "--no-wait")
    assert code == 0, err
    allowed = 10**10 // (2 * receipt.estimate_unit_ticks)
    assert 0 < xai_server.batch.stats.added <= allowed
    assert status()["leased"] == xai_server.batch.stats.added  # the rest went back


def test_no_batch_is_made_when_nothing_fits_or_nothing_is_eligible(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    code, _, err = knrun("go", "--batch", "--max-spend", "0.001")
    assert code == 4, err
    assert "spend cap" in err
    assert xai_server.batch.stats.created == 0
    code, _, err = knrun("go", "--batch")
    assert code == 0, err
    assert xai_server.batch.stats.created == 1
    code, _, err = knrun("go", "--batch")  # everything is done: no second, empty batch
    assert code == 0, err
    assert xai_server.batch.stats.created == 1


@pytest.fixture
def batch_ready(project: Path, xai_server: XaiSimulator) -> int:
    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 2000)
    write_receipt(project, batch=BATCH_OK, approved_ticks=10**12)
    return eligible


# -- the races review suspected, each run against the simulator that can now produce it ----------


def test_counters_that_run_ahead_of_the_results_never_give_a_unit_back(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    """The counters say nothing is pending long before the results list shows the last
    results (each read learns of a request's end up to 10 polls apart): a unit is given back
    only when xAI's request list says its request was cancelled, so every billed result is
    waited for and written, and nothing is bought twice by a later run."""
    xai_server.scenario.batch.view_lag_s = 3000  # ten polls
    code, _, err = knrun("go", "--batch")
    assert code == 0, err
    figures = status()
    stats = xai_server.batch.stats
    assert figures["done"] == batch_ready and figures["leased"] == 0
    assert figures["spent_ticks"] == stats.billed_ticks and stats.duplicates == 0


@pytest.mark.parametrize("applied", [True, False])
def test_an_add_with_no_usable_answer_is_never_added_twice_while_the_list_lags(
    batch_ready: int, xai_server: XaiSimulator, applied: bool
) -> None:
    """Three adds answered 503, applied or not; xAI's request list shows a new request only
    ten polls later. The unanswered requests are looked for once the list has caught up (as
    many requests as the counters count), and added again only if they are not there."""
    behaviour = xai_server.scenario.batch
    behaviour.ids_lag_s = 3000
    if applied:
        behaviour.adds_applied_then_503 = 3
    else:
        behaviour.adds_refused_503 = 3
    code, _, err = knrun("go", "--batch")
    assert code == 0, err
    stats = xai_server.batch.stats
    assert stats.duplicates == 0 and stats.added == batch_ready
    figures = status()
    assert figures["done"] == batch_ready and figures["spent_ticks"] == stats.billed_ticks


def test_429s_on_every_kind_of_batch_call_are_waited_out(
    batch_ready: int, xai_server: XaiSimulator
) -> None:
    """A third of all Batch API calls (create, add, counters, results, request list) refused
    429 with no Retry-After: each is waited out with backoff and counted, never an exit 1."""
    xai_server.scenario.batch.rate_limited_rate = 0.3
    code, _, err = knrun("go", "--batch")
    assert code == 0, err
    assert xai_server.batch.stats.rate_limited > 10
    figures = status()
    assert figures["done"] == batch_ready and xai_server.batch.stats.duplicates == 0


def test_results_without_their_bill_stop_the_run_before_much_is_bought(
    thousand: int, xai_server: XaiSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every result lacks `cost_in_usd_ticks` and there is no management key to read the
    balance instead: knrun cannot see what the batch costs, and says so (exit 5) after a few
    dozen results, not after the batch."""
    monkeypatch.delenv("XAI_MANAGEMENT_KEY")
    xai_server.scenario.faults.missing_cost = 1.0
    code, _, err = knrun("go", "--batch")
    assert code == 5, err
    assert "cost_in_usd_ticks" in err
    assert xai_server.batch.stats.processed <= 300
    every_result_written_nothing_leased(xai_server)
