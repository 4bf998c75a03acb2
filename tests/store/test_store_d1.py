"""D1Store against the D1 simulator: error classes, retries, request packing and the limiter."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from conftest import Backend, FakeClock, plain_units
from knrun.errors import ExitCode
from knrun.job import JobSpec
from knrun.sim.d1 import D1Fault, D1Simulator
from knrun.store import D1Store, UnitResult
from knrun.store.d1 import (
    API_BLOCK_S,
    D1AuthError,
    D1NotFound,
    D1Overloaded,
    D1QueryError,
    D1RateLimited,
    D1Transient,
    classify_error,
)
from knrun.store.limiter import RequestLimiter
from knrun.store.schema import statement_size

pytestmark = pytest.mark.anyio


@pytest.fixture
def sim(tmp_path, clock: FakeClock) -> D1Simulator:
    return D1Simulator(tmp_path / "d1.sqlite", clock=clock, sleep=clock.sleep)


def d1_store(
    sim: D1Simulator, job: JobSpec, clock: FakeClock, *, rate: float = 1e9, **overrides
) -> D1Store:
    settings = dict(
        account_id=sim.account_id,
        database_id=sim.database_id,
        api_token=SecretStr(sim.api_token),
        base_url=sim.base_url(),
        transport=sim.transport(),
        limiter=RequestLimiter(rate, clock=clock, sleep=clock.sleep),
        clock=clock,
        sleep=clock.sleep,
    )
    settings.update(overrides)
    return D1Store(job, **settings)


async def ready_store(
    sim: D1Simulator, job: JobSpec, clock: FakeClock, units: int = 5, **kw
) -> D1Store:
    from conftest import seed_units

    seed_units(sim.connection, plain_units(units))
    store = d1_store(sim, job, clock, **kw)
    await store.migrate()
    return store


def response(
    status: int, body: object = None, *, text: str | None = None, headers=None
) -> httpx.Response:
    request = httpx.Request(
        "POST", "https://api.cloudflare.com/client/v4/accounts/a/d1/database/d/query"
    )
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


def envelope(code: int, message: str) -> dict:
    return {
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
        "result": None,
    }


# -- classification, with the messages Cloudflare documents ---------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, envelope(7500, 'near "SELEC": syntax error at offset 0: SQLITE_ERROR'), D1QueryError),
        (
            400,
            envelope(7500, "UNIQUE constraint failed: units.id: SQLITE_CONSTRAINT"),
            D1QueryError,
        ),
        (401, envelope(10000, "Authentication error"), D1AuthError),
        (403, envelope(10000, "Authentication error"), D1AuthError),
        (404, envelope(7404, "The database x could not be found"), D1NotFound),
        (
            429,
            envelope(971, "Please wait and consider throttling your request speed"),
            D1RateLimited,
        ),
        (
            429,
            envelope(7500, "D1_ERROR: D1 DB is overloaded. Too many requests queued."),
            D1Overloaded,
        ),
        (500, envelope(7500, "D1_ERROR: Network connection lost."), D1Transient),
        (
            500,
            envelope(7500, "Internal error in D1 DB storage caused object to be reset."),
            D1Transient,
        ),
        (500, envelope(7500, "D1 DB reset because its code was updated."), D1Transient),
        (
            500,
            envelope(7500, "Cannot resolve D1 DB due to transient issue on remote node."),
            D1Transient,
        ),
        # Message first: a transient message wins over a 400 status.
        (400, envelope(7500, "D1_ERROR: Network connection lost."), D1Transient),
        (502, envelope(7500, "bad gateway"), D1Transient),
    ],
)
def test_errors_are_classified_by_message_then_status(status, body, expected) -> None:
    error = classify_error(response(status, body))
    assert type(error) is expected
    assert error.retryable == (expected in (D1RateLimited, D1Overloaded, D1Transient))


def test_html_error_pages_are_classified_without_crashing() -> None:
    page = (
        "<html><head><title>502 Bad Gateway</title></head><body><h1>cloudflare</h1></body></html>"
    )
    error = classify_error(response(502, text=page))
    assert isinstance(error, D1Transient)
    assert "502 Bad Gateway" in str(error) and "<" not in str(error)


def test_rate_limit_keeps_retry_after_and_auth_errors_exit_as_config_errors() -> None:
    limited = classify_error(
        response(
            429,
            envelope(971, "Please wait and consider throttling your request speed"),
            headers={"Retry-After": "17"},
        )
    )
    assert isinstance(limited, D1RateLimited) and limited.retry_after == 17
    auth = classify_error(response(403, envelope(10000, "Authentication error")))
    assert auth.exit_code == ExitCode.USAGE and "CLOUDFLARE_API_TOKEN" in str(auth)


# -- behaviour against the simulator --------------------------------------------------------------


async def test_bad_sql_is_final_and_sent_once(sim, job, clock) -> None:
    store = await ready_store(sim, job, clock)
    sent = store.requests_sent
    from knrun.store.schema import Statement

    with pytest.raises(D1QueryError, match="no such column"):
        await store.execute([Statement("SELECT nope FROM units")], idempotent=True)
    assert store.requests_sent == sent + 1
    await store.close()


async def test_wrong_token_is_an_auth_error_and_never_retried(sim, job, clock) -> None:
    store = d1_store(sim, job, clock, api_token=SecretStr("not-the-token"))
    with pytest.raises(D1AuthError) as caught:
        await store.count_remaining()
    assert store.requests_sent == 1
    assert "not-the-token" not in str(caught.value)
    await store.close()


async def test_unknown_database_is_reported_as_not_found(sim, job, clock) -> None:
    store = d1_store(sim, job, clock, database_id="no-such-db")
    with pytest.raises(D1NotFound, match="D1_DATABASE_ID"):
        await store.count_remaining()
    await store.close()


@pytest.mark.parametrize("kind", ["overloaded", "network_lost", "unavailable"])
async def test_transient_faults_are_retried_for_idempotent_requests(sim, job, clock, kind) -> None:
    store = await ready_store(sim, job, clock)
    sent = store.requests_sent
    sim.faults.extend([D1Fault(kind), D1Fault(kind)])
    assert await store.count_remaining() == 5
    assert store.requests_sent - sent == 3  # two faults, then a success
    await store.close()


async def test_a_write_applied_before_a_lost_response_is_repeated_harmlessly(
    sim, job, clock
) -> None:
    store = await ready_store(sim, job, clock, units=3)
    units = await store.claim(3, "me", 600)
    sim.faults.append(D1Fault("network_lost", applied=True))
    results = [
        UnitResult(u.id, {"kn_overview": "x"}, "m", 10, 1, 2, "2026-11-22T00:00:00Z", "r")
        for u in units
    ]
    await store.write_results(results)
    rows = sim.query("SELECT kn_attempts, kn_prompt_version FROM units")
    assert rows == [{"kn_attempts": 1, "kn_prompt_version": "1.6"}] * 3
    await store.close()


async def test_claims_are_not_retried_because_a_repeat_would_lease_a_second_page(
    sim, job, clock
) -> None:
    store = await ready_store(sim, job, clock)
    sim.faults.append(D1Fault("network_lost", applied=True))
    sent = store.requests_sent
    with pytest.raises(D1Transient):
        await store.claim(2, "me", 600)
    assert store.requests_sent == sent + 1
    # The lost page is leased, not lost: it comes back when the lease expires.
    clock.advance(601)
    assert len(await store.claim(10, "me-again", 600)) == 5
    await store.close()


async def test_rate_limit_parks_every_request_until_retry_after(sim, job, clock) -> None:
    store = await ready_store(sim, job, clock)
    sim.faults.append(D1Fault("rate_limited"))
    before = clock()
    assert await store.count_remaining() == 5
    assert clock() - before >= sim.block_s  # the simulator said Retry-After: 300
    await store.close()


async def test_exceeding_1200_requests_in_5_minutes_blocks_and_the_store_waits_it_out(
    tmp_path, job, clock
) -> None:
    sim = D1Simulator(
        tmp_path / "d1.sqlite",
        clock=clock,
        sleep=clock.sleep,
        limit_requests=20,
        ratelimit_headers=False,  # as before Cloudflare sent them: nothing to warn the client
    )
    store = await ready_store(sim, job, clock)  # a limiter far too fast for this account
    for _ in range(25):
        await store.count_remaining()
    assert sim.stats.refused >= 1  # the block happened
    assert clock.slept >= API_BLOCK_S - 1  # and the store sat it out instead of hammering
    await store.close()


async def test_cloudflares_ratelimit_headers_keep_a_too_fast_client_from_the_block(
    tmp_path, job, clock
) -> None:
    """What is left of the account's window (shared with the dashboard, wrangler and every
    other runner) paces the client: it slows before the block, never into it."""
    sim = D1Simulator(tmp_path / "d1.sqlite", clock=clock, sleep=clock.sleep, limit_requests=40)
    store = await ready_store(sim, job, clock)  # a limiter far too fast for this account
    for _ in range(120):
        await store.count_remaining()
    assert sim.stats.refused == 0  # never blocked
    assert sim.stats.peak_in_window(300) <= 40 * 0.9 + 1  # a tenth kept for everyone else
    assert clock.slept >= 300  # it waited for the window to roll on instead
    await store.close()


async def test_the_default_limiter_keeps_a_burst_under_1200_requests_per_5_minutes(
    sim, job, clock
) -> None:
    store = await ready_store(sim, job, clock, rate=3.0)
    for _ in range(2000):
        await store.count_remaining()
    assert sim.stats.refused == 0
    peak = sim.stats.peak_in_window(300)
    assert peak <= 901  # 3 requests/s x 300 s, plus the first of the window
    assert peak < 1200
    await store.close()


async def test_200_unit_writes_go_in_as_few_requests_as_the_size_budget_allows(
    sim, job, clock
) -> None:
    store = await ready_store(sim, job, clock, units=200)
    units = await store.claim(200, "me", 600)
    columns = [job.output_column(f) for f in job.outputs]
    results = [
        UnitResult(
            u.id, {c: "word " * 120 for c in columns}, "m", 1, 1, 1, "2026-11-22T00:00:00Z", "r"
        )
        for u in units
    ]
    chunks = store.pack(results)
    sizes = [sum(statement_size(s) for s in store.request_statements(c)) for c in chunks]
    assert all(size <= store.request_budget_bytes for size in sizes)
    for size, following in zip(sizes, chunks[1:], strict=False):
        next_one = statement_size(store.outcome_statement(following[0]))
        assert size + next_one > store.request_budget_bytes  # each one full
    assert len(chunks) == 2  # ~3.7 KB per unit against a 512 KB budget

    sent = store.requests_sent
    await store.write_results(results)
    assert store.requests_sent - sent == len(chunks)
    assert sim.query("SELECT COUNT(*) AS n FROM units WHERE kn_prompt_version = '1.6'") == [
        {"n": 200}
    ]
    await store.close()


async def test_contract_backend_fixture_uses_the_simulator(backend: Backend) -> None:
    # Guard: the contract suite's "d1" case really goes through D1Store and the simulator.
    backend.seed(plain_units(1))
    store = backend.open()
    await store.migrate()
    if backend.kind == "d1":
        assert isinstance(store, D1Store) and backend.sim is not None
        # table info, where compiled, ids checked, rowid check, the changes
        assert backend.sim.stats.requests == 5
