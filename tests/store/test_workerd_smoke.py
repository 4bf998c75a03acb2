"""Cloudflare's real D1 engine (workerd via Miniflare) behind the REST envelope: what it does.

Skipped unless Node.js is on PATH and `npm ci` has been run in tests/workerd/. Each test uses its
own tables, so they share one server (started once for the module, ~1-2 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from conftest import UNIT_COLUMNS, plain_units
from knrun.job import JobSpec
from knrun.store import D1Store, UnitResult
from knrun.store.d1 import D1QueryError
from knrun.store.limiter import RequestLimiter
from knrun.store.schema import Statement
from workerd_d1 import WorkerdD1, WorkerdD1Error, node_available, serve_workerd_d1

_UNAVAILABLE = node_available()
pytestmark = pytest.mark.skipif(
    _UNAVAILABLE is not None, reason=f"workerd D1 unavailable: {_UNAVAILABLE}"
)

BEGIN_REFUSAL = (
    "D1_ERROR: To execute a transaction, please use the state.storage.transaction() or "
    "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT "
    "statements. The JavaScript API is safer because it will automatically roll back on "
    "exceptions, and because it interacts correctly with Durable Objects' automatic atomic "
    "write coalescing."
)
META_KEYS = {
    "served_by",
    "duration",
    "changes",
    "last_row_id",
    "changed_db",
    "size_after",
    "rows_read",
    "rows_written",
}


@pytest.fixture(scope="module")
def d1() -> Iterator[WorkerdD1]:
    with serve_workerd_d1() as server:
        yield server


def ok(response: httpx.Response) -> list[dict[str, Any]]:
    envelope = response.json()
    assert response.status_code == 200, envelope
    assert envelope["success"] is True and envelope["errors"] == [] and envelope["messages"] == []
    results: list[dict[str, Any]] = envelope["result"]
    assert all(r["success"] is True for r in results)
    return results


def refused(response: httpx.Response, status: int = 400, code: int = 7500) -> str:
    envelope = response.json()
    assert response.status_code == status, envelope
    assert envelope["success"] is False and envelope["result"] is None
    [error] = envelope["errors"]
    assert error["code"] == code
    message: str = error["message"]
    return message


# -- the envelope ---------------------------------------------------------------------------------


def test_single_statement_returns_rows_and_meta(d1: WorkerdD1) -> None:
    [result] = ok(d1.post({"sql": "SELECT ? AS a, ? AS b", "params": [1, "two"]}))
    assert result["results"] == [{"a": 1, "b": "two"}]
    assert set(result["meta"]) == META_KEYS
    assert result["meta"]["served_by"] == "miniflare.db"


def test_unbound_sql_with_several_statements_gives_one_result_each(d1: WorkerdD1) -> None:
    results = ok(
        d1.post(
            {
                "sql": "CREATE TABLE multi (id INTEGER PRIMARY KEY, v TEXT); "
                "INSERT INTO multi (v) VALUES ('a;b'), ('c'); SELECT v FROM multi ORDER BY id;"
            }
        )
    )
    assert len(results) == 3
    assert results[1]["meta"]["changes"] == 2
    assert results[2]["results"] == [{"v": "a;b"}, {"v": "c"}]


def test_several_statements_with_params_are_refused_by_d1(d1: WorkerdD1) -> None:
    message = refused(d1.post({"sql": "SELECT ?; SELECT 2", "params": [1]}))
    assert message == (
        "D1_ERROR: When executing multiple SQL statements in a single call, "
        "only the last statement can have parameters."
    )


def test_raw_gives_columns_and_rows_even_when_empty(d1: WorkerdD1) -> None:
    d1.query("CREATE TABLE raw_t (id INTEGER PRIMARY KEY, v TEXT)")
    d1.query("INSERT INTO raw_t (v) VALUES ('x')")
    results = ok(
        d1.post(
            {
                "batch": [
                    {"sql": "SELECT 1 AS a, 2 AS a"},
                    {"sql": "SELECT * FROM raw_t"},
                    {"sql": "SELECT * FROM raw_t WHERE 0"},
                ]
            },
            kind="raw",
        )
    )
    assert [r["results"] for r in results] == [
        {"columns": ["a", "a"], "rows": [[1, 2]]},
        {"columns": ["id", "v"], "rows": [[1, "x"]]},
        {"columns": ["id", "v"], "rows": []},
    ]
    # /query turns rows into objects: a repeated column name keeps only its last value.
    [result] = ok(d1.post({"sql": "SELECT 1 AS a, 2 AS a"}))
    assert result["results"] == [{"a": 2}]


def test_auth_and_unknown_database(d1: WorkerdD1) -> None:
    bad = httpx.post(d1.url(), json={"sql": "SELECT 1"}, headers={"Authorization": "Bearer no"})
    assert refused(bad, 401, 10000) == "Authentication error"
    anonymous = httpx.post(d1.url(), json={"sql": "SELECT 1"})
    assert refused(anonymous, 401, 10000) == "Authentication error"
    other = d1.url().replace(f"/database/{d1.database_id}/", "/database/other/")
    missing = httpx.post(
        other, json={"sql": "SELECT 1"}, headers={"Authorization": f"Bearer {d1.api_token}"}
    )
    assert refused(missing, 404, 7404) == "The database other could not be found"


# -- transactions ---------------------------------------------------------------------------------


def test_batch_is_one_transaction(d1: WorkerdD1) -> None:
    d1.query("CREATE TABLE atomic (id INTEGER PRIMARY KEY, v TEXT)")
    message = refused(
        d1.post(
            {
                "batch": [
                    {"sql": "INSERT INTO atomic (v) VALUES (?)", "params": ["kept?"]},
                    {"sql": "INSERT INTO nowhere (v) VALUES (?)", "params": ["x"]},
                ]
            }
        )
    )
    assert message == "D1_ERROR: no such table: nowhere: SQLITE_ERROR"
    assert d1.query("SELECT count(*) AS n FROM atomic") == [{"n": 0}]


def test_batch_stops_at_the_first_failing_statement(d1: WorkerdD1) -> None:
    message = refused(
        d1.post(
            {
                "batch": [
                    {"sql": "SELECT 1"},
                    {"sql": "SELECT * FROM missing_one"},
                    {"sql": "SELECT * FROM missing_two"},
                ]
            }
        )
    )
    assert message == "D1_ERROR: no such table: missing_one: SQLITE_ERROR"


@pytest.mark.parametrize(
    "sql", ["BEGIN TRANSACTION", "BEGIN", "SAVEPOINT s", "COMMIT", "ROLLBACK", "RELEASE s"]
)
def test_explicit_transaction_statements_are_refused(d1: WorkerdD1, sql: str) -> None:
    assert refused(d1.post({"sql": sql})) == BEGIN_REFUSAL


# -- SQL features ---------------------------------------------------------------------------------


def test_update_returning_and_changes(d1: WorkerdD1) -> None:
    d1.query("CREATE TABLE ret (id INTEGER PRIMARY KEY, n INTEGER)")
    ok(d1.post({"sql": "INSERT INTO ret (n) VALUES (1), (2), (3), (4)"}))
    [result] = ok(
        d1.post({"sql": "UPDATE ret SET n = n * 10 WHERE n >= ? RETURNING id, n", "params": [3]})
    )
    assert sorted(result["results"], key=lambda r: r["id"]) == [
        {"id": 3, "n": 30},
        {"id": 4, "n": 40},
    ]
    meta = result["meta"]
    assert meta["changes"] == 2 and meta["rows_written"] == 2 and meta["changed_db"] is True
    [plain] = ok(d1.post({"sql": "UPDATE ret SET n = n + 1 WHERE id = ?", "params": [1]}))
    assert plain["results"] == [] and plain["meta"]["changes"] == 1


def test_rows_read_counts_rows_scanned_not_returned(d1: WorkerdD1) -> None:
    d1.query("CREATE TABLE scan (id INTEGER PRIMARY KEY, n INTEGER)")
    d1.query("INSERT INTO scan (n) VALUES (1), (2), (3), (4), (5)")
    [result] = ok(d1.post({"sql": "SELECT * FROM scan WHERE n > 100"}))
    assert result["results"] == []
    assert result["meta"]["rows_read"] == 5
    [by_key] = ok(d1.post({"sql": "SELECT * FROM scan WHERE id = 2"}))
    assert by_key["meta"]["rows_read"] == 1


def test_json_each_with_a_json_array_param(d1: WorkerdD1) -> None:
    [result] = ok(
        d1.post(
            {
                "sql": "SELECT value FROM json_each(?) ORDER BY value",
                "params": ['[3, 1, "two"]'],
            }
        )
    )
    assert result["results"] == [{"value": 1}, {"value": 3}, {"value": "two"}]


def test_pragma_table_info(d1: WorkerdD1) -> None:
    d1.query("CREATE TABLE pragmas (id INTEGER PRIMARY KEY, v TEXT NOT NULL DEFAULT 'x')")
    rows = d1.query("PRAGMA table_info(pragmas)")
    assert rows == [
        {"cid": 0, "name": "id", "type": "INTEGER", "notnull": 0, "dflt_value": None, "pk": 1},
        {"cid": 1, "name": "v", "type": "TEXT", "notnull": 1, "dflt_value": "'x'", "pk": 0},
    ]
    assert d1.query("SELECT name FROM pragma_table_info('pragmas')") == [
        {"name": "id"},
        {"name": "v"},
    ]
    assert (
        refused(d1.post({"sql": "PRAGMA journal_mode"})) == "D1_ERROR: not authorized: SQLITE_AUTH"
    )


def test_after_insert_trigger_runs(d1: WorkerdD1) -> None:
    # One unbound `sql` with a trigger body: the ';' inside BEGIN ... END does not split it.
    results = ok(
        d1.post(
            {
                "sql": "CREATE TABLE trig (id INTEGER PRIMARY KEY, v TEXT);"
                "CREATE TABLE trig_log (v TEXT);"
                "CREATE TRIGGER trig_ai AFTER INSERT ON trig BEGIN "
                "INSERT INTO trig_log (v) VALUES (new.v || '!'); END;"
            }
        )
    )
    assert len(results) == 3
    [insert] = ok(d1.post({"sql": "INSERT INTO trig (v) VALUES (?)", "params": ["hi"]}))
    # meta.changes is the change in total_changes(): the trigger's row counts too.
    assert insert["meta"]["changes"] == 2
    assert d1.query("SELECT v FROM trig_log") == [{"v": "hi!"}]


def test_upsert_and_insert_or_ignore(d1: WorkerdD1) -> None:
    d1.query("CREATE TABLE ups (k TEXT PRIMARY KEY, n INTEGER)")
    upsert = "INSERT INTO ups (k, n) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET n = n + excluded.n"
    for _ in range(2):
        [result] = ok(d1.post({"sql": upsert, "params": ["a", 5]}))
        assert result["meta"]["changes"] == 1
    assert d1.query("SELECT n FROM ups WHERE k = 'a'") == [{"n": 10}]
    [ignored] = ok(d1.post({"sql": "INSERT OR IGNORE INTO ups (k, n) VALUES ('a', 1)"}))
    assert ignored["meta"]["changes"] == 0
    [added] = ok(d1.post({"sql": "INSERT OR IGNORE INTO ups (k, n) VALUES ('b', 1)"}))
    assert added["meta"]["changes"] == 1
    assert d1.query("SELECT k, n FROM ups ORDER BY k") == [{"k": "a", "n": 10}, {"k": "b", "n": 1}]


# -- values and limits ----------------------------------------------------------------------------


def test_values_booleans_big_integers_and_blobs(d1: WorkerdD1) -> None:
    [result] = ok(
        d1.post(
            {
                "sql": "SELECT ? AS t, ? AS f, ? AS none, ? AS big, ? AS blob, "
                "typeof(?) AS blob_type, 9007199254740993 AS literal, 1e300 * 1e300 AS inf",
                "params": [True, False, None, 9007199254740993, [1, 2], [1, 2]],
            }
        )
    )
    assert result["results"] == [
        {
            "t": 1,
            "f": 0,
            "none": None,
            # JavaScript numbers: integers past 2**53 come back rounded.
            "big": 9007199254740992,
            "blob": [1, 2],
            "blob_type": "blob",
            "literal": 9007199254740992,
            "inf": None,
        }
    ]
    message = refused(d1.post({"sql": "SELECT ?", "params": [{"a": 1}]}))
    assert message == "D1_TYPE_ERROR: Type 'object' not supported for value '[object Object]'"


def test_number_params_are_bound_as_real(d1: WorkerdD1) -> None:
    # A JSON integer reaches SQLite as a REAL: it shows in typeof(), text and division, and in
    # columns without INTEGER affinity; INTEGER columns turn it back into an integer.
    [result] = ok(
        d1.post({"sql": "SELECT typeof(?) AS t, ? || '' AS s, ? / 2 AS half", "params": [2, 2, 3]})
    )
    assert result["results"] == [{"t": "real", "s": "2.0", "half": 1.5}]
    d1.query("CREATE TABLE affinity (plain, i INTEGER, t TEXT)")
    d1.query("INSERT INTO affinity VALUES (?, ?, ?)", [2, 2, 2])
    assert d1.query(
        "SELECT typeof(plain) AS plain, typeof(i) AS i, t FROM affinity WHERE i = ?", [2]
    ) == [{"plain": "real", "i": "integer", "t": "2.0"}]


def test_bound_parameter_limit_is_100(d1: WorkerdD1) -> None:
    hundred = ", ".join("?" for _ in range(100))
    [result] = ok(d1.post({"sql": f"SELECT {hundred}", "params": list(range(100))}))
    assert len(result["results"][0]) == 1  # every column is named "?": objects keep one
    message = refused(d1.post({"sql": f"SELECT {hundred}, ?", "params": list(range(101))}))
    # The offset is that of the 101st "?" in the SQL text.
    assert message == "D1_ERROR: too many SQL variables at offset 307: SQLITE_ERROR"


def test_statement_size_and_binding_count_errors(d1: WorkerdD1) -> None:
    long_sql = "SELECT '" + "x" * 100_001 + "' AS s"
    assert refused(d1.post({"sql": long_sql})) == "D1_ERROR: statement too long: SQLITE_TOOBIG"
    assert refused(d1.post({"sql": "SELECT ?, ?", "params": [1]})) == (
        "D1_ERROR: Wrong number of parameter bindings for SQL query."
    )


def test_sql_errors_keep_d1_wording(d1: WorkerdD1) -> None:
    d1.query("CREATE TABLE errs (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    d1.query("INSERT INTO errs (id, v) VALUES (1, 'a')")
    cases = {
        "SELEC 1": 'D1_ERROR: near "SELEC": syntax error at offset 0: SQLITE_ERROR',
        "SELECT nope FROM errs": "D1_ERROR: no such column: nope at offset 7: SQLITE_ERROR",
        "INSERT INTO errs (id, v) VALUES (1, 'b')": (
            "D1_ERROR: UNIQUE constraint failed: errs.id: SQLITE_CONSTRAINT "
            "(extended: SQLITE_CONSTRAINT_PRIMARYKEY)"
        ),
        "INSERT INTO errs (v) VALUES (NULL)": (
            "D1_ERROR: NOT NULL constraint failed: errs.v: SQLITE_CONSTRAINT "
            "(extended: SQLITE_CONSTRAINT_NOTNULL)"
        ),
        "   ": "D1_ERROR: No SQL statements detected.",
    }
    for sql, expected in cases.items():
        assert refused(d1.post({"sql": sql})) == expected, sql
    with pytest.raises(WorkerdD1Error, match="syntax error"):
        d1.query("SELEC 1")


# -- the project's client -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_d1_store_runs_against_workerd(d1: WorkerdD1, job: JobSpec) -> None:
    d1.query(
        "CREATE TABLE units (id INTEGER PRIMARY KEY, unit_code TEXT, title TEXT, "
        "application TEXT, elements TEXT, performance_criteria TEXT, knowledge_evidence TEXT, "
        "status TEXT, restricted_access INTEGER)"
    )
    marks = ", ".join("?" for _ in UNIT_COLUMNS)
    for row in plain_units(4):
        d1.query(
            f"INSERT INTO units ({', '.join(UNIT_COLUMNS)}) VALUES ({marks})",
            [row.get(column) for column in UNIT_COLUMNS],
        )
    store = D1Store(
        job,
        account_id=d1.account_id,
        database_id=d1.database_id,
        api_token=SecretStr(d1.api_token),
        base_url=d1.base_url,
        limiter=RequestLimiter(1e9),
    )
    try:
        added = await store.migrate()
        assert "kn_lease_owner" in added
        assert await store.migrate() == []
        assert await store.count_remaining() == 4
        units = await store.claim(2, "worker-a", 600)
        assert [u.id for u in units] == [1, 2]
        outputs = [job.output_column(field) for field in job.outputs]
        await store.write_results(
            [
                UnitResult(
                    unit_id=u.id,
                    values={column: f"note {u.id}" for column in outputs},
                    model="grok-4.3",
                    cost_ticks=1,
                    input_tokens=2,
                    output_tokens=3,
                    processed_at="2026-11-22T10:00:00Z",
                    run_id="run-1",
                )
                for u in units
            ]
        )
        assert await store.count_remaining() == 2
        with pytest.raises(D1QueryError, match="syntax error"):
            await store.execute([Statement("SELEC 1")], idempotent=True)
    finally:
        await store.close()


def test_persisted_database_survives_a_restart(tmp_path: Path) -> None:
    with serve_workerd_d1(tmp_path / "d1") as first:
        first.query("CREATE TABLE kept (v TEXT)")
        first.query("INSERT INTO kept (v) VALUES (?)", ["still here"])
    assert any((tmp_path / "d1").rglob("*.sqlite"))
    with serve_workerd_d1(tmp_path / "d1") as second:
        assert second.query("SELECT v FROM kept") == [{"v": "still here"}]
