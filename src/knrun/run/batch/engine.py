"""The batch engine: the same leased units, through xAI's Batch API instead of live calls.

    claimer --leased units--> Submitter (leases to the batch, chunks) --> the batch at xAI
                                                                               |
    record <-- judge <-- Collector (counters, results in any order, request states) <--+

A batch is made only when there is something to add and the cap allows it; its id is in the runs
table before any request is added, and a unit's lease passes to the batch (as long as xAI keeps
results) just before it is added: a run that dies leaves every submitted unit with the batch, and
the next `go --batch` or `knrun batch collect` takes them back, asks xAI which it holds, and
collects. No unit is added twice to a batch, nor to two, whatever xAI answers or fails to.

A guard's stop (drift, failure rate, credit, a storm) cancels the batch and collects it until
nothing is outstanding; any other stop (Ctrl-C, a store outage, a wait bound) leaves it open, its
units leased to it. Collecting buys nothing, so it needs no receipt (`plan.submit` False)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from knrun.errors import ExitCode, KnrunError
from knrun.job import JobSpec
from knrun.pricing import ModelPrice
from knrun.run.batch.collect import Collector, Record
from knrun.run.batch.handle import CANCELS_BATCH, BatchHandle, BatchPlan
from knrun.run.batch.results import stop_for
from knrun.run.batch.resume import take_back
from knrun.run.batch.submit import Submitter
from knrun.run.claimer import Claimer
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, RunState
from knrun.run.ledger import Ledger
from knrun.store.base import SqlUnitStore
from knrun.store.types import Unit
from knrun.xai import XaiError
from knrun.xai.batch import BatchApi

WIND_DOWN_FIRST_S = 1.0
PAGE_S = 2.0  # seconds between polls per results page the last poll read, at least
OnBatch = Callable[[BatchHandle], Awaitable[None]]


class BatchEngine:
    def __init__(
        self,
        *,
        job: JobSpec,
        price: ModelPrice,
        api: BatchApi,
        plan: BatchPlan,
        store: SqlUnitStore,
        config: RunConfig,
        state: RunState,
        control: Control,
        ledger: Ledger,
        record: Record,
        run_id: str,
        run_owner: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        on_batch: OnBatch,
    ) -> None:
        self.job, self.price, self.api, self.plan, self.store = job, price, api, plan, store
        self.config, self.state, self.control, self.ledger = config, state, control, ledger
        self.record, self.run_id, self.run_owner = record, run_id, run_owner
        self._clock, self._sleep, self.on_batch = clock, sleep, on_batch
        self.handle: BatchHandle | None = None
        self.submitter: Submitter | None = None
        self.collector: Collector | None = None

    # -- before the claimer starts ----------------------------------------------------------------

    async def prepare(self) -> None:
        try:
            await self._prepare()
        except XaiError as exc:
            self._stop_for(exc)
        except KnrunError as exc:
            self.control.request_stop(f"preparing the batch: {exc}", exc.exit_code)

    async def _prepare(self) -> None:
        plan = self.plan
        if plan.batch_id is not None:
            handle = BatchHandle(plan.batch_id, self.job.version)
        elif plan.submit and await self._worth_a_batch():
            info = await self.api.create(plan.name)
            handle = BatchHandle(info.batch_id, self.job.version, created=True)
            self.control.emit(Event("batch_created", f"batch {info.batch_id} created"))
        else:
            return
        self._attach(handle)
        await self.on_batch(handle)  # the runs table names the batch before anything is added
        if not handle.created:
            assert self.submitter is not None
            await take_back(self.api, self.store, handle, self._clock, self.control.emit)
            self.submitter.publish()

    async def _worth_a_batch(self) -> bool:
        """A new batch only when a unit is eligible and the cap can pay for one."""
        if not await self.store.count_claimable():
            return False
        if self.ledger.allowance(0) == 0:
            self.ledger.stop_at_cap()
            return False
        return True

    def _attach(self, handle: BatchHandle) -> None:
        self.handle = handle
        self.submitter = submitter = Submitter(
            api=self.api,
            handle=handle,
            store=self.store,
            job=self.job,
            config=self.config,
            state=self.state,
            control=self.control,
            ledger=self.ledger,
            run_owner=self.run_owner,
            clock=self._clock,
            sleep=self._sleep,
        )
        self.collector = Collector(
            api=self.api,
            handle=handle,
            job=self.job,
            price=self.price,
            store=self.store,
            config=self.config,
            state=self.state,
            control=self.control,
            ledger=self.ledger,
            record=self.record,
            add_again=self._add_again,
            publish=submitter.publish,
            run_id=self.run_id,
            clock=self._clock,
            sleep=self._sleep,
        )

    # -- the run ----------------------------------------------------------------------------------

    def claims(self) -> bool:
        """Whether the run takes new units from the claimer."""
        return self.handle is not None and self.plan.submit and not self.handle.cancelled

    def start(self, claimer: Claimer) -> list[asyncio.Task[None]]:
        return [] if self.handle is None else [asyncio.create_task(self._run(claimer))]

    async def _run(self, claimer: Claimer) -> None:
        assert self.submitter is not None
        collecting = asyncio.create_task(self._collect())
        try:
            if self.claims():
                await self.submitter.run(claimer)
        except XaiError as exc:
            self._stop_for(exc)
        except KnrunError as exc:  # the store refused a lease transfer, say
            self.control.request_stop(f"adding to the batch: {exc}", exc.exit_code)
        except Exception as exc:  # a bug: stop with a message, not a traceback
            self.control.request_stop(
                f"internal error in the batch engine: {exc!r}", ExitCode.FAILURE
            )
        finally:
            self.submitter.done = True
        await collecting

    async def _collect(self) -> None:
        try:
            await self._until_done()
        except XaiError as exc:
            self._stop_for(exc)
            await self._after_stop()
        except KnrunError as exc:
            self.control.request_stop(f"collecting the batch: {exc}", exc.exit_code)
        except Exception as exc:
            self.control.request_stop(
                f"internal error in the batch engine: {exc!r}", ExitCode.FAILURE
            )

    async def _until_done(self) -> None:
        assert self.handle is not None and self.collector is not None and self.submitter
        handle, config = self.handle, self.config
        started = self._clock()
        while True:
            pages = self.state.batch_pages
            await self.collector.poll(submitting=not self.submitter.done)
            # A large batch listed in no order costs a whole read a poll: space the polls by
            # the pages read, so a 100,000-unit batch is not read in full every 30 s.
            wait_s = max(config.batch_poll_s, PAGE_S * (self.state.batch_pages - pages))
            if handle.closed:
                return
            if handle.cancelled and self.submitter.done and not self.control.stopping:
                await self._wind_down()  # cancelled before (by the operator): it spreads
                return
            if self.control.stopping:
                await self._after_stop()
                return
            waited = self._clock() - started
            if config.batch_no_wait and self.submitter.done:
                self._leave_open("submitted; the Batch API works on them now")
                return
            if config.batch_max_wait_s is not None and waited >= config.batch_max_wait_s:
                self._leave_open(f"still pending after waiting {config.batch_max_wait_s:,.0f} s")
                return
            await self.control.pause(wait_s * config.time_scale)

    async def _after_stop(self) -> None:
        if self.control.exit_code in CANCELS_BATCH:
            try:
                await self._wind_down()
            except XaiError as exc:
                self.control.emit(Event("batch_left_open", f"winding down: {exc}"))

    async def _wind_down(self) -> None:
        """Cancel what may still run (it would be billed for a run that halted), then keep
        collecting, sooner at first, until nothing of this run's is outstanding."""
        assert self.handle is not None and self.collector is not None
        handle = self.handle
        if handle.outstanding and not handle.cancelled:
            try:
                await self.api.cancel(handle.batch_id)
            except XaiError as exc:
                self.control.emit(
                    Event(
                        "batch_cancel_failed",
                        f"cancelling batch {handle.batch_id}: {exc}; cancel it with "
                        f"`knrun batch cancel {handle.batch_id}`",
                    )
                )
                return
            handle.cancel_sent = handle.cancelled = True
            self.control.emit(
                Event(
                    "batch_cancelled", f"batch {handle.batch_id} cancelled: {self.control.reason}"
                )
            )
        deadline = self._clock() + self.config.batch_cancel_wait_s
        delay = WIND_DOWN_FIRST_S
        while not handle.closed:
            await self.collector.poll(submitting=False)
            if handle.closed:
                return
            if self._clock() >= deadline:
                self.control.emit(
                    Event(
                        "batch_left_open",
                        f"batch {handle.batch_id}: {handle.outstanding:,} requests still "
                        "outstanding after the cancel; `knrun batch collect` finishes the job",
                    )
                )
                return
            await self._sleep(delay)
            delay = min(2 * delay, self.config.batch_poll_s)

    def _leave_open(self, why: str) -> None:
        assert self.handle is not None
        self.control.request_stop(
            f"batch {self.handle.batch_id}: {self.handle.outstanding:,} requests {why}; "
            "`knrun batch collect` writes their results when they are done (results typically "
            "within 24 h)",
            ExitCode.OK,
        )

    async def finish(self, backlog: int) -> None:
        """After the writer: a closed batch's leases go back (units an earlier run left with
        it and nothing came of); not while outcomes wait in the spool (a failure is written
        only under the batch's lease), which keeps the batch open for the next start."""
        handle = self.handle
        if handle is None or not handle.closed:
            return
        if backlog:
            handle.closed = False
            return
        try:
            await self.store.release(handle.owner)
        except KnrunError as exc:
            handle.closed = False
            self.control.emit(Event("store_error", f"closing batch {handle.batch_id}: {exc}"))

    def collected(self) -> str:
        """A collecting run's last word, when it ended on its own."""
        handle = self.handle
        if handle is None:
            return "no batch to collect"
        return f"batch {handle.batch_id} collected: {handle.collected:,} results written"

    async def _add_again(self, units: list[Unit], adds: int) -> None:
        assert self.submitter is not None
        await self.submitter.add(units, transfer=False, adds=adds)

    def _internal(self, exc: Exception) -> None:
        """A bug: stop with a message, not a traceback."""
        self.control.request_stop(f"internal error in the batch engine: {exc!r}", ExitCode.FAILURE)

    def _stop_for(self, exc: XaiError) -> None:
        self.control.request_stop(*stop_for(exc))
