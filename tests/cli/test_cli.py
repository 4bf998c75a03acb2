"""The command line end to end: exit codes, one-line errors, and what lands in the store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knrun.cli import app

runner = CliRunner()


def knrun(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_import_migrate_status_round_trip(project: Path, units_file: Path) -> None:
    code, out, _ = knrun("db", "import", str(units_file))
    assert code == 0 and "30 rows" in out
    code, out, _ = knrun("db", "migrate")
    assert code == 0 and "added 22 column(s)" in out
    code, out, _ = knrun("db", "migrate")
    assert code == 0 and "already up to date" in out
    code, out, _ = knrun("status", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["job"] == "kn" and report["version"] == "1.6"
    assert report["remaining"] == report["total"] > 0 and report["done"] == 0
    code, out, _ = knrun("status")
    assert code == 0 and "remaining" in out


def test_status_before_migrate_says_what_to_run(project: Path, units_file: Path) -> None:
    knrun("db", "import", str(units_file))
    code, _, err = knrun("status")
    assert code == 2
    assert "run `knrun db migrate`" in one_line_error(err)


def test_a_malformed_job_file_is_one_line_and_exit_2(project: Path) -> None:
    job = project / "prompts" / "kn-1.6.toml"
    job.write_text(job.read_text().replace("temperature = 0.3", 'temperature = "warm"'))
    code, _, err = knrun("status")
    assert code == 2
    assert one_line_error(err) == (
        "error: prompts/kn-1.6.toml: temperature: Input should be a valid number, "
        "unable to parse string as a number"
    )


def test_an_unknown_model_in_the_job_is_one_line_and_exit_2(project: Path) -> None:
    job = project / "prompts" / "kn-1.6.toml"
    job.write_text(job.read_text().replace('model = "grok-4.3"', 'model = "grok-3-fast"'))
    code, _, err = knrun("pricing", "show")
    assert code == 2
    assert "model 'grok-3-fast' is listed as retired" in one_line_error(err)
    job.write_text(job.read_text().replace('model = "grok-3-fast"', 'model = "grok-9-imaginary"'))
    code, _, err = knrun("pricing", "show")
    assert code == 2 and "'grok-9-imaginary' is not priced" in one_line_error(err)


def test_a_missing_credential_is_one_line_and_exit_2(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KNRUN_STORE", "d1")
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "cf-secret-token")
    code, _, err = knrun("status")
    assert code == 2
    line = one_line_error(err)
    assert "CLOUDFLARE_ACCOUNT_ID, D1_DATABASE_ID not set" in line and "cf-secret-token" not in line


def test_a_bad_import_row_is_one_line_exit_2_and_nothing_written(project: Path) -> None:
    source = project / "units.csv"
    source.write_text(
        "id,unit_code,title,application,elements,performance_criteria,knowledge_evidence\n"
        "1,B,t,a,e,p,k\n2,B,t\n"
    )
    code, _, err = knrun("db", "import", "units.csv")
    assert code == 2
    assert one_line_error(err) == "error: units.csv:3: wrong number of fields for the header"
    conn = sqlite3.connect(project / "knrun.sqlite")
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'units'").fetchall() == []


def test_pricing_show_marks_the_jobs_model(project: Path) -> None:
    code, out, _ = knrun("pricing", "show")
    assert code == 0
    assert "* grok-4.3" in out and "retired (refused): grok-3, grok-3-fast" in out


def test_version(project: Path) -> None:
    code, out, _ = knrun("--version")
    assert code == 0 and out.startswith("knrun ")
