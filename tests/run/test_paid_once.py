"""A paid result is never lost or bought twice: store-wide refusals, ids, leases across folders
and machines, lost claims, stranded versions, logs, bad input and the account's D1 budget,
each through the CLI against the simulators, judged by what was paid for and what was kept."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import prepare_units, refresh_pricing_dates, write_receipt
from knrun.cli import app
from knrun.sim.d1 import D1Fault, D1Simulator
from knrun.sim.server import serve_in_thread
from knrun.sim.xai import XaiSimulator
from knrun.spool import Spool
from knrun.store.types import UnitResult

JOB = Path("prompts/kn-1.6.toml")


def knrun(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def query(sql: str, path: str | Path = "knrun.sqlite") -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def status() -> dict[str, Any]:
    code, out, err = knrun("status", "--json", "--fresh")
    assert code == 0, err
    return json.loads(out)


def paid_twice(sim: XaiSimulator) -> int:
    return sum(n - 1 for n in sim.stats.paid_by_prompt.values() if n > 1)


@pytest.fixture
def on_d1(
    project: Path, monkeypatch: pytest.MonkeyPatch, xai_server: XaiSimulator
) -> Iterator[D1Simulator]:
    """The project's units behind the D1 simulator's REST API, served on a port."""
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 200)
    write_receipt(project)
    d1 = D1Simulator(project / "knrun.sqlite")
    with serve_in_thread(d1) as origin:
        for name, value in {
            "KNRUN_STORE": "d1",
            "CLOUDFLARE_ACCOUNT_ID": d1.account_id,
            "CLOUDFLARE_API_TOKEN": d1.api_token,
            "D1_DATABASE_ID": d1.database_id,
            "CLOUDFLARE_API_BASE_URL": d1.base_url(origin),
        }.items():
            monkeypatch.setenv(name, value)
        yield d1


# -- a store that refuses everything ----------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code", "says"),
    [
        ("unauthorized", 2, "check CLOUDFLARE_API_TOKEN"),
        ("db_full", 1, "the database is at its size limit"),
        ("daily_limit", 1, "it resets at 00:00 UTC"),
    ],
)
def test_a_store_refusing_every_write_stops_the_run_and_keeps_every_paid_result(
    on_d1: D1Simulator, xai_server: XaiSimulator, fault: str, code: int, says: str
) -> None:
    on_d1.outage = D1Fault(fault, only_if='"kn_overview"')  # type: ignore[arg-type]
    exit_code, _, err = knrun("go")
    assert exit_code == code and "the store refuses every write" in err and says in err
    paid = xai_server.stats.paid_requests
    assert 0 < paid < 200
    held = asyncio_run(Spool(Path(".knrun/spool.sqlite")).held)
    assert [(h.pending, h.quarantined) for h in held] == [(paid, 0)]  # all kept, none set aside
    # Their units stay leased for days, not a lease's 15 minutes: no other runner buys them
    # again while the results wait here (the rest went back to the pool).
    week_ahead = time.time() + 6 * 86_400
    [(kept,)] = query(f"SELECT COUNT(*) FROM units WHERE kn_lease_expires > {week_ahead}")
    [(leased,)] = query("SELECT COUNT(*) FROM units WHERE kn_lease_owner IS NOT NULL")
    assert kept == leased == paid
    on_d1.outage = None  # the operator fixed the token (or the plan)
    exit_code, _, err = knrun("go")
    assert exit_code == 0, err
    assert paid_twice(xai_server) == 0  # the kept results were written, not bought again
    figures = status()
    assert figures["done"] == figures["total"] and figures["spool_pending"] == 0


def test_a_store_outage_never_lets_the_approval_be_spent_twice(
    project: Path, on_d1: D1Simulator, xai_server: XaiSimulator
) -> None:
    """The first run spends its approval while the store refuses every result write: the paid
    results wait in the spool, with no charge rows in the store. Once the store is back, the
    next `go` writes them first and counts them against the approval before it buys anything
    (it used to count the store's charges before the replay: xAI billed 1.98x the approval)."""
    receipt = write_receipt(project, approved_ticks=40 * 78_125_000)  # about 40 units
    on_d1.outage = D1Fault("unauthorized", only_if='"kn_overview"')
    code, _, err = knrun("go", "--concurrency", "10")
    assert code in (2, 4), err
    assert asyncio_run(Spool(Path(".knrun/spool.sqlite")).held)[0].pending > 0
    on_d1.outage = None
    code, _, err = knrun("go", "--concurrency", "10")
    assert code == 4, err  # at the cap: what is left of the approval, not all of it again
    assert xai_server.stats.billed_ticks <= receipt.approved_ticks
    figures = status()
    assert figures["spool_pending"] == 0 and figures["spent_ticks"] == xai_server.stats.billed_ticks


def asyncio_run(open_and_read: Any) -> Any:
    import asyncio

    async def go() -> Any:
        spool = open_and_read.__self__
        try:
            return await open_and_read()
        finally:
            await spool.close()

    return asyncio.run(go())


# -- ids -------------------------------------------------------------------------------------


def test_db_migrate_refuses_a_table_whose_ids_are_missing_or_repeated(project: Path) -> None:
    conn = sqlite3.connect("knrun.sqlite")
    columns = "id, unit_code, title, application, elements, performance_criteria"
    conn.execute(
        f"CREATE TABLE units ({columns}, knowledge_evidence, status, restricted_access INTEGER)"
    )
    rows = [(7, "A"), (7, "B"), (None, "C"), (8, "D")]
    for unit_id, code in rows:
        conn.execute(
            f"INSERT INTO units ({columns}, knowledge_evidence, status, restricted_access) "
            "VALUES (?, ?, 't', 'a', 'e', 'p', 'k', 'Current', 0)",
            (unit_id, code),
        )
    conn.commit()
    conn.close()
    code, _, err = knrun("db", "migrate")
    assert code == 2
    assert "1 rows have no id and 1 rows repeat an id (e.g. 7)" in err
    assert "kn_prompt_version" not in {row[1] for row in query("PRAGMA table_info(units)")}


def test_ids_past_2_53_reach_their_own_rows_over_d1(
    on_d1: D1Simulator, xai_server: XaiSimulator
) -> None:
    """D1 answers in JSON from JavaScript: 9007199254740993 comes back as ...992. An id like
    that must travel as text, or the result lands on no row (or another one)."""
    big = 2**53 + 1
    on_d1.connection.execute(f"UPDATE units SET id = id + {big}")
    exit_code, _, err = knrun("go")
    assert exit_code == 0, err
    rows = query(
        "SELECT id, kn_prompt_version FROM units WHERE status = 'Current' AND restricted_access = 0"
    )
    assert rows and all(version == "1.6" for _, version in rows)
    assert all(unit_id > big - 1 for unit_id, _ in rows)
    assert paid_twice(xai_server) == 0
    assert query("SELECT COUNT(*) FROM quarantine", ".knrun/spool.sqlite") == [(0,)]


# -- leases ----------------------------------------------------------------------------------


def start_go(folder: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "knrun", "go", *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def two_folders(project: Path, xai_server: XaiSimulator, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project, and a copy of it (its .knrun/machine-id included) beside it: both on the
    same SQLite store, as two Macs on one D1 database would be."""
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 300)
    write_receipt(project)
    store = (project / "knrun.sqlite").resolve()
    monkeypatch.setenv("KNRUN_STORE", f"sqlite:{store}")
    (project / ".knrun" / "machine-id").write_text("mcopiedfolder\n")
    copy = project.parent / f"{project.name}-copy"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("knrun.sqlite*"))
    return copy


def test_a_copied_folder_never_gives_back_a_live_runs_leases(
    project: Path, two_folders: Path, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.latency.time_scale = 0.05  # a quarter-second call
    first = start_go(project)
    deadline = time.monotonic() + 30
    while xai_server.stats.paid_requests < 40:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.01)
    second = start_go(two_folders)  # the same folder id: a copy of the first
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert paid_twice(xai_server) == 0  # nobody bought a unit the other was working on
    figures = status()
    assert figures["done"] == figures["total"] and figures["leased"] == 0


def test_leases_are_renewed_while_units_wait_and_run_longer_than_the_lease(
    project: Path, two_folders: Path, xai_server: XaiSimulator
) -> None:
    """A lease of 1.2 s, units that sit in the queue and then take 0.6 s: without renewal a
    second runner would buy every one of them again."""
    (two_folders / ".knrun" / "machine-id").write_text("manotherfolder\n")
    for folder in (project, two_folders):
        job = folder / JOB
        job.write_text(job.read_text().replace("timeout_s = 600", "timeout_s = 0.8"))
        write_receipt(folder)
    xai_server.scenario.latency.median_s = 600  # x 0.001: 0.6 s
    xai_server.scenario.latency.sigma = 0.05
    lease = ("--lease-minutes", "0.02", "--concurrency", "10")
    first = start_go(project, *lease)
    deadline = time.monotonic() + 30
    while xai_server.stats.paid_requests < 20:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.01)
    second = start_go(two_folders, *lease)
    outputs = [process.communicate(timeout=180) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert paid_twice(xai_server) == 0


def test_a_claim_whose_reply_was_lost_is_taken_back_before_the_run_ends(
    on_d1: D1Simulator, xai_server: XaiSimulator
) -> None:
    """The first claim is applied, and its reply lost: its 50 units are leased to this run and
    nobody else can take them. The run must take them back, not end 'done' without them."""
    on_d1.faults.append(D1Fault("network_lost", applied=True, only_if="RETURNING rowid"))
    exit_code, _, err = knrun("go")
    assert exit_code == 0, err
    figures = status()
    assert figures["remaining"] == 0 and figures["done"] == figures["total"]
    assert figures["leased"] == 0 and paid_twice(xai_server) == 0


# -- the spool across versions ---------------------------------------------------------------


def test_a_new_version_refuses_to_start_while_an_old_ones_paid_results_wait(
    ready: Path, xai_server: XaiSimulator
) -> None:
    """A crash left three paid results of v1.6 in the spool; the job was then bumped to 1.7.
    A run of 1.7 would never write them: it refuses until they are written or set aside."""
    import asyncio

    async def crash_leftovers() -> None:
        spool = Spool(Path(".knrun/spool.sqlite"))
        for unit_id in (1, 2, 3):
            result = UnitResult(
                unit_id,
                {"kn_overview": f"note {unit_id}"},
                "grok-4.3",
                5,
                1,
                1,
                "2026-12-01T00:00:00Z",
                "crashed-run",
                f"crashed-run:{unit_id}",
                5,
                5,
            )
            await spool.append(result, job="kn", version="1.6")
        await spool.close()

    asyncio.run(crash_leftovers())
    JOB.write_text(JOB.read_text().replace('version = "1.6"', 'version = "1.7"'))
    write_receipt(ready)
    code, _, err = knrun("go")
    assert code == 2 and "paid results wait in the spool for another job or version" in err
    assert "3 of kn v1.6" in err and xai_server.stats.chat_requests == 0
    code, out, _ = knrun("spool")
    assert code == 0 and "1.6" in out and "3" in out
    code, out, err = knrun("spool", "replay", "--version", "1.6")
    assert code == 0 and "v1.6: 3 results written" in out, err
    assert query("SELECT kn_overview FROM units WHERE id = 2") == [("note 2",)]
    code, _, err = knrun("go")
    assert code == 0, err
    assert status()["spool_pending_other_versions"] == 0


def test_an_old_versions_results_can_be_set_aside_instead(
    ready: Path, xai_server: XaiSimulator
) -> None:
    import asyncio

    async def leftover() -> None:
        spool = Spool(Path(".knrun/spool.sqlite"))
        result = UnitResult(1, {"kn_overview": "n"}, "m", 5, 1, 1, "2026-12-01T00:00:00Z", "r")
        await spool.append(result, job="kn", version="1.5")
        await spool.close()

    asyncio.run(leftover())
    code, _, err = knrun("spool", "set-aside", "--version", "1.5")
    assert code == 0, err
    figures = status()
    assert figures["spool_pending_other_versions"] == 0
    code, out, _ = knrun("spool")
    assert code == 0 and "set aside by the operator (1)" in out
    assert knrun("go")[0] == 0  # nothing of another version is pending: the run may start


# -- what a run leaves behind --------------------------------------------------------------------


def test_the_event_log_keeps_everything_reported_before_a_kill_9(
    ready: Path, xai_server: XaiSimulator
) -> None:
    xai_server.scenario.latency.time_scale = 0.02
    process = start_go(ready)
    deadline = time.monotonic() + 30
    while xai_server.stats.paid_requests < 120:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    [log] = Path(".knrun/runs").glob("*.jsonl")
    lines = log.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line whole: none cut by a buffer
    logged = {event["data"]["unit"] for event in events if event["kind"] == "unit_done"}
    written = {row[0] for row in query("SELECT id FROM units WHERE kn_prompt_version = '1.6'")}
    spool = Spool(Path(".knrun/spool.sqlite"))
    import asyncio

    pending = {o.unit_id for _, o in asyncio.run(_pending(spool))}
    durable = written | pending
    # Only units made durable in the last group commit before the kill may miss their line.
    assert durable and len(durable - logged) < 50 and len(logged) >= len(durable) - 50


async def _pending(spool: Spool) -> list[Any]:
    try:
        return await spool.pending("kn", "1.6")
    finally:
        await spool.close()


def test_a_result_the_store_refuses_is_quarantined_shown_and_counted(
    ready: Path, xai_server: XaiSimulator
) -> None:
    conn = sqlite3.connect("knrun.sqlite")
    conn.execute(
        "CREATE TRIGGER frozen BEFORE UPDATE OF kn_prompt_version ON units "
        "WHEN NEW.id = 7 AND NEW.kn_prompt_version IS NOT NULL "
        "BEGIN SELECT RAISE(ABORT, 'unit 7 is frozen'); END"
    )
    conn.commit()
    conn.close()
    code, out, err = knrun("go")
    assert code == 1, err  # one eligible unit is not done: its result waits in quarantine
    assert "quarantined: the store refused a result outright: 7: " in out
    assert "unit 7 is frozen" in out
    figures = status()
    assert figures["spool_quarantined"] == 1 and figures["spool_pending"] == 0
    assert figures["done"] == figures["total"] - 1 and paid_twice(xai_server) == 0


# -- bad input -------------------------------------------------------------------------------


def test_a_where_that_escapes_its_parentheses_is_refused_at_load(ready: Path) -> None:
    text = JOB.read_text()
    JOB.write_text(
        text.replace(
            "where = \"status = 'Current' AND restricted_access = 0\"",
            "where = \"status='Current') OR (1=1\"",
        )
    )
    code, _, err = knrun("status")
    assert code == 2 and "where: ')' at 17 closes a parenthesis that was never opened" in err


def test_a_where_naming_a_missing_column_is_refused_before_anything_is_spent(
    ready: Path, xai_server: XaiSimulator
) -> None:
    JOB.write_text(JOB.read_text().replace("restricted_access = 0", "restricted = 0"))
    write_receipt(ready)
    code, _, err = knrun("go")
    assert code == 2 and "source.where" in err and "no such column: restricted" in err
    assert xai_server.stats.chat_requests == 0


def test_a_csv_saved_by_excel_with_a_byte_order_mark_imports(project: Path) -> None:
    columns = [
        "id",
        "unit_code",
        "title",
        "application",
        "elements",
        "performance_criteria",
        "knowledge_evidence",
        "status",
        "restricted_access",
    ]
    lines = [",".join(columns), "1,BSB101,Title,App,El,PC,KE,Current,0"]
    Path("units.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    code, out, err = knrun("db", "import", "units.csv")
    assert code == 0 and "1 rows" in out, err


# -- the account's D1 budget -------------------------------------------------------------------


def test_two_runners_and_a_status_poller_stay_inside_the_accounts_window(
    project: Path, two_folders: Path, xai_server: XaiSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cloudflare's budget is per account: two runners and a dashboard polling `status` must
    share it, slowing down before the 5-minute block (here a scaled 40 requests per 8 s)."""
    (two_folders / ".knrun" / "machine-id").write_text("manotherfolder\n")
    d1 = D1Simulator(project / "knrun.sqlite", limit_requests=40, limit_window_s=8, block_s=8)
    xai_server.scenario.latency.time_scale = 0.05
    stop = threading.Event()
    with serve_in_thread(d1) as origin:
        for name, value in {
            "KNRUN_STORE": "d1",
            "CLOUDFLARE_ACCOUNT_ID": d1.account_id,
            "CLOUDFLARE_API_TOKEN": d1.api_token,
            "D1_DATABASE_ID": d1.database_id,
            "CLOUDFLARE_API_BASE_URL": d1.base_url(origin),
        }.items():
            monkeypatch.setenv(name, value)

        def poll_status() -> None:
            while not stop.is_set():
                CliRunner().invoke(app, ["status", "--json"])
                time.sleep(2.0)  # `watch knrun status` polls every 2 s

        poller = threading.Thread(target=poll_status, daemon=True)
        poller.start()
        runners = [start_go(folder) for folder in (project, two_folders)]
        outputs = [process.communicate(timeout=240) for process in runners]
        stop.set()
        poller.join(timeout=30)
        assert [p.returncode for p in runners] == [0, 0], outputs
        figures = status()
    assert d1.stats.refused == 0  # nobody was blocked
    assert figures["done"] == figures["total"] and paid_twice(xai_server) == 0


def test_status_reads_the_table_once_however_often_it_is_asked(
    on_d1: D1Simulator,
) -> None:
    knrun("status", "--json")
    before = on_d1.stats.requests
    for _ in range(5):
        knrun("status", "--json")
    assert on_d1.stats.requests - before == 5  # one request each, no full count
