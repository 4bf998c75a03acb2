"""The run's parts, each alone with fakes: the ledger and the writer, with no runner, no HTTP
and no store behind them (the claimer and the engine are exercised through the runner tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import EXAMPLE_PRICING
from knrun.errors import ExitCode, StoreRefused, StoreUnusable
from knrun.job import JobSpec
from knrun.pricing import load_pricing
from knrun.run import judge
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, RunState
from knrun.run.ledger import Ledger
from knrun.run.writer import Writer
from knrun.spool import Spool
from knrun.store.types import Outcome, UnitFailure, UnitResult

pytestmark = pytest.mark.anyio
UNIT_TICKS = 10**7  # $0.001


def result(n: int, billed: int = UNIT_TICKS) -> UnitResult:
    return UnitResult(
        unit_id=n,
        values={},
        model="grok-4.3",
        cost_ticks=billed,
        input_tokens=100,
        output_tokens=50,
        processed_at="2026-12-01T00:00:00Z",
        run_id="r1",
        attempt_id=f"a{n}",
        billed_ticks=billed,
        tracked_ticks=billed,
    )


def failure(n: int, reason: str = "invalid_json") -> UnitFailure:
    return UnitFailure(
        unit_id=n,
        reason=reason,
        detail="not JSON",
        owner="me",
        processed_at="2026-12-01T00:00:00Z",
        run_id="r1",
        attempt_id=f"a{n}",
        billed_ticks=UNIT_TICKS,
        tracked_ticks=UNIT_TICKS,
    )


def parts(job: JobSpec, config: RunConfig) -> tuple[RunState, Control, list[Event]]:
    events: list[Event] = []
    state = RunState(run_id="r1", total=1000, concurrency=config.concurrency)
    return state, Control(state, events.append, grace_s=1.0), events


def ledger_for(job: JobSpec, config: RunConfig) -> tuple[Ledger, RunState, Control]:
    state, control, _ = parts(job, config)
    price = load_pricing(EXAMPLE_PRICING).price_for(job.model)
    return Ledger(job=job, price=price, config=config, state=state, control=control), state, control


def test_the_ledgers_cap_allowance_shrinks_with_every_tick_billed(job: JobSpec) -> None:
    config = RunConfig(cap_ticks=100 * UNIT_TICKS, estimate_unit_ticks=UNIT_TICKS)
    ledger, _, _ = ledger_for(job, config)
    worst = 2 * UNIT_TICKS  # twice the estimate until a dearer unit is seen
    assert ledger.allowance(0) == 100 * UNIT_TICKS // worst
    for n in range(40):
        ledger.record(judge.Judged(result(n), 100, 50))
    assert ledger.money.billed_ticks == 40 * UNIT_TICKS
    assert ledger.allowance(0) == 60 * UNIT_TICKS // worst
    # Units in flight count at their worst case too: ten of them leave room for 20 fewer.
    assert ledger.allowance(10) == (60 * UNIT_TICKS - 10 * worst) // worst


async def test_the_ledger_stops_a_run_whose_paid_replies_fail_and_refunds_their_attempts(
    job: JobSpec,
) -> None:
    ledger, _, control = ledger_for(job, RunConfig())
    refunds = []
    for n in range(20):
        got, _ = ledger.record(judge.Judged(failure(n), 100, 50))
        refunds += got
    assert control.exit_code == ExitCode.FAILURE_RATE
    assert control.reason is not None and "invalid_json" in control.reason
    # Every failure behind the trip gives its attempt back: the run was at fault, not the units.
    assert sorted(r.unit_id for r in refunds) == list(range(20))


class FakeStore:
    """Takes writes in memory; refuses one unit's result, or every write."""

    def __init__(self, refuse: int | None = None, unusable: bool = False) -> None:
        self.rows: dict[int, Outcome] = {}
        self.refuse, self.unusable = refuse, unusable

    async def write_results(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        if self.unusable:
            raise StoreUnusable("the database is read-only")
        if any(o.unit_id == self.refuse for o in outcomes):
            raise StoreRefused("CHECK constraint failed")
        self.rows |= {o.unit_id: o for o in outcomes}
        return []

    async def release(self, owner: str, unit_ids: Sequence[int] | None = None) -> int:
        return 0


async def write_all(job: JobSpec, store: FakeStore, spool: Spool, n: int) -> Writer:
    config = RunConfig(write_batch=10, write_interval_s=0.01)
    state, control, _ = parts(job, config)
    writer = Writer(
        store=store,
        spool=spool,
        job=job,
        config=config,
        state=state,  # type: ignore[arg-type]
        control=control,
    )
    await writer.spool_outcomes([result(i) for i in range(n)])
    writer.close()
    await writer.run()
    return writer


async def test_the_writer_keeps_a_refused_result_aside_and_writes_its_neighbours(
    job: JobSpec, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    store = FakeStore(refuse=7)
    writer = await write_all(job, store, spool, 25)
    assert sorted(store.rows) == [i for i in range(25) if i != 7]
    assert writer.quarantined == ["7: CHECK constraint failed"]
    assert await spool.quarantined() == 1
    assert await spool.pending(job.name, job.version) == []
    await spool.close()


async def test_the_writer_stops_on_a_store_that_refuses_everything_and_the_spool_keeps_it(
    job: JobSpec, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    writer = await write_all(job, FakeStore(unusable=True), spool, 25)
    assert writer.control.exit_code != ExitCode.OK
    assert writer.quarantined == []
    assert len(await spool.pending(job.name, job.version)) == 25  # every paid result kept
    await spool.close()
