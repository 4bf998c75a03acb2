"""`knrun preflight --batch` against a Batch API that takes its time: it shows xAI's counters while
it waits, gives up after `--max-wait` saying how to go on, and the next preflight waits for the
same batch instead of buying a second canary. And a preflight whose units are all in an open
batch says so instead of failing its canary."""

from __future__ import annotations

from pathlib import Path

from clirun import BATCH_OK, knrun, run_now
from clirun import fresh_status as status
from conftest import prepare_units, refresh_pricing_dates, write_receipt
from knrun.sim.xai import XaiSimulator


def test_a_slow_batch_canary_shows_progress_stops_waiting_and_is_resumed(
    project: Path, xai_server: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 200)
    xai_server.scenario.batch.delay_s = 10**6  # nothing finishes on its own
    code, out, err = knrun("preflight", "--batch", "--canary", "5", "--max-wait", "1")
    assert code == 2, out + err
    assert "pending at xAI" in out and "waited" in out  # the counters, while it waited
    assert "run `knrun preflight --batch` again later" in out
    assert not (project / ".knrun" / "receipts" / "kn-1.6.json").exists()
    [canary] = xai_server.batch.batches.values()
    run_now(xai_server, 5)
    billed = xai_server.stats.billed_ticks
    code, out, err = knrun("preflight", "--batch", "--canary", "5")
    assert code == 0, out + err
    assert list(xai_server.batch.batches.values()) == [canary]  # the same batch, waited for
    assert xai_server.batch.stats.added == 5  # nothing added to it the second time
    assert xai_server.stats.billed_ticks > billed  # (the live canary ran again)
    assert status()["open_batches"] == []


def test_units_all_in_an_open_batch_need_no_canary(project: Path, xai_server: XaiSimulator) -> None:
    """Every remaining unit is in a batch `go --batch --no-wait` left at xAI: there is nothing
    for a new run to buy, so preflight says where they are and how to collect them, and
    spends nothing."""
    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 150)
    write_receipt(project, batch=BATCH_OK, approved_ticks=10**12)
    xai_server.scenario.batch.delay_s = 10**6
    code, _, err = knrun("go", "--batch", "--no-wait")
    assert code == 0, err
    assert xai_server.batch.stats.added == eligible
    billed = xai_server.stats.billed_ticks
    code, out, err = knrun("preflight")
    assert code == 0, out + err
    assert f"{eligible:,} more are in open batches" in out and "knrun batch collect" in out
    assert xai_server.stats.billed_ticks == billed
