"""`knrun report`, `knrun show ID` and `knrun export` through the CLI, on a SQLite store filled
by a real `knrun go` against the xAI simulator (5% malformed replies, so some units fail), and
export again through the D1 simulator's REST API."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import (
    ENV_PREFIXES,
    EXAMPLE_CHECKLIST,
    EXAMPLE_JOB,
    EXAMPLE_PRICING,
    prepare_units,
    refresh_pricing_dates,
    write_receipt,
)
from knrun.cli import app
from knrun.commands import export as export_command
from knrun.job import load_job
from knrun.pricing import format_usd, usd_to_ticks
from knrun.sim.d1 import D1Simulator
from knrun.sim.scenario import Scenario
from knrun.sim.server import serve_in_thread
from knrun.sim.xai import XaiSimulator

runner = CliRunner()


def knrun(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after one `knrun go` of 120 units against the simulator, once per module."""
    project = tmp_path_factory.mktemp("ran")
    (project / "prompts").mkdir()
    shutil.copy(EXAMPLE_JOB, project / "prompts" / EXAMPLE_JOB.name)
    shutil.copy(EXAMPLE_PRICING, project / "pricing.toml")
    shutil.copy(EXAMPLE_CHECKLIST, project / "checklist.md")
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 120)
    write_receipt(project)
    sim = XaiSimulator(Scenario(latency={"time_scale": 0.001}))
    sim.scenario.faults.malformed_json = 0.05
    with pytest.MonkeyPatch.context() as mp, serve_in_thread(sim) as origin:
        for name in list(os.environ):
            if name.startswith(ENV_PREFIXES):
                mp.delenv(name)
        mp.setenv("KNRUN_SIM_TIME_SCALE", "0.01")
        mp.setenv("XAI_BASE_URL", f"{origin}/v1")
        mp.setenv("XAI_MANAGEMENT_BASE_URL", origin)
        mp.setenv("XAI_API_KEY", sim.scenario.api_key)
        mp.setenv("XAI_MANAGEMENT_KEY", sim.scenario.management_key)
        mp.chdir(project)
        code, _, err = knrun("go")
        assert code == 0, err
    assert sim.stats.outcomes["malformed_json"] > 0  # some units failed: every chart has data
    return project


@pytest.fixture
def after_run(ran: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the run's project as the working folder (a test may change it)."""
    project = tmp_path / "project"
    shutil.copytree(ran, project)
    monkeypatch.chdir(project)
    return project


def query(sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = sqlite3.connect("knrun.sqlite")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def done_units() -> list[dict[str, Any]]:
    return query("SELECT * FROM units WHERE kn_prompt_version = '1.6' ORDER BY rowid")


# -- report ---------------------------------------------------------------------------------------


def test_report_writes_one_self_contained_html_file_with_charts_per_run(after_run: Path) -> None:
    code, out, err = knrun("report")
    assert code == 0, err
    assert out.strip() == "knrun-report-kn.html"
    page = Path("knrun-report-kn.html").read_text()
    # Nothing to fetch: no script, no stylesheet or image from elsewhere, no URL but the SVG
    # namespace names (identifiers, never requested).
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", page)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    runs = query("SELECT DISTINCT run_id FROM knrun_charges")
    assert runs
    assert page.count("<svg") == 1 + len(runs)  # the corpus, then each run
    for title in (
        "Spend and units over time",
        "Throughput and latency",
        "Prompt cache share",
        "Failed requests by reason",
    ):
        assert page.count(title) == 1 + len(runs)
    assert "invalid_json" in page


def test_report_corpus_money_is_the_store_s_own_sum(after_run: Path) -> None:
    code, out, err = knrun("status", "--json")
    assert code == 0, err
    spent = usd_to_ticks(Decimal(json.loads(out)["spent_usd"]))
    assert spent > 0
    assert knrun("report", "-o", "r.html")[0] == 0
    page = Path("r.html").read_text()
    corpus = page.split("The corpus", 1)[1].split("<svg", 1)[0]
    assert f"<th>spent</th><td class='n'>{format_usd(spent)}</td>" in corpus


def test_report_into_a_missing_folder_is_one_error_line_and_exit_2(after_run: Path) -> None:
    code, _, err = knrun("report", "-o", "no/such/folder/r.html")
    assert code == 2
    assert err.startswith("error: cannot write the report") and err.count("\n") == 1


def browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    browser() is None, reason="no headless Chromium installed (apt-get install chromium)"
)
def test_report_renders_its_charts_in_a_headless_browser(after_run: Path, tmp_path: Path) -> None:
    assert knrun("report", "-o", "r.html")[0] == 0
    chromium = browser()
    assert chromium is not None
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    page = (after_run / "r.html").as_uri()
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120
    ).stdout
    # The browser parsed the page and built every chart as SVG with its drawn paths and text:
    # the corpus's, and each run's.
    [runs] = query("SELECT COUNT(DISTINCT run_id) AS n FROM knrun_charges")
    assert dom.count("<svg") == 1 + runs["n"]
    assert dom.count("<path") > 100 and "Failed requests by reason" in dom
    shot = tmp_path / "r.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1280,2000", page],
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


# -- show -----------------------------------------------------------------------------------------


def test_show_prints_the_rendered_prompt_the_result_and_the_charges(after_run: Path) -> None:
    unit = done_units()[0]
    code, out, err = knrun("show", str(unit["id"]))
    assert code == 0, err
    assert f"Unit code: {unit['unit_code']}" in out and f"Title: {unit['title']}" in out
    assert "Reply only with the JSON" in out  # the system prompt
    assert unit["kn_overview"][:40] in out
    assert unit["kn_run_id"] in out and "grok-4.3" in out


def test_show_json_has_the_messages_the_job_renders_and_each_request_s_cost(
    after_run: Path,
) -> None:
    unit = done_units()[3]
    code, out, err = knrun("show", str(unit["id"]), "--json")
    assert code == 0, err
    view = json.loads(out)
    job = load_job(after_run / "prompts" / EXAMPLE_JOB.name)
    inputs = {column: unit[column] for column in ["id", *job.source.columns]}
    assert view["messages"] == job.render(inputs)
    assert view["state"] == "done" and view["result"]["overview"] == unit["kn_overview"]
    [charge] = view["charges"]
    assert charge["run_id"] == unit["kn_run_id"] and charge["model"] == "grok-4.3"
    assert charge["outcome"] == "done" and charge["cost_basis"] == "billed"
    # Exact: the cost is decimal text, never a float's rounding.
    assert charge["cost_usd"] == format(Decimal(unit["kn_cost_ticks"]).scaleb(-10).normalize(), "f")
    assert charge["input_tokens"] == unit["kn_input_tokens"]


def test_show_a_failed_unit_gives_its_reason(after_run: Path) -> None:
    [failed] = query("SELECT id, kn_error FROM units WHERE kn_status = 'failed' LIMIT 1")
    code, out, _ = knrun("show", str(failed["id"]), "--json")
    assert code == 0
    view = json.loads(out)
    assert view["state"] == "failed" and view["error"].startswith("invalid_json")
    assert view["result"] is None
    assert [c["outcome"] for c in view["charges"]] == ["invalid_json"]


def test_show_an_unknown_id_is_one_error_line_and_exit_2(after_run: Path) -> None:
    code, out, err = knrun("show", "999999")
    assert code == 2 and out == ""
    assert err == "error: no unit with id '999999' in table units\n"


# -- export ---------------------------------------------------------------------------------------


def test_export_jsonl_is_every_done_unit_s_id_and_result_fields(after_run: Path) -> None:
    code, out, err = knrun("export")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    units = done_units()
    assert [line["id"] for line in lines] == [unit["id"] for unit in units]
    fields = [
        "overview",
        "key_knowledge",
        "workplace_application",
        "worked_example",
        "common_mistakes",
        "self_check",
    ]
    assert list(lines[0]) == ["id", *fields]
    assert all(
        line[f] == unit[f"kn_{f}"] for line, unit in zip(lines, units, strict=True) for f in fields
    )
    # The failed units are not in it.
    failed = {row["id"] for row in query("SELECT id FROM units WHERE kn_status = 'failed'")}
    assert failed and not failed & {line["id"] for line in lines}


def test_export_streams_in_pages_with_the_same_output(
    after_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = knrun("export")[1]
    monkeypatch.setattr(export_command, "PAGE", 7)
    assert knrun("export")[1] == whole


def test_export_csv_to_a_file_has_a_header_and_one_row_per_done_unit(after_run: Path) -> None:
    code, _, err = knrun("export", "--format", "csv", "-o", "results.csv")
    assert code == 0, err
    assert re.fullmatch(r"\d+ units written to results.csv\n", err)
    rows = list(csv.DictReader(io.StringIO(Path("results.csv").read_text())))
    units = done_units()
    assert [int(row["id"]) for row in rows] == [unit["id"] for unit in units]
    assert rows[5]["self_check"] == units[5]["kn_self_check"]


def test_export_all_gives_every_unit_s_state_and_only_this_version_s_results(
    after_run: Path,
) -> None:
    code, out, _ = knrun("export", "--all")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    states = {line["knrun_state"] for line in lines}
    assert states == {"done", "failed"}
    failed = [line for line in lines if line["knrun_state"] == "failed"]
    assert all(line["overview"] is None and line["knrun_error"] for line in failed)
    assert len(lines) == len(
        query("SELECT id FROM units WHERE status = 'Current' AND restricted_access = 0")
    )


def test_export_an_unknown_format_is_exit_2(after_run: Path) -> None:
    code, _, err = knrun("export", "--format", "xml")
    assert code == 2 and err == "error: --format must be jsonl or csv, not 'xml'\n"


def test_export_and_show_through_d1_match_the_sqlite_store_s(
    after_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = knrun("export", "--format", "csv")[1]
    unit_id = str(done_units()[7]["id"])
    local_unit = knrun("show", unit_id, "--json")[1]
    d1 = D1Simulator(after_run / "knrun.sqlite")  # the same units, behind the D1 REST API
    with serve_in_thread(d1) as origin:
        for name, value in {
            "KNRUN_STORE": "d1",
            "CLOUDFLARE_ACCOUNT_ID": d1.account_id,
            "CLOUDFLARE_API_TOKEN": d1.api_token,
            "D1_DATABASE_ID": d1.database_id,
            "CLOUDFLARE_API_BASE_URL": d1.base_url(origin),
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(export_command, "PAGE", 25)
        code, remote, err = knrun("export", "--format", "csv")
        remote_unit = knrun("show", unit_id, "--json")[1]
    assert code == 0, err
    assert json.loads(remote_unit) == json.loads(local_unit)
    assert remote == local and remote.count("\n") > 50
    assert d1.stats.requests >= len(done_units()) // 25


def test_report_before_any_run_says_there_is_nothing_yet(project: Path) -> None:
    prepare_units(project, 30)
    code, out, err = knrun("report", "-o", "empty.html")
    assert out == "empty.html\n"
    assert code == 0, err
    page = Path("empty.html").read_text()
    assert page.count("<svg") == 1  # the corpus only
    assert "no charges recorded" in page and "no failed requests" in page
    assert "no runs recorded" in page


def test_export_into_a_pipe_closed_early_ends_quietly_with_exit_0(after_run: Path) -> None:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}
    env["KNRUN_STORE"] = "sqlite:knrun.sqlite"
    with subprocess.Popen(
        [sys.executable, "-m", "knrun", "export"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert json.loads(process.stdout.readline())["id"] == done_units()[0]["id"]
        process.stdout.close()  # like `head -1`
        err = process.stderr.read()
        assert process.wait(timeout=60) == 0
    assert err == b""
