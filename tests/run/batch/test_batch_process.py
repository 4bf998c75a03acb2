"""`knrun go --batch` as a real process, killed with -9 while it adds requests, right after its
last add, and while it collects results, then started again: each start re-attaches to the batch
through the runs table, adds only what xAI does not hold, and collects the rest. Judged by what
xAI billed against what reached the store, and by requests added twice."""

from __future__ import annotations

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


def test_kill_9_while_adding_right_after_adding_and_while_collecting_then_finish(
    project: Path, served: XaiSimulator
) -> None:
    """Three lives cut by kill -9, each at another moment, then a fourth that finishes: one
    batch, nothing added twice (an add cut by a kill may have landed: xAI's own list, once it
    has caught up, says), every result xAI billed written once."""
    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 2000)
    write_receipt(project, batch={"accepted": True}, approved_ticks=10**12)
    behaviour = served.scenario.batch
    behaviour.delay_s = 100  # 1-3 s real from each add: the first results open the gate
    behaviour.add_latency_s = 20  # 0.4 s real a call: a kill lands mid-submission
    stats = served.batch.stats
    kill_when(lambda: stats.added >= 500)
    assert stats.added < eligible
    kill_when(lambda: stats.added >= eligible)  # the moment the last add is answered
    assert done_units() < eligible
    behaviour.add_latency_s = 0
    kill_when(lambda: done_units() >= eligible - 400)
    assert done_units() < eligible
    finish()
    assert_every_unit_once(served, eligible)
