"""`knrun demo`: each scenario ends with the exit code and message the design promises, and
leaves the store consistent (no leases, every unit accounted for, nothing stuck in the spool)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knrun.cli import app


def demo(folder: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["demo", "--dir", str(folder), "--units", "120", *args])
    return result.exit_code, result.stdout, result.stderr


def consistent(store: Path) -> dict[str, int]:
    """Leases all given back, every unit done, failed or remaining, the spool drained."""
    conn = sqlite3.connect(store)
    where = "status = 'Current' AND restricted_access = 0"
    total, done, failed, leased = conn.execute(
        f"SELECT COUNT(*), SUM(kn_prompt_version = '1.6'), "
        f"SUM(kn_status = 'failed' AND kn_status_version = '1.6' AND kn_prompt_version IS NULL), "
        f"SUM(kn_lease_owner IS NOT NULL) FROM units WHERE {where}"
    ).fetchone()
    conn.close()
    assert leased == 0
    spool = store.parent / ".knrun" / "spool.sqlite"
    if spool.exists():
        assert sqlite3.connect(spool).execute("SELECT COUNT(*) FROM spool").fetchone() == (0,)
    return {"total": total, "done": done or 0, "failed": failed or 0}


def test_the_normal_demo_runs_the_real_pipeline_over_d1_and_finishes(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    code, out, err = demo(folder)
    assert code == 0, err
    for command in (
        "$ knrun db migrate",
        "$ knrun pricing sync",
        "$ knrun preflight",
        "$ knrun go",
        "$ knrun status",
    ):
        assert command in out
    assert "6 receipt" in out and "all eligible units processed" in out
    figures = consistent(folder / "d1.sqlite")
    assert figures["done"] == figures["total"] > 90
    assert "| go " in (folder / "checklist.md").read_text()


def test_the_incident_is_refused_at_preflight_step_1_and_nothing_is_spent(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    code, out, err = demo(folder, "--scenario", "incident")
    assert code == 2
    assert "1 model current          FAIL  grok-3-fast is not on the live model list" in out
    assert "preflight failed at step 1 (model current): no receipt written" in err
    assert "$ knrun go" not in out
    figures = consistent(folder / "d1.sqlite")
    assert figures["done"] == figures["failed"] == 0


def test_credits_running_out_trips_the_breaker_and_fails_no_unit(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    code, _out, err = demo(folder, "--scenario", "credits", "--store", "sqlite")
    assert code == 3
    assert "credit exhausted" in err and "used all available credits" in err
    figures = consistent(folder / "knrun.sqlite")
    assert figures["failed"] == 0 and 0 < figures["done"] < figures["total"]


def test_a_flaky_provider_is_ridden_out_and_retry_picks_up_the_failures(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    code, out, err = demo(folder, "--scenario", "flaky", "--store", "sqlite", "--units", "400")
    assert code == 0, err
    assert "$ knrun retry --max-spend 1" in out
    figures = consistent(folder / "knrun.sqlite")
    assert figures["done"] + figures["failed"] == figures["total"]
    assert figures["failed"] <= 3  # what retry could not fix either


@pytest.mark.parametrize("bad", [["--scenario", "meteor"], ["--store", "postgres"]])
def test_bad_demo_options_are_one_line_and_exit_2(tmp_path: Path, bad: list[str]) -> None:
    code, _, err = demo(tmp_path / "demo", *bad)
    assert code == 2 and err.startswith("error: --")


def test_the_demo_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "important.txt").write_text("keep me")
    code, _, err = demo(tmp_path)
    assert code == 2 and "is not empty" in err
    assert (tmp_path / "important.txt").read_text() == "keep me"
