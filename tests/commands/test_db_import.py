"""`knrun db import` into D1, through the CLI against the D1 simulator on a port: all rows or
none, in batches within D1's limits, ids checked as the SQLite import checks them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from knrun.cli import app
from knrun.commands import db_import
from knrun.sim.corpus import write_jsonl
from knrun.sim.d1 import D1Fault, D1Simulator
from knrun.sim.server import serve_in_thread

runner = CliRunner()


def knrun(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def d1(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[D1Simulator]:
    sim = D1Simulator(project / "d1.sqlite")
    with serve_in_thread(sim) as origin:
        monkeypatch.setenv("CLOUDFLARE_API_BASE_URL", sim.base_url(origin))
        monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", sim.account_id)
        monkeypatch.setenv("CLOUDFLARE_API_TOKEN", sim.api_token)
        monkeypatch.setenv("D1_DATABASE_ID", sim.database_id)
        monkeypatch.setenv("KNRUN_STORE", "d1")
        yield sim


def tables(project: Path) -> set[str]:
    conn = sqlite3.connect(project / "d1.sqlite")
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()


def count(project: Path, sql: str) -> Any:
    conn = sqlite3.connect(project / "d1.sqlite")
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def test_import_into_d1_in_batches_then_migrate_and_reimport_keeps_results(
    project: Path, d1: D1Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_import, "CHUNK_BYTES", 20_000)  # several staging requests
    write_jsonl(project / "units.jsonl", 60)
    code, out, err = knrun("db", "import", "units.jsonl")
    assert code == 0, err
    assert "60 rows into d1 table units (60 new, 0 updated, table created)" in out
    assert d1.stats.requests >= 5  # staged in batches, applied once
    assert count(project, "SELECT COUNT(*) FROM units") == 60
    assert db_import.STAGING not in tables(project)
    assert knrun("db", "migrate")[0] == 0
    conn = sqlite3.connect(project / "d1.sqlite")
    conn.execute("UPDATE units SET kn_status = 'done' WHERE id = 1")
    conn.commit()
    conn.close()
    lines = (project / "units.jsonl").read_text().splitlines()
    first = json.loads(lines[0]) | {"title": "Renamed"}
    extra = json.loads(lines[1]) | {"id": 10_000}
    (project / "again.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(extra) + "\n")
    code, out, err = knrun("db", "import", "again.jsonl")
    assert code == 0, err
    assert "(1 new, 1 updated)" in out
    assert count(project, "SELECT title FROM units WHERE id = 1") == "Renamed"
    assert count(project, "SELECT kn_status FROM units WHERE id = 1") == "done"
    assert count(project, "SELECT COUNT(*) FROM units") == 61


@pytest.mark.parametrize("where", ["json_each", "NOT IN"])
def test_a_d1_import_failing_midway_leaves_nothing_imported(
    project: Path, d1: D1Simulator, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setattr(db_import, "CHUNK_BYTES", 20_000)
    write_jsonl(project / "units.jsonl", 60)
    d1.faults.append(D1Fault("db_full", only_if=where))
    code, _, err = knrun("db", "import", "units.jsonl")
    assert code == 1 and err.startswith("error: d1: import failed")
    assert "units" not in tables(project) and db_import.STAGING not in tables(project)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"id": 1, "unit_code": "A"}\n{"id": 1, "unit_code": "B"}\n', "duplicate id 1"),
        ('{"id": "", "unit_code": "A"}\n', "empty id"),
    ],
)
def test_a_d1_import_checks_ids_before_sending_anything(
    project: Path, d1: D1Simulator, lines: str, message: str
) -> None:
    write_jsonl(project / "units.jsonl", 1)
    row = json.loads((project / "units.jsonl").read_text())
    text = "".join(json.dumps(row | json.loads(line)) + "\n" for line in lines.splitlines())
    (project / "bad.jsonl").write_text(text)
    code, _, err = knrun("db", "import", "bad.jsonl")
    assert code == 2 and message in err
    assert d1.stats.requests == 0
