"""The UnitStore contract, run against both stores: SqliteStore, and D1Store over the simulator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import Backend, FakeClock, plain_units, seed_units
from knrun.errors import ConfigError
from knrun.store import RunRecord, UnitFailure, UnitResult

pytestmark = pytest.mark.anyio

VERSION = "1.6"


def result_for(
    unit_id: Any, job_outputs: list[str], text: str = "note", run_id: str = "run-1"
) -> UnitResult:
    return UnitResult(
        unit_id=unit_id,
        values={column: f"{text} {unit_id}" for column in job_outputs},
        model="grok-4.3",
        cost_ticks=19_012_345,
        input_tokens=2000,
        output_tokens=2900,
        processed_at="2026-11-22T10:00:00Z",
        run_id=run_id,
        attempt_id=f"{run_id}:{unit_id}",
        billed_ticks=19_012_345,
        tracked_ticks=19_000_000,
    )


def failure_for(
    unit_id: Any, owner: str, reason: str = "invalid_json", **money: Any
) -> UnitFailure:
    return UnitFailure(
        unit_id=unit_id,
        reason=reason,
        detail="Expecting ',' delimiter",
        processed_at="2026-11-22T10:00:00Z",
        run_id="run-1",
        owner=owner,
        attempt_id=f"run-1:{unit_id}",
        **({"billed_ticks": 5, "tracked_ticks": 5} | money),
    )


def output_columns(backend: Backend) -> list[str]:
    return [backend.job.output_column(field) for field in backend.job.outputs]


async def migrated(backend: Backend, rows: list[dict[str, Any]]) -> Any:
    backend.seed(rows)
    store = backend.open()
    await store.migrate()
    return store


async def test_migrate_adds_columns_once_and_keeps_data(backend: Backend) -> None:
    backend.seed(plain_units(5))
    store = backend.open()
    added = await store.migrate()
    assert "kn_prompt_version" in added and "kn_lease_owner" in added and "kn_overview" in added
    assert await store.migrate() == []
    assert backend.rows("SELECT COUNT(*) AS n FROM units")[0]["n"] == 5
    assert backend.rows("SELECT COUNT(*) AS n FROM knrun_runs")[0]["n"] == 0


async def test_resume_clause_picks_exactly_the_eligible_units(
    backend: Backend, clock: FakeClock
) -> None:
    now = int(clock())
    base = plain_units(1)[0]

    def unit(unit_id: int, **changes: Any) -> dict[str, Any]:
        return {**base, "id": unit_id, **changes}

    rows = [
        unit(1),  # never processed: eligible
        unit(2),  # done at an older version: eligible
        unit(3),  # done at this version
        unit(4, status="Superseded"),  # outside the job's where
        unit(5, restricted_access=1),  # outside the job's where
        unit(6),  # failed at this version: belongs to retry
        unit(7),  # failed at an older version: eligible again
        unit(8),  # leased by another runner, lease still valid
        unit(9),  # leased by a runner whose lease expired
    ]
    store = await migrated(backend, rows)
    setup = [
        ("kn_prompt_version = '1.5'", 2, ()),
        ("kn_prompt_version = '1.6', kn_status = 'done', kn_status_version = '1.6'", 3, ()),
        ("kn_status = 'failed', kn_status_version = '1.6', kn_attempts = 1", 6, ()),
        ("kn_prompt_version = '1.5', kn_status = 'failed', kn_status_version = '1.5'", 7, ()),
        ("kn_lease_owner = 'other', kn_lease_expires = ?", 8, (now + 600,)),
        ("kn_lease_owner = 'dead', kn_lease_expires = ?", 9, (now - 1,)),
    ]
    for assignments, unit_id, params in setup:
        backend.conn.execute(f"UPDATE units SET {assignments} WHERE id = {unit_id}", params)

    assert await store.count_remaining() == 5  # 1, 2, 7, 8, 9: leased units are still remaining
    claimed = await store.claim(100, "me", 600)
    assert sorted(unit.id for unit in claimed) == [1, 2, 7, 9]
    assert set(claimed[0].inputs) == {"id", *backend.job.source.columns}
    retry = await store.claim(100, "retrier", 600, failed_only=True)
    assert [unit.id for unit in retry] == [6]


async def test_claim_leases_units_and_never_hands_them_out_twice(backend: Backend) -> None:
    store = await migrated(backend, plain_units(30))
    first = await store.claim(20, "a", 600)
    second = await store.claim(20, "b", 600)
    assert len(first) == 20 and len(second) == 10
    assert not {u.id for u in first} & {u.id for u in second}
    assert await store.claim(20, "c", 600) == []
    owners = backend.rows(
        "SELECT kn_lease_owner AS o, COUNT(*) AS n FROM units GROUP BY o ORDER BY o"
    )
    assert owners == [{"o": "a", "n": 20}, {"o": "b", "n": 10}]


async def test_two_concurrent_claimers_share_2000_units_without_duplicates_or_losses(
    backend: Backend,
) -> None:
    backend.seed(plain_units(2000))
    one, two = backend.open(), backend.open()
    await one.migrate()

    async def drain(store: Any, owner: str) -> list[Any]:
        got: list[Any] = []
        while page := await store.claim(50, owner, 600):
            got.extend(unit.id for unit in page)
            # Long enough for the other claimer's SQLite busy handler (1-5 ms naps) to win the
            # lock sometimes; with sleep(0) a loaded machine can let one claimer take it all.
            await asyncio.sleep(0.005)
        return got

    a, b = await asyncio.gather(drain(one, "runner-a"), drain(two, "runner-b"))
    assert len(a) + len(b) == 2000
    assert set(a).isdisjoint(b)
    assert set(a) | set(b) == set(range(1, 2001))
    assert a and b  # both really took part


async def test_expired_leases_come_back(backend: Backend, clock: FakeClock) -> None:
    store = await migrated(backend, plain_units(10))
    crashed = await store.claim(10, "crashed-runner", lease_s=60)
    assert len(crashed) == 10
    assert await store.claim(10, "next-runner", 60) == []
    clock.advance(61)
    back = await store.claim(10, "next-runner", 60)
    assert sorted(u.id for u in back) == sorted(u.id for u in crashed)


async def test_result_writes_are_idempotent_and_the_first_result_wins(backend: Backend) -> None:
    store = await migrated(backend, plain_units(3))
    units = await store.claim(3, "me", 600)
    columns = output_columns(backend)
    batch = [result_for(u.id, columns) for u in units]
    await store.write_results(batch)
    await store.write_results(batch)  # a retried request after a lost response
    await store.write_results([result_for(units[0].id, columns, text="late duplicate")])
    rows = backend.rows(
        "SELECT id, kn_overview, kn_prompt_version, kn_attempts, kn_status, kn_lease_owner, "
        "kn_cost_ticks, kn_cost_usd FROM units ORDER BY id"
    )
    for row in rows:
        assert row["kn_overview"] == f"note {row['id']}"
        assert row["kn_prompt_version"] == VERSION
        assert row["kn_attempts"] == 1
        assert row["kn_status"] == "done"
        assert row["kn_lease_owner"] is None
        assert row["kn_cost_ticks"] == 19_012_345
        assert row["kn_cost_usd"] == pytest.approx(0.0019012345)
    assert await store.count_remaining() == 0


async def test_failures_count_attempts_once_per_attempt_and_never_overwrite_a_result(
    backend: Backend,
) -> None:
    store = await migrated(backend, plain_units(2))
    units = await store.claim(2, "me", 600)
    failed, done = units
    await store.write_results(
        [failure_for(failed.id, "me"), result_for(done.id, output_columns(backend))]
    )
    await store.mark_failed([failure_for(failed.id, "me")])  # retried request: no second attempt
    await store.mark_failed([failure_for(done.id, "me")])  # too late: the unit is done
    rows = {
        r["id"]: r for r in backend.rows("SELECT id, kn_status, kn_error, kn_attempts FROM units")
    }
    assert rows[failed.id]["kn_status"] == "failed"
    assert rows[failed.id]["kn_error"] == "invalid_json: Expecting ',' delimiter"
    assert rows[failed.id]["kn_attempts"] == 1
    assert rows[done.id]["kn_status"] == "done"
    assert await store.claim(10, "me", 600) == []  # failed units wait for retry

    again = await store.claim(10, "retrier", 600, failed_only=True, max_attempts=3)
    assert [u.id for u in again] == [failed.id]
    await store.mark_failed([failure_for(failed.id, "retrier", reason="truncated")])
    assert (
        backend.rows("SELECT kn_attempts FROM units WHERE id = ?", (failed.id,))[0]["kn_attempts"]
        == 2
    )
    assert await store.claim(10, "retrier", 600, failed_only=True, max_attempts=2) == []


async def test_release_returns_leases_by_owner_ids_and_prefix(backend: Backend) -> None:
    store = await migrated(backend, plain_units(12))
    mine = await store.claim(4, "host-1:run-a", 600)
    await store.claim(4, "host-1:run-b", 600)
    await store.claim(4, "host-2:run-c", 600)
    assert await store.release("host-1:run-a", [mine[0].id, mine[1].id]) == 2
    assert await store.release("host-1:run-a", []) == 0
    assert await store.release("host-1:run-a") == 2
    assert await store.release_prefix("host-1:") == 4
    assert (
        backend.rows("SELECT COUNT(*) AS n FROM units WHERE kn_lease_owner IS NOT NULL")[0]["n"]
        == 4
    )


async def test_progress_reports_the_status_figures(backend: Backend) -> None:
    rows = plain_units(10)
    rows[9]["status"] = "Superseded"
    store = await migrated(backend, rows)
    units = await store.claim(6, "me", 600)
    columns = output_columns(backend)
    timed_out = failure_for(
        units[4].id,
        "me",
        reason="timeout",
        billed_ticks=None,
        tracked_ticks=0,
        possible_ticks=900,
        expected_ticks=300,
    )
    await store.write_results(
        [result_for(u.id, columns) for u in units[:3]] + [failure_for(units[3].id, "me"), timed_out]
    )
    await store.write_results([timed_out])  # written twice (a retried request): counted once
    progress = await store.progress()
    assert (progress.total, progress.done, progress.failed, progress.remaining) == (9, 3, 2, 4)
    assert progress.leased == 1  # units[5] is still leased
    assert progress.failed_by_reason == {"invalid_json": 1, "timeout": 1}
    assert progress.done_cost_ticks == 3 * 19_012_345
    assert progress.avg_output_tokens == 2900
    assert progress.last_processed_at == "2026-11-22T10:00:00Z"
    money = progress.money
    assert (money.requests, money.replies, money.possible_requests) == (5, 4, 1)
    assert money.billed_ticks == 3 * 19_012_345 + 5
    assert money.tracked_ticks == 3 * 19_000_000 + 5
    assert (money.possible_ticks, money.expected_ticks) == (900, 300)
    assert money.spent_ticks == money.billed_ticks + 300
    assert (await store.progress(max_attempts=1)).retry_exhausted == 2
    assert (await store.progress(max_attempts=2)).retry_exhausted == 0


async def test_a_reply_without_a_bill_is_counted_apart(backend: Backend) -> None:
    store = await migrated(backend, plain_units(3))
    units = await store.claim(3, "me", 600)
    unbilled = failure_for(units[0].id, "me", billed_ticks=None, tracked_ticks=777)
    await store.write_results([unbilled, failure_for(units[1].id, "me")])
    money = (await store.progress()).money
    assert (money.replies, money.unbilled_replies, money.unbilled_tracked_ticks) == (2, 1, 777)
    assert money.billed_ticks == 5 and money.billed_tracked_ticks == 5
    assert money.spent_ticks == 5 + 777


async def test_run_records_upsert_and_read_back(backend: Backend) -> None:
    store = await migrated(backend, plain_units(1))
    run = RunRecord(
        run_id="r1",
        kind="go",
        job="kn",
        version=VERSION,
        model="grok-4.3",
        prompt_hash="abc",
        host="mac-mini",
        started_at="2026-11-22T09:00:00Z",
        detail={"prices": {"input": "1.25"}},
    )
    await store.record_run(run)
    run.state, run.exit_code, run.units_ok, run.billed_ticks = "finished", 0, 42, 123_456
    await store.record_run(run)
    [back] = await store.runs()
    assert back == run


async def test_claims_come_in_row_order_and_start_after_the_cursor(backend: Backend) -> None:
    store = await migrated(backend, plain_units(12))
    first = await store.claim(5, "me", 600)
    assert [u.id for u in first] == [1, 2, 3, 4, 5]
    assert [u.position for u in first] == [1, 2, 3, 4, 5]
    await store.release("me", [2])  # given back behind the cursor
    after = await store.claim(5, "me", 600, start=first[-1].position + 1)
    assert [u.id for u in after] == [6, 7, 8, 9, 10]
    rest = await store.claim(5, "me", 600, start=after[-1].position + 1)
    assert [u.id for u in rest] == [11, 12]
    assert await store.claim(5, "me", 600, start=rest[-1].position + 1) == []
    assert [u.id for u in await store.claim(5, "me", 600)] == [2]  # the wrap finds it


async def test_a_without_rowid_table_is_refused_at_migrate(backend: Backend) -> None:
    backend.conn.execute(
        "CREATE TABLE units (id INTEGER PRIMARY KEY, unit_code TEXT, title TEXT, application TEXT, "
        "elements TEXT, performance_criteria TEXT, knowledge_evidence TEXT, status TEXT, "
        "restricted_access INTEGER) WITHOUT ROWID"
    )
    store = backend.open()
    with pytest.raises(ConfigError, match="WITHOUT ROWID"):
        await store.migrate()


async def test_migrate_adds_columns_an_older_runs_table_lacks(backend: Backend) -> None:
    backend.seed(plain_units(1))
    backend.conn.execute(
        "CREATE TABLE knrun_runs (run_id TEXT PRIMARY KEY, kind TEXT NOT NULL, job TEXT NOT NULL, "
        "version TEXT NOT NULL, model TEXT NOT NULL, prompt_hash TEXT, host TEXT, "
        "started_at TEXT NOT NULL, ended_at TEXT, state TEXT NOT NULL, exit_code INTEGER, "
        "exit_reason TEXT, units_ok INTEGER NOT NULL DEFAULT 0, units_failed INTEGER NOT NULL "
        "DEFAULT 0, tracked_ticks INTEGER NOT NULL DEFAULT 0, billed_ticks INTEGER NOT NULL "
        "DEFAULT 0, estimate_ticks INTEGER, detail TEXT)"
    )
    store = backend.open()
    assert "knrun_runs.updated_at" in await store.migrate()
    run = RunRecord(
        run_id="r",
        kind="go",
        job="kn",
        version=VERSION,
        model="m",
        prompt_hash="h",
        host="x",
        started_at="2026-11-22T00:00:00Z",
        updated_at="2026-11-22T00:01:00Z",
    )
    await store.record_run(run)
    assert (await store.runs())[0].updated_at == "2026-11-22T00:01:00Z"


async def test_units_with_zero_and_negative_integer_ids_are_claimed(backend: Backend) -> None:
    # With an INTEGER PRIMARY KEY the id is the rowid, and ids may be 0 or negative.
    rows = plain_units(3)
    for row, unit_id in zip(rows, (-1, 0, 1), strict=True):
        row["id"] = unit_id
    store = await migrated(backend, rows)
    assert await store.count_remaining() == 3
    assert sorted(u.id for u in await store.claim(10, "me", 600)) == [-1, 0, 1]
    assert await store.count_claimable() == 0


def test_claims_seek_to_the_cursor_instead_of_scanning_the_table(job) -> None:
    # An OR around the rowid range made SQLite scan the whole table on every claim: O(n^2).
    import sqlite3

    from knrun.store.sql import UnitSql

    statement = UnitSql(job).claim(50, "me", 0, 600, failed_only=False, max_attempts=0, start=7)
    conn = sqlite3.connect(":memory:")
    seed_units(conn, plain_units(1))
    for column in ("prompt_version", "status_version", "lease_owner", "lease_expires"):
        conn.execute(f"ALTER TABLE units ADD COLUMN kn_{column}")
    plan = " ".join(
        row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + statement.sql, statement.params)
    )
    assert "SEARCH units USING INTEGER PRIMARY KEY (rowid>?)" in plan
