"""`knrun go` as a real process: killed with -9 mid-run and restarted, interrupted with SIGINT,
and run against a D1 store that refuses writes for a while."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import prepare_units, refresh_pricing_dates, write_receipt
from knrun.cli import app
from knrun.sim.d1 import D1Fault, D1Simulator
from knrun.sim.server import serve_in_thread
from knrun.sim.xai import XaiSimulator


def start_go(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        # A pool of 50: the paid-twice bound below is what is in flight at each kill.
        [sys.executable, "-m", "knrun", "go", "--concurrency", "50", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def query(sql: str, path: str = "knrun.sqlite") -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_kill_9_five_times_then_finish_every_unit_done_once_nothing_paid_lost(
    project: Path, served: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 2000)
    write_receipt(project)
    rng = random.Random(2026)
    killed_runs = 0
    for _ in range(5):
        process = start_go("--max-spend", "100")
        deadline = time.monotonic() + 30
        target = served.stats.paid_requests + rng.randint(40, 300)
        while served.stats.paid_requests < target and process.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed_runs += 1
        process.communicate(timeout=30)
    assert killed_runs == 5
    final = start_go("--max-spend", "100")
    _out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err

    done = query("SELECT COUNT(*) FROM units WHERE kn_prompt_version = '1.6' AND kn_attempts = 1")
    assert done == [(eligible,)]
    assert query("SELECT COUNT(*) FROM units WHERE kn_lease_owner IS NOT NULL") == [(0,)]
    assert query("SELECT COUNT(*) FROM spool", ".knrun/spool.sqlite") == [(0,)]
    # Results the killed runs paid for and spooled reached the store (replayed at the next
    # start) instead of being bought again.
    by_run = dict(
        query("SELECT kn_run_id, COUNT(*) FROM units WHERE kn_run_id IS NOT NULL GROUP BY 1")
    )
    assert len(by_run) >= 2
    # Paid twice: only replies lost in flight at a kill, at most 50 (the concurrency) per kill.
    paid = served.stats.paid_by_prompt
    assert len(paid) == eligible
    duplicates = sum(paid.values()) - eligible
    assert 0 <= duplicates <= 5 * 50
    # Money in `status` is the truth after the kills: every request knrun saw a reply for is in
    # the store's charges at its bill, and every request in flight at a kill was marked before
    # it went, so it is there too, possibly billed: at its worst case the total covers xAI's
    # bill, and at its expected cost (the run's average) it is close to it.
    report = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)
    billed = served.stats.billed_ticks
    per_request = billed // served.stats.paid_requests
    assert report["possibly_billed_requests"] >= duplicates
    assert usd_ticks(report["spent_max_usd"]) >= billed
    marked = report["possibly_billed_requests"]
    gap = report["spent_ticks"] - billed  # a marked request may not have got out: over, then
    assert -marked * per_request // 4 <= gap <= marked * per_request * 5 // 4, (billed, report)
    # And the runs that were killed are known as dead, not left "running" for ever.
    assert len(report["dead_runs"]) == 5 and report["current_runs"] == []


def test_sigint_finishes_in_flight_work_releases_leases_and_records_the_run(
    project: Path, served: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 500)
    write_receipt(project)
    served.scenario.latency.time_scale = 0.1  # about half a second a call
    process = start_go()
    deadline = time.monotonic() + 30
    while served.stats.paid_requests < 60:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err
    assert query("SELECT COUNT(*) FROM units WHERE kn_lease_owner IS NOT NULL") == [(0,)]
    [(state, code, units_ok, billed)] = query(
        "SELECT state, exit_code, units_ok, billed_ticks FROM knrun_runs WHERE kind = 'go'"
    )
    assert (state, code) == ("finished", 130)
    # In-flight requests were allowed to finish: everything paid is in the store.
    assert units_ok == served.stats.paid_requests
    assert billed == served.stats.billed_ticks
    assert query("SELECT COUNT(*) FROM units WHERE kn_prompt_version = '1.6'") == [(units_ok,)]


def test_a_second_sigint_abandons_in_flight_requests_at_once(
    project: Path, served: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 300)
    write_receipt(project)
    served.scenario.latency.time_scale = 2.0  # ten-second calls: only abandoning is quick
    process = start_go()
    deadline = time.monotonic() + 30
    while served.stats.in_flight < 40:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=30)
    assert process.returncode == 130
    assert time.monotonic() - started < 5
    # Every request xAI accepted (and billed) was cut off unanswered: knrun's books must cover
    # them, before any other start, as possibly billed at their worst case.
    billed = served.stats.billed_ticks
    figures = json.loads(CliRunner().invoke(app, ["status", "--json", "--fresh"]).stdout)
    assert figures["possibly_billed_requests"] >= served.stats.abandoned_requests >= 40
    assert usd_ticks(figures["spent_max_usd"]) >= billed


def usd_ticks(usd: str) -> int:
    from decimal import Decimal

    return int(Decimal(usd) * 10**10)


def test_a_kill_9_in_flight_leaves_every_billed_request_counted(
    project: Path, served: XaiSimulator
) -> None:
    """Requests in flight at a kill -9 were billed by xAI and will never be answered: they were
    marked in the spool before they went, so `status` counts them at once, and the next start
    writes them to the store's charges."""
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 300)
    write_receipt(project)
    served.scenario.latency.time_scale = 2.0  # ten-second calls: they are in flight at the kill
    process = start_go()
    deadline = time.monotonic() + 30
    while served.stats.in_flight < 40:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    billed = served.stats.billed_ticks
    figures = json.loads(CliRunner().invoke(app, ["status", "--json", "--fresh"]).stdout)
    assert figures["in_flight_requests"] >= 40
    assert usd_ticks(figures["spent_max_usd"]) >= billed
    served.scenario.latency.time_scale = 0.001
    code = CliRunner().invoke(app, ["go", "--max-spend", "0.001"]).exit_code
    assert code == 4  # it settled the marks first, then found no room: nothing more bought
    figures = json.loads(CliRunner().invoke(app, ["status", "--json", "--fresh"]).stdout)
    assert figures["in_flight_requests"] == 0 and figures["spool_pending"] == 0
    assert usd_ticks(figures["spent_max_usd"]) >= billed  # now from the store's charges


def test_a_d1_store_refusing_writes_pauses_writing_not_generation_and_loses_nothing(
    project: Path, monkeypatch: pytest.MonkeyPatch, xai_server: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 300)
    write_receipt(project)
    d1 = D1Simulator(project / "knrun.sqlite")  # the units, now behind the D1 REST API
    xai_server.scenario.latency.time_scale = 0.01
    outage_paid: list[int] = []

    def refuse_result_writes_for_a_while() -> None:
        while d1.stats.write_requests < 3:
            time.sleep(0.005)
        d1.outage = D1Fault("unavailable", only_if='"kn_overview"')  # result writes only
        before = xai_server.stats.paid_requests
        time.sleep(2.0)
        outage_paid.append(xai_server.stats.paid_requests - before)
        d1.outage = None

    with serve_in_thread(d1) as origin:
        for name, value in {
            "KNRUN_STORE": "d1",
            "CLOUDFLARE_ACCOUNT_ID": d1.account_id,
            "CLOUDFLARE_API_TOKEN": d1.api_token,
            "D1_DATABASE_ID": d1.database_id,
            "CLOUDFLARE_API_BASE_URL": d1.base_url(origin),
        }.items():
            monkeypatch.setenv(name, value)
        watcher = threading.Thread(target=refuse_result_writes_for_a_while, daemon=True)
        watcher.start()
        result = CliRunner().invoke(app, ["go"])
        watcher.join(timeout=10)
        assert result.exit_code == 0, result.stderr
        assert d1.stats.refused > 0  # the outage really happened
        assert outage_paid and outage_paid[0] > 0  # and generation went on during it
        status = json.loads(CliRunner().invoke(app, ["status", "--json"]).stdout)
    assert status["done"] == eligible and status["failed"] == 0
    assert query("SELECT COUNT(*) FROM spool", ".knrun/spool.sqlite") == [(0,)]
    assert xai_server.stats.paid_requests == eligible  # nothing was paid for twice
    assert os.path.exists(".knrun/spool.sqlite")


def test_kill_9_five_times_on_d1_with_a_second_runner_on_a_copied_folder(
    project: Path, served: XaiSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole of it at once: 2,000 units on D1 (over REST), a second runner in a copy of
    the folder (same folder id, same host) working all along, and the first one killed -9 five
    times and restarted. Every unit is done once, nothing paid is lost, and only requests in
    flight at a kill are bought twice."""
    import shutil

    refresh_pricing_dates(project / "pricing.toml")
    eligible = prepare_units(project, 2200)
    write_receipt(project)
    copy = project.parent / f"{project.name}-copy"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("knrun.sqlite*"))
    d1 = D1Simulator(project / "knrun.sqlite")
    rng = random.Random(2027)
    with serve_in_thread(d1) as origin:
        for name, value in {
            "KNRUN_STORE": "d1",
            "CLOUDFLARE_ACCOUNT_ID": d1.account_id,
            "CLOUDFLARE_API_TOKEN": d1.api_token,
            "D1_DATABASE_ID": d1.database_id,
            "CLOUDFLARE_API_BASE_URL": d1.base_url(origin),
        }.items():
            monkeypatch.setenv(name, value)

        def go(folder: Path) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-m", "knrun", "go", "--max-spend", "100"],
                cwd=folder,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        second = go(copy)
        kills = 0
        for _ in range(5):
            first = go(project)
            deadline = time.monotonic() + 60
            target = served.stats.paid_requests + rng.randint(40, 200)
            while served.stats.paid_requests < target and first.poll() is None:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.01)
            if first.poll() is None:
                first.send_signal(signal.SIGKILL)
                kills += 1
            first.communicate(timeout=30)
        final = go(project)
        outputs = [final.communicate(timeout=300), second.communicate(timeout=300)]
        assert kills == 5
        assert [final.returncode, second.returncode] == [0, 0], outputs
        report = json.loads(CliRunner().invoke(app, ["status", "--json", "--fresh"]).stdout)
    done = query("SELECT COUNT(*) FROM units WHERE kn_prompt_version = '1.6' AND kn_attempts = 1")
    assert done == [(eligible,)]  # every unit written once
    assert query("SELECT COUNT(*) FROM units WHERE kn_lease_owner IS NOT NULL") == [(0,)]
    for folder in (project, copy):
        assert query("SELECT COUNT(*) FROM spool", folder / ".knrun/spool.sqlite") == [(0,)]
    paid = served.stats.paid_by_prompt
    assert len(paid) == eligible
    duplicates = sum(paid.values()) - eligible
    assert 0 <= duplicates <= 5 * 50  # only what was in flight at a kill
    # Money: `status` holds every request knrun got a reply for, and every request in flight at
    # a kill as possibly billed (marked before it went): at the worst case it covers xAI's bill.
    billed = served.stats.billed_ticks
    per_request = billed // served.stats.paid_requests
    assert usd_ticks(report["spent_max_usd"]) >= billed
    marked = report["possibly_billed_requests"]
    assert marked >= duplicates
    # At its expected cost: a marked request is counted whether or not it got out before the
    # kill, so the figure may be over by the marks, and is under by no more than their spread.
    gap = report["spent_ticks"] - billed
    assert -marked * per_request // 4 <= gap <= marked * per_request * 5 // 4, (billed, report)
    assert report["requests"] >= served.stats.paid_requests
