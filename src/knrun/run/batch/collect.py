"""Collecting a batch: every result xAI has produced reaches the ledger, the guards and the spool
within two polls, whatever order xAI lists results in.

A poll reads the counters, then the results from the first page not yet read in full (cheap
when xAI appends results in order). When the counters say more of this run's requests have ended
than were found (or the counters were left out, or every few polls anyway), it reads the whole
list: with pages in no order, a new result can be anywhere. That costs a page per 1,000 results
a poll, so the engine spaces polls by the pages read (2 s a page, 30 s at least).

The request list, with each request's state, decides what goes back to the pool: a unit is given
back only when xAI lists its request as cancelled (or failed with no result), never on counters
alone; a request whose add got no usable answer is looked for there once the list has had time
to catch up, and added again only when it is provably missing.

After a guard stops the run, the batch is cancelled, and polling goes on (sooner at first) until
nothing of this run's is outstanding: requests already running when the cancel came still finish
and are billed, and their results are written. If that takes longer than `batch_cancel_wait_s`,
the batch stays open for `knrun batch collect`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from knrun.errors import ExitCode, StoreError
from knrun.job import JobSpec
from knrun.pricing import ModelPrice, format_usd
from knrun.run import judge
from knrun.run.batch.handle import BatchHandle, Doubt, batch_counters
from knrun.run.batch.results import GiveBack, take
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, RunState
from knrun.run.ledger import Ledger
from knrun.store.base import SqlUnitStore
from knrun.store.types import Unit
from knrun.xai.batch import CANCELLED, FAILED, PAGE, BatchApi, BatchInfo, BatchResult

Record = Callable[[judge.Judged], Awaitable[None]]
AddAgain = Callable[[list[Unit], int], Awaitable[None]]
FULL_PASS_EVERY = 4  # polls: a full read even when the counters see nothing missing
SETTLE_POLLS = 2  # polls before a doubtful request's absence from xAI's list is believed
SETTLE_MIN_S = 60.0
FAILED_GRACE_POLLS = 3  # polls a request may be listed failed before its result shows
MAX_ADDS = 3  # add calls for one request, each after xAI's list proved it absent


class Collector:
    def __init__(
        self,
        *,
        api: BatchApi,
        handle: BatchHandle,
        job: JobSpec,
        price: ModelPrice,
        store: SqlUnitStore,
        config: RunConfig,
        state: RunState,
        control: Control,
        ledger: Ledger,
        record: Record,
        add_again: AddAgain,
        publish: Callable[[], None],
        run_id: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.api, self.handle, self.job, self.price, self.store = api, handle, job, price, store
        self.config, self.state, self.control, self.ledger = config, state, control, ledger
        self.record, self.add_again, self.run_id = record, add_again, run_id
        self.publish = publish  # units in flight for the cap: the submitter's count
        self._clock, self._sleep, self.emit = clock, sleep, control.emit
        self._tail: str | None = None  # the first results page not yet read in full
        self._polls = 0
        self._failed_since: dict[str, int] = {}  # request id -> poll it was first seen failed
        self._started = clock()
        self.settle_s = max(SETTLE_POLLS * config.batch_poll_s, SETTLE_MIN_S)

    # -- one poll ---------------------------------------------------------------------------------

    async def poll(self, *, submitting: bool) -> None:
        handle = self.handle
        self._polls += 1
        info = await self.api.get(handle.batch_id)
        self._note(info)
        if handle.awaiting or handle.doubtful:
            await self._read(self._tail)
            if not info.counted or self._missing(info) or self._polls % FULL_PASS_EVERY == 0:
                await self._read(None, whole=True)
        if self._needs_states(info):
            await self._resolve()
        await self.give_back()
        self.publish()
        if not submitting and not handle.outstanding and not handle.closed:
            await self._close()
        self._progress(info)

    def _note(self, info: BatchInfo) -> None:
        handle = self.handle
        if info.counted:
            handle.info = info
            self.state.batch = batch_counters(info)
        if info.cancelled or info.cancelled_by_xai:
            handle.cancelled = True
        if info.cancelled_by_xai and not self.control.stopping:
            self.control.request_stop(
                f"xAI cancelled batch {handle.batch_id}: {info.cancelled_by_xai}",
                ExitCode.BREAKER,
            )

    def _missing(self, info: BatchInfo) -> bool:
        """The counters say more of the awaited requests have ended than have been found."""
        return info.counted and len(self.handle.awaiting) > info.num_pending

    async def _read(self, token: str | None, *, whole: bool = False) -> None:
        """Results pages from `token` on, to the end of the list: the tail (pages before it
        were read in full), or the whole list. A whole read never stops at the counters'
        count: what it found first need not be what the counters counted (each read lags its
        own way), and a result it skipped would wait for another poll."""
        handle = self.handle
        while handle.awaiting or handle.doubtful:
            page, following, size = await self.api.results(handle.batch_id, self.job.model, token)
            self.state.batch_pages += 1
            fresh = {
                r.request_id: r
                for r in page
                if r.request_id in handle.awaiting or r.request_id in handle.doubtful
            }
            # Together: the spool commits concurrent appends as one (one fsync a page).
            await asyncio.gather(*(self._take(result) for result in fresh.values()))
            if following is None:
                return
            if not whole and size >= PAGE:
                self._tail = following  # every page before it was read in full
            token = following

    async def _take(self, result: BatchResult) -> None:
        handle = self.handle
        rid = result.request_id
        doubt = handle.doubtful.pop(rid, None)
        unit = handle.awaiting.pop(rid) if doubt is None else doubt.unit
        handle.held.add(rid)
        attempt = judge.Attempt(
            self.run_id, handle.owner, f"{handle.batch_id}:{rid}", self.job.request_hash
        )
        taken = take(
            result, unit, job=self.job, price=self.price, ledger=self.ledger, attempt=attempt
        )
        if isinstance(taken, GiveBack):
            handle.give_back[rid] = unit
            if taken.stop is not None:
                self.control.request_stop(*taken.stop)
            return
        handle.collected += 1
        handle.taking += 1  # outstanding until the ledger has it (the submitter's gate reads it)
        try:
            await self.record(taken)
        finally:
            handle.taking -= 1

    # -- the request list -------------------------------------------------------------------------

    def _needs_states(self, info: BatchInfo) -> bool:
        handle, now = self.handle, self._clock()
        if any(now - doubt.since >= self.settle_s for doubt in handle.doubtful.values()):
            return True
        if not handle.awaiting:
            return False
        cancelled = handle.cancelled or (info.counted and info.num_cancelled > 0)
        return cancelled or info.done or bool(self._failed_since)

    async def _resolve(self) -> None:
        """What xAI's request list says of each awaited and doubtful request."""
        handle = self.handle
        states = await self.api.request_states(handle.batch_id)
        for rid, unit in list(handle.awaiting.items()):
            state = states.get(rid)
            if state == CANCELLED:
                del handle.awaiting[rid]
                handle.give_back[rid] = unit
            elif state == FAILED:
                first = self._failed_since.setdefault(rid, self._polls)
                if self._polls - first >= FAILED_GRACE_POLLS:  # its error never showed
                    del handle.awaiting[rid]
                    handle.give_back[rid] = unit
                    self._failed_since.pop(rid)
        again: list[Doubt] = []
        complete: bool | None = None  # the list has caught up: asked only when it matters
        for rid, doubt in list(handle.doubtful.items()):
            if rid in states:
                del handle.doubtful[rid]
                handle.held.add(rid)
                if states[rid] == CANCELLED:
                    handle.give_back[rid] = doubt.unit
                else:
                    handle.awaiting[rid] = doubt.unit
            elif self._clock() - doubt.since >= self.settle_s:
                if complete is None:
                    complete = await self._list_complete(len(states))
                if not complete:
                    continue
                del handle.doubtful[rid]
                if doubt.adds >= MAX_ADDS or handle.cancelled or self.control.stopping:
                    handle.give_back[rid] = doubt.unit  # not in the batch: back to the pool
                else:
                    again.append(doubt)
        if again:
            self.emit(Event("batch_add_again", f"{len(again)} requests are not in the batch"))
            await self.add_again([doubt.unit for doubt in again], 1 + max(d.adds for d in again))

    async def _list_complete(self, listed: int) -> bool:
        """Whether the request list, as just read, holds every request the batch has: the
        counters, read after it, count no more. (Adds only ever raise the count, so a list
        that lags an add made meanwhile shows fewer.)"""
        info = await self.api.get(self.handle.batch_id)
        return info.counted and listed >= info.num_requests

    async def give_back(self) -> None:
        """Hand units whose requests will never produce a result back to the pool."""
        handle = self.handle
        if not handle.give_back:
            return
        ids = [unit.id for unit in handle.give_back.values()]
        try:
            released = await self.store.release(handle.owner, ids)
        except StoreError as exc:  # the next poll tries again
            self.emit(Event("store_error", f"giving back {len(ids)} units: {exc}"))
            return
        handle.give_back.clear()
        self.state.given_back += released
        self.emit(
            Event("given_back", f"{released} units back to the pool (their requests never ran)")
        )

    async def _close(self) -> None:
        """Nothing of this run's is outstanding: the batch is done with. (Its units' leases
        go back once their outcomes are written: `BatchEngine.finish`.)"""
        self.handle.closed = True
        info = self.handle.info
        if info is not None:
            self.compare_totals(info)

    def compare_totals(self, info: BatchInfo) -> None:
        """xAI's own total for the batch against the results' bills, for a batch this run
        created (a resumed batch's earlier results were billed to earlier runs); a warning:
        each result's bill has already been judged."""
        if not self.handle.created or info.total_cost_ticks is None or not self.state.billed_ticks:
            return
        gap = abs(info.total_cost_ticks - self.state.billed_ticks) / self.state.billed_ticks
        if gap > 0.02:
            self.emit(
                Event(
                    "drift_check",
                    f"xAI's total for batch {info.batch_id} is {format_usd(info.total_cost_ticks)}"
                    f", its results' bills sum to {format_usd(self.state.billed_ticks)} "
                    f"({gap:.1%} apart): check the console's usage page",
                )
            )

    def _progress(self, info: BatchInfo) -> None:
        handle = self.handle
        waited = self._clock() - self._started
        counters = handle.info
        done = "counters not sent"
        if counters is not None:
            done = (
                f"{counters.num_success + counters.num_error:,} of {counters.num_requests:,} "
                f"done, {counters.num_pending:,} pending at xAI"
            )
        self.emit(
            Event(
                "batch_progress",
                f"batch {handle.batch_id}: {done}; {handle.collected:,} collected here; "
                f"waited {_duration(waited)}",
                {"counted": info.counted, "outstanding": handle.outstanding},
            )
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
