"""`knrun status`: the report's figures from progress and the runs table, and the documented
JSON shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from conftest import prepare_units
from knrun.cli import app
from knrun.commands.status import status_report
from knrun.job import JobSpec
from knrun.store.types import Progress, RunRecord

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def stamp(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")


def run(
    run_id: str,
    kind: str,
    *,
    started: float,
    updated: float,
    ended: float | None = None,
    units: int = 0,
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        kind=kind,
        job="kn",
        version="1.6",
        model="m",
        prompt_hash="h",
        host="x",
        started_at=stamp(started),
        updated_at=stamp(updated),
        ended_at=stamp(ended) if ended is not None else None,
        state="finished" if ended is not None else "running",
        units_ok=units,
        billed_ticks=10**8,
        exit_code=0 if ended is not None else None,
        exit_reason="all eligible units processed" if ended is not None else None,
    )


def progress(remaining: int) -> Progress:
    return Progress("1.6", 1000, 1000 - remaining, 0, remaining, 0, 0, 0, None, None, None)


def test_eta_comes_from_the_last_runs_rate(job: JobSpec) -> None:
    runs = [run("r2", "go", started=30, updated=0, units=600)]
    report = status_report(job, "d1", progress(400), runs, now=NOW)
    assert report["rate_per_min"] == 20.0 and report["eta_minutes"] == 20.0
    assert report["current_runs"][0]["state"] == "running"


def test_a_running_run_that_stopped_reporting_is_shown_as_stale(job: JobSpec) -> None:
    runs = [
        run("dead", "go", started=90, updated=45, units=100),
        run("old", "go", started=300, updated=200, ended=200, units=50),
    ]
    report = status_report(job, "d1", progress(10), runs, now=NOW)
    [current] = report["current_runs"]
    assert current["run_id"] == "dead" and current["state"] == "stale"
    assert report["last_run"]["run_id"] == "dead"


def test_preflight_records_do_not_count_as_runs(job: JobSpec) -> None:
    runs = [run("p", "preflight", started=5, updated=5, ended=5, units=0)]
    report = status_report(job, "d1", progress(10), runs, now=NOW)
    assert (
        report["current_runs"] == []
        and report["last_run"] is None
        and report["eta_minutes"] is None
    )


def test_status_json_is_valid_with_the_documented_fields(project: Path) -> None:
    prepare_units(project, 40)
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    documented = {
        "job",
        "version",
        "model",
        "store",
        "total",
        "done",
        "failed",
        "remaining",
        "leased",
        "retry_exhausted",
        "max_attempts",
        "failed_by_reason",
        "spent_usd",
        "spent_ticks",
        "spent_max_usd",
        "billed_usd",
        "tracked_usd",
        "requests",
        "unbilled_replies",
        "unbilled_tracked_usd",
        "possibly_billed_requests",
        "possibly_billed_usd",
        "possibly_billed_expected_usd",
        "spool_pending_spent_max_usd",
        "in_flight_requests",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "reasoning_tokens",
        "cache_share",
        "done_cost_usd",
        "cost_per_unit_usd",
        "avg_input_tokens",
        "avg_output_tokens",
        "last_processed_at",
        "counted_s_ago",
        "figures_reused",
        "spool_pending",
        "spool_quarantined",
        "spool_pending_other_versions",
        "current_runs",
        "dead_runs",
        "open_batches",
        "last_run",
        "rate_per_min",
        "eta_minutes",
    }
    assert set(report) == documented
    assert report["remaining"] == report["total"] > 0 and report["max_attempts"] == 3


def test_money_in_json_is_a_plain_decimal_string_never_an_exponent() -> None:
    from knrun.commands.status import usd

    assert (
        usd(10 * 10**10) == "10" and usd(200 * 10**10) == "200" and usd(17_264_000) == "0.0017264"
    )
