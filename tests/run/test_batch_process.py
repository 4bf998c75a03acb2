"""`knrun go --batch` as a real process, killed with -9 while it adds requests and again while it
collects results, then started again: the next start re-attaches to the batch through the runs
table, adds only what xAI does not hold, and collects the rest. Judged by what xAI billed
against what reached the store, and by requests added twice."""

from __future__ import annotations

import heapq
import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from conftest import prepare_units, refresh_pricing_dates, write_receipt
from knrun.cli import app
from knrun.sim.xai import XaiSimulator


def done_units() -> int:
    conn = sqlite3.connect("knrun.sqlite")
    try:
        [(n,)] = conn.execute("SELECT COUNT(*) FROM units WHERE kn_status = 'done'").fetchall()
        return int(n)
    finally:
        conn.close()


def kill_when(condition: Callable[[], bool]) -> None:
    """Start `go --batch`, and kill -9 it the moment `condition` holds."""
    process = subprocess.Popen(
        [sys.executable, "-m", "knrun", "go", "--batch"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not condition():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)


def finish() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "knrun", "go", "--batch"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def assert_every_unit_once(served: XaiSimulator, eligible: int) -> None:
    stats = served.batch.stats
    assert stats.created == 1  # both restarts re-attached to the same batch
    assert stats.duplicates == 0 and stats.added == eligible  # nothing added twice
    assert done_units() == eligible
    report = json.loads(CliRunner().invoke(app, ["status", "--json", "--fresh"]).stdout)
    assert report["leased"] == 0 and report["spool_pending"] == 0
    # Every result xAI billed reached the store, once: nothing lost, nothing bought twice.
    assert report["spent_ticks"] == stats.billed_ticks
    assert report["open_batches"] == []


def test_kill_9_while_adding_then_while_collecting_nothing_added_twice_nothing_lost(
    project: Path, served: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 2000)
    write_receipt(project, batch={"accepted": True}, approved_ticks=10**12)
    behaviour = served.scenario.batch
    behaviour.add_latency_s = 20  # 0.4 s a call: the first kill lands mid-submission
    behaviour.delay_s = 10**6  # and nothing finishes while it submits
    kill_when(lambda: served.batch.stats.added >= 500)
    assert served.batch.stats.added < eligible
    # Second life: adds only the rest (an add cut by the kill may have landed anyway: xAI's own
    # list of ids says), then collects; killed once it has written a few hundred results.
    behaviour.add_latency_s = 0
    behaviour.delay_s = 150  # 1.5-4.5 s from each add
    for batch in served.batch.batches.values():  # the first life's requests, due now as well
        batch.queue = [(served.now() + 3.0, order, r) for _, order, r in batch.queue]
        heapq.heapify(batch.queue)
    kill_when(lambda: done_units() >= 300)
    assert served.batch.stats.added == eligible
    assert done_units() < eligible
    finish()
    assert_every_unit_once(served, eligible)
