"""The run, as parts with one job each, wired here:

    claimer --leased units--> engine --paid replies--> record --> spool --> writer --> store
                                 \\                     |
                                  pacing              ledger (money, cap, drift, failure rate)

The claimer keeps a bounded queue of leased units fed; the engine (a pool of workers, paced)
turns them into replies; `record` counts each outcome (state and ledger), makes it durable in
the spool before anything else waits on the network, and only then lets the ledger read the
balance; the writer drains the spool to the store in batches. Any part can stop the run through
the shared `Control`. Events go out through a sink; nothing here imports UI code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from knrun.errors import ExitCode, StoreError
from knrun.job import JobSpec
from knrun.pricing import ModelPrice
from knrun.run import judge, wiring
from knrun.run.batch.engine import BatchEngine, OnBatch
from knrun.run.batch.handle import BatchPlan
from knrun.run.claimer import Claimer
from knrun.run.config import RunConfig, RunResult
from knrun.run.control import Control
from knrun.run.events import Event, EventSink, RunState, discard
from knrun.run.ledger import BalanceReader, Ledger, OthersReader
from knrun.run.live.engine import LiveEngine
from knrun.run.writer import Writer
from knrun.spool import Spool
from knrun.store.base import SqlUnitStore
from knrun.store.types import UnitFailure
from knrun.xai import XaiClient

__all__ = ["BalanceReader", "OthersReader", "RunConfig", "RunResult", "Runner"]


class Runner:
    def __init__(
        self,
        *,
        job: JobSpec,
        price: ModelPrice,
        store: SqlUnitStore,
        xai: XaiClient,
        spool: Spool,
        config: RunConfig,
        run_id: str,
        owner: str,
        total: int,
        events: EventSink = discard,
        balance: BalanceReader | None = None,
        others: OthersReader | None = None,
        batch: BatchPlan | None = None,
        on_batch: OnBatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job, self.store, self.config, self.spool = job, store, config, spool
        self.run_id, self.owner, self.emit = run_id, owner, events
        self.state = RunState(
            run_id=run_id,
            total=total,
            concurrency=config.workers,
            cap_ticks=config.cap_ticks,
            estimate_ticks=(config.estimate_unit_ticks or 0) * total or None,
        )
        self.control = Control(self.state, events, wiring.grace_s(config, job, batch))
        self._wire(price, xai, balance, others, batch, on_batch, clock)

    def _wire(
        self,
        price: ModelPrice,
        xai: XaiClient,
        balance: BalanceReader | None,
        others: OthersReader | None,
        batch: BatchPlan | None,
        on_batch: OnBatch | None,
        clock: Callable[[], float],
    ) -> None:
        """The parts, each given what it shares with the others."""
        job, config, store, spool, events = self.job, self.config, self.store, self.spool, self.emit
        lease_s = wiring.lease_s(config, job)
        self.ledger = Ledger(
            job=job,
            price=price,
            config=config,
            state=self.state,
            control=self.control,
            balance=balance,
            others=others,
        )
        self.pacing = wiring.pacing(job, config, self.state, events)
        self.claimer = Claimer(
            store=store,
            config=config,
            state=self.state,
            control=self.control,
            ledger=self.ledger,
            owner=self.owner,
            lease_s=lease_s,
            page_size=wiring.page_size(self.pacing, batch),
        )
        self.writer = Writer(
            store=store,
            spool=spool,
            job=job,
            config=config,
            state=self.state,
            control=self.control,
            clock=clock,
        )
        parts = wiring.Parts(
            job, price, xai, config, self.state, self.control, self.ledger, self.record, events
        )
        self.engine: LiveEngine | BatchEngine = (
            wiring.live_engine(parts, self.pacing, spool, self.run_id, self.owner, lease_s, clock)
            if batch is None
            else wiring.batch_engine(parts, store, batch, on_batch, self.run_id, self.owner)
        )

    # -- control ----------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.control.stopping

    @property
    def quarantined(self) -> list[str]:
        return self.writer.quarantined

    @property
    def lost(self) -> list[str]:
        return self.writer.lost

    def request_stop(self, reason: str, exit_code: ExitCode) -> None:
        self.control.request_stop(reason, exit_code)

    def cancel_now(self) -> None:
        """Second Ctrl-C: drop in-flight requests and stop waiting for the store. Paid results
        are already in the spool."""
        self.control.request_stop("interrupted", ExitCode.INTERRUPTED)
        self.control.cancel_workers()
        self.writer.abandon()

    # -- the run ----------------------------------------------------------------------------------

    async def run(self) -> RunResult:
        self.emit(
            Event("run_started", f"{self.state.total} units eligible", {"run_id": self.run_id})
        )
        await self.ledger.start()
        await self.engine.prepare()
        writer = asyncio.create_task(self.writer.run())
        tasks = [asyncio.create_task(self.claimer.heartbeat())]
        if self.engine.claims() and not self.control.stopping:
            tasks.append(asyncio.create_task(self.claimer.run(self.config.workers)))
        self.control.workers = self.engine.start(self.claimer)
        try:
            await asyncio.gather(*self.control.workers, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._settle_in_flight()
            await self.ledger.finish()
            self.writer.close()  # the writer flushes what is left, then ends
            await writer
            await self.engine.finish(self.state.write_backlog)
            # The run's own leases: units claimed and never sent (a batch's units are leased
            # to the batch, which gives them back itself).
            await self.writer.release_leases(self.owner)
        return await self._result()

    async def _settle_in_flight(self) -> None:
        """Requests this run sent and never heard back from (a second Ctrl-C cut them off):
        possibly billed, so they count now, in the run's figures and in the spool."""
        try:
            charges = await self.spool.settle_in_flight(
                await self.spool.in_flight(run_id=self.run_id)
            )
        except StoreError as exc:  # still marked: the next start counts them
            self.emit(Event("spool_error", f"counting requests cut off in flight: {exc}"))
            return
        for charge in charges:
            self.state.money.add(charge)
        self.state.write_backlog += len(charges)
        if charges:
            self.emit(
                Event(
                    "possibly_billed",
                    f"{len(charges)} requests were cut off in flight: counted as possibly billed",
                )
            )

    async def record(self, judged: judge.Judged) -> None:
        """Count one outcome, all its figures at once (its cost is spent whatever happens next),
        make it durable in the spool, and only then let a guard wait on the network."""
        state, outcome = self.state, judged.outcome
        if judged.input_tokens:
            state.replies += 1
            state.input_tokens += judged.input_tokens
            state.output_tokens += judged.output_tokens
        if isinstance(outcome, UnitFailure):
            state.failed += 1
            state.failed_by_reason[outcome.reason] += 1
        else:
            state.done += 1
        refunds, reading = self.ledger.record(judged)
        await self.writer.spool_outcomes([outcome, *refunds])
        if isinstance(outcome, UnitFailure):
            self.emit(Event("unit_failed", outcome.error_text, {"unit": outcome.unit_id}))
        else:
            self.emit(
                Event("unit_done", "", {"unit": outcome.unit_id, "ticks": outcome.cost_ticks})
            )
        if reading is not None:
            self.ledger.check(reading)

    async def _result(self) -> RunResult:
        writer, control = self.writer, self.control
        reason = control.reason or await self._all_processed()
        unwritten = writer.unwritten
        if control.exit_code == ExitCode.OK and unwritten:
            control.fail(ExitCode.FAILURE)
            reason = f"{unwritten} paid results could not be written; they stay in the spool"
        writer.lost += [f"{outcome.unit_id}: never written" for outcome in writer.unspooled]
        if writer.lost:  # whatever else happened, paid results are gone: say so
            control.exit_code = ExitCode.FAILURE
            reason += (
                f"; {len(writer.lost)} paid results could not be saved anywhere (the spool "
                "failed): " + ", ".join(writer.lost[:5])
            )
        if writer.quarantined:
            reason += (
                f"; {len(writer.quarantined)} results the store refused are kept in the spool's "
                "quarantine table"
            )
        self.emit(Event("run_finished", reason, {"exit_code": int(control.exit_code)}))
        return RunResult(self.run_id, control.exit_code, reason, self.state, unwritten)

    async def _all_processed(self) -> str:
        """A run that ends on its own must have taken every unit it could: one that was given
        back, or whose claim was lost, makes the run end non-zero so nobody takes it for done."""
        if isinstance(self.engine, BatchEngine) and not self.engine.plan.submit:
            return self.engine.collected()
        if self.config.failed_only or self.config.max_units is not None:
            return "all eligible units processed"
        try:
            left = await self.store.count_claimable()
        except StoreError as exc:
            self.emit(Event("store_error", f"counting what is left: {exc}"))
            return "all eligible units processed (what is left could not be counted)"
        if left:
            self.control.fail(ExitCode.FAILURE)
            return (
                f"{left} eligible units were not processed ({self.state.given_back} given back "
                "unsent, or leased by a claim whose reply was lost): run `knrun go` again"
            )
        return "all eligible units processed"
