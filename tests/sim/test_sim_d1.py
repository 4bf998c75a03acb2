"""The D1 simulator keeps D1's rules, so D1Store is tested against something that refuses."""

from __future__ import annotations

import httpx
import pytest

from conftest import FakeClock
from knrun.sim.d1 import D1Simulator

pytestmark = pytest.mark.anyio


@pytest.fixture
def sim(clock: FakeClock) -> D1Simulator:
    sim = D1Simulator(clock=clock)
    sim.connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    return sim


async def post(
    sim: D1Simulator, body: dict, *, token: str | None = None, kind: str = "query"
) -> httpx.Response:
    async with httpx.AsyncClient(transport=sim.transport(), base_url=sim.base_url()) as client:
        return await client.post(
            f"/accounts/{sim.account_id}/d1/database/{sim.database_id}/{kind}",
            json=body,
            headers={"Authorization": f"Bearer {token or sim.api_token}"},
        )


async def test_success_envelope_has_one_result_per_statement_with_meta(sim) -> None:
    reply = await post(
        sim,
        {
            "batch": [
                {"sql": "INSERT INTO t (v) VALUES (?)", "params": ["a"]},
                {"sql": "SELECT id, v FROM t"},
            ]
        },
    )
    body = reply.json()
    assert reply.status_code == 200 and body["success"] is True and body["errors"] == []
    first, second = body["result"]
    assert first["meta"]["changes"] == 1 and first["meta"]["rows_written"] == 1
    assert second["results"] == [{"id": 1, "v": "a"}]
    assert {"duration", "last_row_id", "rows_read", "size_after", "changed_db"} <= set(
        second["meta"]
    )


async def test_raw_endpoint_returns_columns_and_rows(sim) -> None:
    await post(sim, {"sql": "INSERT INTO t (v) VALUES ('x')"})
    reply = await post(sim, {"sql": "SELECT id, v FROM t"}, kind="raw")
    assert reply.json()["result"][0]["results"] == {"columns": ["id", "v"], "rows": [[1, "x"]]}


async def test_a_failing_statement_rolls_back_the_whole_request(sim) -> None:
    reply = await post(
        sim,
        {
            "batch": [
                {"sql": "INSERT INTO t (id, v) VALUES (1, 'a')"},
                {"sql": "INSERT INTO t (id, v) VALUES (1, 'duplicate')"},
            ]
        },
    )
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["code"] == 7500
    assert "UNIQUE constraint failed" in reply.json()["errors"][0]["message"]
    assert sim.query("SELECT COUNT(*) AS n FROM t") == [{"n": 0}]


@pytest.mark.parametrize("sql", ["BEGIN TRANSACTION", "COMMIT", "SAVEPOINT s1", "ROLLBACK"])
async def test_explicit_transactions_are_rejected(sim, sql) -> None:
    reply = await post(sim, {"sql": sql})
    assert reply.status_code == 400
    assert "BEGIN TRANSACTION or SAVEPOINT" in reply.json()["errors"][0]["message"]


async def test_only_d1s_pragmas_are_allowed(sim) -> None:
    assert (await post(sim, {"sql": "PRAGMA table_info(t)"})).status_code == 200
    for sql in ("PRAGMA journal_mode = DELETE", "SELECT * FROM pragma_table_info('t')"):
        reply = await post(sim, {"sql": sql})
        assert reply.status_code == 400 and "SQLITE_AUTH" in reply.json()["errors"][0]["message"]


async def test_parameter_and_statement_size_limits(sim) -> None:
    marks = ", ".join("?" for _ in range(101))
    reply = await post(sim, {"sql": f"SELECT {marks}", "params": list(range(101))})
    assert "too many SQL variables" in reply.json()["errors"][0]["message"]
    long_sql = "SELECT '" + "x" * 100_001 + "'"
    reply = await post(sim, {"sql": long_sql})
    assert "SQLITE_TOOBIG" in reply.json()["errors"][0]["message"]
    ok = await post(sim, {"sql": "SELECT ?", "params": ["y" * 200_000]})  # big values bind fine
    assert ok.status_code == 200


async def test_bad_token_gets_cloudflares_auth_error(sim) -> None:
    reply = await post(sim, {"sql": "SELECT 1"}, token="wrong")
    assert reply.status_code == 401
    assert reply.json()["errors"] == [{"code": 10000, "message": "Authentication error"}]


async def test_1200_requests_in_5_minutes_then_every_call_is_blocked_for_5_minutes(clock) -> None:
    sim = D1Simulator(clock=clock)
    for _ in range(1200):
        assert (await post(sim, {"sql": "SELECT 1"})).status_code == 200
        clock.advance(0.1)
    blocked = await post(sim, {"sql": "SELECT 1"})
    assert blocked.status_code == 429
    assert blocked.json()["errors"][0]["code"] == 971
    assert blocked.headers["retry-after"] == "300"
    clock.advance(299)
    assert (await post(sim, {"sql": "SELECT 1"})).status_code == 429
    clock.advance(2)
    assert (await post(sim, {"sql": "SELECT 1"})).status_code == 200


async def test_several_unbound_statements_in_one_sql_string(sim) -> None:
    reply = await post(sim, {"sql": "INSERT INTO t (v) VALUES ('a; b'); SELECT v FROM t;"})
    assert [r["results"] for r in reply.json()["result"]] == [[], [{"v": "a; b"}]]
