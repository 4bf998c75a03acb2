"""A small `knrun go` against Cloudflare's own D1 engine (workerd, through Miniflare): migrate,
run, status, all over the REST API, with nothing of this project's D1 simulator in the way.
The store contract suite runs against workerd too (the "workerd" backend in conftest)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import plain_units, refresh_pricing_dates, seed_units, write_receipt
from knrun.cli import app
from knrun.sim.xai import XaiSimulator
from workerd_d1 import RestConnection, WorkerdD1


def knrun(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def on_workerd(
    project: Path, workerd_d1: WorkerdD1, monkeypatch: pytest.MonkeyPatch
) -> RestConnection:
    conn = RestConnection(workerd_d1)
    conn.reset()
    for name, value in {
        "KNRUN_STORE": "d1",
        "CLOUDFLARE_ACCOUNT_ID": workerd_d1.account_id,
        "CLOUDFLARE_API_TOKEN": workerd_d1.api_token,
        "D1_DATABASE_ID": workerd_d1.database_id,
        "CLOUDFLARE_API_BASE_URL": workerd_d1.base_url,
    }.items():
        monkeypatch.setenv(name, value)
    refresh_pricing_dates(project / "pricing.toml")
    return conn


def test_a_small_go_on_workerd_writes_every_unit_once_and_counts_every_tick(
    on_workerd: RestConnection, xai_server: XaiSimulator, project: Path
) -> None:
    seed_units(on_workerd, plain_units(120))  # type: ignore[arg-type]
    code, out, err = knrun("db", "migrate")
    assert code == 0 and "d1: added" in out, err
    write_receipt(project)
    code, out, err = knrun("go")
    assert code == 0, err
    assert "all eligible units processed" in out
    rows = on_workerd.execute(
        "SELECT COUNT(*), SUM(kn_attempts), SUM(kn_lease_owner IS NOT NULL) FROM units "
        "WHERE kn_prompt_version = '1.6'"
    ).fetchall()
    assert rows == [(120, 120, 0)]
    code, out, err = knrun("status", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["done"] == report["total"] == 120 and report["remaining"] == 0
    assert report["spent_ticks"] == xai_server.stats.billed_ticks  # to the tick
    assert report["requests"] == xai_server.stats.paid_requests == 120
    spool = sqlite3.connect(".knrun/spool.sqlite")
    assert spool.execute("SELECT COUNT(*) FROM spool").fetchone() == (0,)
    spool.close()
