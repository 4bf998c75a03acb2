"""The runner in-process, where its timing can be watched: the shared pause, crashes, outages,
and a store that refuses writes for a while."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from conftest import EXAMPLE_PRICING, FakeClock, plain_units, seed_units
from knrun.errors import ExitCode, StoreError
from knrun.job import JobSpec
from knrun.pricing import load_pricing
from knrun.run import judge
from knrun.run.coordinator import RunConfig, Runner, RunResult
from knrun.sim.scenario import Scenario
from knrun.sim.xai import XaiSimulator
from knrun.spool import Spool
from knrun.store import SqliteStore
from knrun.xai import XaiClient

pytestmark = pytest.mark.anyio


async def run(
    tmp_path: Path,
    job: JobSpec,
    sim: XaiSimulator,
    *,
    units: int = 200,
    store: Any = None,
    config: RunConfig | None = None,
    fake_sleep: FakeClock | None = None,
) -> tuple[RunResult, Any]:
    import sqlite3

    path = tmp_path / "units.sqlite"
    if units:
        conn = sqlite3.connect(path, isolation_level=None)
        seed_units(conn, plain_units(units))
        conn.close()
    store = store or SqliteStore(job, path)
    await store.migrate()
    xai = XaiClient(
        api_key=SecretStr(sim.scenario.api_key),
        base_url="http://xai.sim/v1",
        transport=sim.transport(),
        sleep=(fake_sleep or FakeClock()).sleep,
    )
    spool = Spool(tmp_path / "spool.sqlite")
    runner = Runner(
        job=job,
        price=load_pricing(EXAMPLE_PRICING).price_for(job.model),
        store=store,
        xai=xai,
        spool=spool,
        config=config or RunConfig(concurrency=20, write_interval_s=0.05),
        run_id="r1",
        owner="m:r1",
        total=units,
    )
    try:
        result = await runner.run()
    finally:
        await xai.aclose()
        await spool.close()
    return result, store


async def test_a_429_holds_its_own_request_for_its_retry_after_and_nobody_else(
    tmp_path: Path, job: JobSpec
) -> None:
    """No shared freeze: the refused request waits the Retry-After (a proxy may send one; xAI
    does not), and the other workers keep the pace meanwhile."""
    sim = XaiSimulator(Scenario(latency={"median_s": 0.01, "sigma": 0.1}, balance_usd=Decimal(100)))
    sim.force("rate_limited")
    sim.scenario.faults.retry_after_s = 0.4
    result, store = await run(tmp_path, job, sim)
    assert result.exit_code == ExitCode.OK and result.state.done == 200
    assert result.state.rate_limited == 1 and result.state.rate_limit_rounds == 1
    [limited_at] = [at for at, outcome in sim.stats.answered if outcome == "rate_limited"]
    during = [at for at in sim.stats.arrivals if limited_at + 0.03 < at < limited_at + 0.37]
    assert during  # the others went on sending while the refused one waited
    assert max(sim.stats.arrivals) >= limited_at + 0.4  # and it went again after its pause
    await store.close()


async def test_units_lost_to_a_provider_outage_stop_the_run_instead_of_failing_the_corpus(
    tmp_path: Path, job: JobSpec
) -> None:
    sim = XaiSimulator(Scenario(latency={"median_s": 0}, balance_usd=Decimal(100)))
    sim.force("server_error", 100_000)
    config = RunConfig(concurrency=5, write_interval_s=0.05)
    result, store = await run(tmp_path, job, sim, config=config)
    assert result.exit_code == ExitCode.FAILURE
    assert result.reason.startswith("xAI unreachable: 10 units in a row failed without a reply")
    progress = await store.progress()
    assert progress.failed <= 10 + 5  # the streak, plus what was in flight
    assert progress.remaining >= 200 - 15
    await store.close()


async def test_a_crash_in_a_worker_stops_the_run_at_once(
    tmp_path: Path, job: JobSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = XaiSimulator(Scenario(latency={"median_s": 0}, balance_usd=Decimal(100)))
    real = judge.judge
    calls = 0

    def flaky(*args: Any, **kwargs: Any) -> judge.Judged:
        nonlocal calls
        calls += 1
        if calls == 30:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(judge, "judge", flaky)
    result, store = await run(tmp_path, job, sim)
    assert (
        result.exit_code == ExitCode.FAILURE
        and "internal error: RuntimeError: boom" in result.reason
    )
    assert result.state.processed < 200
    assert (await store.progress()).leased == 0  # unstarted units were given back
    await store.close()


class RefusingStore(SqliteStore):
    """Refuses result writes until told otherwise, like a store in an outage."""

    refusing = True
    refused = 0

    async def write_results(self, outcomes: Any) -> Any:
        if self.refusing:
            self.refused += 1
            raise StoreError("D1 HTTP 503: unavailable")
        return await super().write_results(outcomes)


async def test_a_store_outage_pauses_writes_and_the_backlog_drains_after(
    tmp_path: Path, job: JobSpec
) -> None:
    sim = XaiSimulator(Scenario(latency={"median_s": 0.01}, balance_usd=Decimal(100)))
    store = RefusingStore(job, tmp_path / "units.sqlite")
    config = RunConfig(concurrency=20, write_interval_s=0.05, store_retry_base_s=0.05)

    async def end_outage() -> None:
        while sim.stats.paid_requests < 150:  # noqa: ASYNC110 - watching a plain counter
            await asyncio.sleep(0.005)
        store.refusing = False

    ender = asyncio.create_task(end_outage())
    result, _ = await run(tmp_path, job, sim, store=store, config=config)
    await ender
    assert result.exit_code == ExitCode.OK and result.unwritten == 0
    assert store.refused > 0
    progress = await store.progress()
    assert progress.done == 200 and sim.stats.paid_requests == 200
    await store.close()


async def test_a_run_that_cannot_write_in_its_grace_period_leaves_results_in_the_spool(
    tmp_path: Path, job: JobSpec
) -> None:
    sim = XaiSimulator(Scenario(latency={"median_s": 0}, balance_usd=Decimal(100)))
    store = RefusingStore(job, tmp_path / "units.sqlite")
    config = RunConfig(
        concurrency=10, write_interval_s=0.05, write_grace_s=0.3, store_retry_base_s=0.05
    )
    result, _ = await run(tmp_path, job, sim, units=50, store=store, config=config)
    assert result.exit_code == ExitCode.FAILURE and result.unwritten == 50
    assert "stay in the spool" in result.reason
    spool = Spool(tmp_path / "spool.sqlite")
    assert len(await spool.pending("kn", "1.6")) == 50
    await spool.close()
    # Leases stay until the next start here writes these results (a failure needs its lease).
    store.refusing = False
    assert (await store.progress()).leased == 50
    await store.close()


def identical_units(count: int) -> list[dict[str, Any]]:
    unit = plain_units(1)[0]
    return [{**unit, "id": n} for n in range(1, count + 1)]


async def capped_run(tmp_path: Path, job: JobSpec, units: int) -> tuple[RunResult, int]:
    """Ten workers, units that cost exactly `unit_cost` each, and a cap of 10.5 units. The
    estimate is 0.6 of the real cost, so the cap's worst case (twice the estimate, then 1.25 x
    the dearest unit seen) covers every unit, as it must for the cap to hold."""
    import math
    import sqlite3

    from knrun.estimate import prompt_tokens

    sim = XaiSimulator(
        Scenario(
            latency={"median_s": 0},
            balance_usd=Decimal(100),
            output={"visible_tokens_sd": 0, "reasoning_tokens_sd": 0},
        )
    )
    rows = identical_units(units)
    messages = job.render({k: rows[0][k] for k in ("id", *job.source.columns)})
    prompt = sum(math.ceil(len(m["content"]) / 4) for m in messages)
    unit_cost = prompt * 12_500 + (900 + 2000) * 25_000
    path = tmp_path / "units.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    seed_units(conn, rows)
    conn.close()
    store = SqliteStore(job, path)
    await store.migrate()
    cap = unit_cost * 21 // 2
    config = RunConfig(
        # The default 2 s write interval: the last results are still on their way to the store
        # when the cap blocks the next claim, which must not count them as units left.
        concurrency=10,
        cap_ticks=cap,
        estimate_unit_ticks=unit_cost * 3 // 5,
    )
    result, _ = await run(tmp_path, job, sim, units=0, store=store, config=config)
    await store.close()
    assert prompt_tokens(messages) > 0
    return result, cap


async def test_a_cap_that_blocks_only_after_the_last_unit_is_not_a_cap_stop(
    tmp_path: Path, job: JobSpec
) -> None:
    result, cap = await capped_run(tmp_path, job, units=10)
    assert result.exit_code == ExitCode.OK, result.reason
    assert result.state.done == 10 and result.state.billed_ticks <= cap


async def test_a_cap_that_leaves_units_behind_stops_with_exit_4(
    tmp_path: Path, job: JobSpec
) -> None:
    result, cap = await capped_run(tmp_path, job, units=12)
    assert result.exit_code == ExitCode.SPEND_CAP and "spend cap reached" in result.reason
    assert result.state.done == 10 and result.state.billed_ticks <= cap


async def test_a_paid_reply_reaches_the_spool_before_the_balance_read(
    tmp_path: Path, job: JobSpec
) -> None:
    """The drift check at unit 100 reads the prepaid balance, a network call that can hang.
    The reply that made the check due must already be durable while it does."""
    import sqlite3

    sim = XaiSimulator(Scenario(latency={"median_s": 0}, balance_usd=Decimal(100)))
    path = tmp_path / "units.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    seed_units(conn, plain_units(100))
    conn.close()
    store = SqliteStore(job, path)
    await store.migrate()
    xai = XaiClient(
        api_key=SecretStr(sim.scenario.api_key),
        base_url="http://xai.sim/v1",
        transport=sim.transport(),
    )
    spool = Spool(tmp_path / "spool.sqlite")
    reads = 0
    answer = asyncio.Event()
    spooled_at_read: list[int] = []

    async def balance() -> int:
        nonlocal reads
        reads += 1
        if reads == 2:  # the drift check's read (the first is at the start)
            spooled_at_read.append(len(await spool.pending("kn", "1.6")) + runner.state.written)
            await answer.wait()
        return 100 * 10**10

    runner = Runner(
        job=job,
        price=load_pricing(EXAMPLE_PRICING).price_for(job.model),
        store=store,
        xai=xai,
        spool=spool,
        config=RunConfig(concurrency=1, write_interval_s=0.05),
        run_id="r1",
        owner="m:r1",
        total=100,
        balance=balance,
    )
    running = asyncio.create_task(runner.run())
    while not spooled_at_read:  # noqa: ASYNC110 - watching a plain list
        await asyncio.sleep(0.01)
    answer.set()
    result = await running
    assert spooled_at_read == [100]  # the 100th reply was on disk before the read began
    assert result.exit_code == ExitCode.OK and result.state.done == 100
    await xai.aclose()
    await spool.close()
    await store.close()
