"""`knrun retry` for cron: failed units are re-run, exhausted ones are reported, two retries never
overlap, and its own checks refuse to spend on stale prices."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clirun import fail_units, knrun
from conftest import prepare_units, refresh_pricing_dates
from knrun.sim.xai import XaiSimulator


def failed_rows() -> list[tuple[int, int]]:
    conn = sqlite3.connect("knrun.sqlite")
    try:
        return conn.execute(
            "SELECT id, kn_attempts FROM units WHERE kn_status = 'failed' ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


@pytest.fixture
def failures(project: Path, xai_server: XaiSimulator) -> XaiSimulator:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 100)
    fail_units(30)
    return xai_server


def test_retry_re_runs_failed_units_only_and_needs_no_receipt(failures: XaiSimulator) -> None:
    code, out, err = knrun("retry")
    assert code == 0, err
    assert re.search(r"1 model current\s+PASS", out) and re.search(r"4 balance\s+PASS", out)
    assert "needs $7.00 = spend cap $2.00 + $5.00 overshoot" in out
    assert "30 units eligible" in out
    assert failed_rows() == [] and failures.stats.paid_requests == 30  # nothing else was touched
    figures = __import__("json").loads(knrun("status", "--json")[1])
    assert figures["done"] == 30 and figures["remaining"] > 0  # never-run units stay for go


def test_units_failing_max_attempts_times_are_left_alone_and_reported(
    project: Path, xai_server: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 100)
    fail_units(5, attempts=3)  # five have failed three times already
    fail_units(25)
    xai_server.force("malformed_json", 8)  # eight of the 25 fail again: not a systematic fault
    code, out, err = knrun("retry", "--max-attempts", "3")
    assert code == 0, err
    assert "25 units eligible" in out
    assert "still failing  13 units (5 failed 3 times: retry leaves them alone)" in out
    assert re.search(r"invalid_json 13: 1, 2, 3, 4, 5, \d+", out)
    assert sorted(attempts for _, attempts in failed_rows()) == [2] * 8 + [3] * 5
    figures = __import__("json").loads(knrun("status", "--json", "--max-attempts", "2")[1])
    assert figures["retry_exhausted"] == 13


def test_a_systematic_failure_stops_the_retry_and_uses_up_no_attempt(
    failures: XaiSimulator,
) -> None:
    """Every reply malformed (a proxy, a model update): the failure-rate guard stops the
    retry well before its 30 units, and the failures it blames on the run give their
    attempts back, so the units are not exhausted by a fault that was never theirs."""
    failures.force("malformed_json", 1000)
    code, _, err = knrun("retry", "--concurrency", "2")
    assert code == 6 and "failure rate: 20 replies in a row failed (invalid_json)" in err
    assert failures.stats.paid_requests <= 22  # stopped within the streak, plus those in flight
    assert [attempts for _, attempts in failed_rows()] == [1] * 30  # no attempt used up


def test_retry_takes_only_failures_a_second_try_can_change(
    project: Path, xai_server: XaiSimulator
) -> None:
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 100)
    fail_units(4, reason="truncated")  # same request, same cap: it would be cut off again
    fail_units(3, reason="refusal")
    fail_units(5, reason="timeout")
    fail_units(2, reason="schema_mismatch", request_hash="an-older-request")  # prompt changed
    code, out, err = knrun("retry")
    assert code == 0, err
    assert "7 units eligible" in out and xai_server.stats.paid_requests == 7
    assert len(failed_rows()) == 7  # the truncated and refused ones, untouched
    code, out, err = knrun("retry", "--all-reasons")
    assert code == 0 and "7 units eligible" in out and failed_rows() == []


def test_retry_without_history_estimates_its_cap_from_the_job(failures: XaiSimulator) -> None:
    """No finished unit to learn from: the cap's worst case comes from the rendered prompts and
    the job's output estimate, so a cap smaller than one unit spends nothing."""
    code, _, err = knrun("retry", "--max-spend", "0.001")
    assert code == 4 and "spend cap reached" in err
    assert failures.stats.chat_requests == 0


def test_retry_refuses_stale_prices_without_spending(failures: XaiSimulator) -> None:
    pricing = Path("pricing.toml")
    pricing.write_text(
        re.sub(r"verified_at = \S+", "verified_at = 2026-04-02", pricing.read_text())
    )
    code, _out, err = knrun("retry")
    assert code == 2 and "retry checks failed at prices true: nothing run" in err
    assert failures.stats.chat_requests == 0


def test_two_retries_started_at_once_one_runs_the_other_exits_saying_who_holds_the_lock(
    failures: XaiSimulator,
) -> None:
    failures.scenario.latency.time_scale = 0.1  # half-second calls: the winner runs a while
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "knrun", "retry", "--concurrency", "5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    ended: dict[int, float] = {}
    while len(ended) < 2:
        for index, process in enumerate(processes):
            if index not in ended and process.poll() is not None:
                ended[index] = time.monotonic() - started
        assert time.monotonic() - started < 60
        time.sleep(0.02)
    outputs = [process.communicate() for process in processes]
    codes = [process.returncode for process in processes]
    assert sorted(codes) == [0, 2]
    loser, winner = (codes.index(2), codes.index(0))
    assert "a knrun run already holds .knrun/run.lock" in outputs[loser][1]
    assert '"command": "knrun retry"' in outputs[loser][1]
    assert ended[loser] < ended[winner]  # it did not wait for the lock: it left at once
    assert failed_rows() == []
    assert failures.stats.paid_requests == 30  # no unit was paid for twice
