"""The batch engine: the same leased units, through xAI's Batch API instead of live calls.

    claimer --leased units--> submit (chunks of requests) --> the batch at xAI
                                                                   |
    record <-- judge <-- collect (poll the counters, page the results as they come) <--+

A batch run's units are leased to the batch itself (`batch_owner`), for as long as xAI keeps
its results, and its id is in the runs table before any request is added: a run that dies,
or a Mac that sleeps for a day, leaves every submitted unit leased to the batch, and the next
`go --batch` takes them back (`only_own`), asks xAI which of them the batch really holds, adds
only the others, and collects. A unit is never added twice to a batch, nor to two batches.

Guards are the live run's: the claimer only claims what the cap can pay for at the worst case
(submitted units count as committed until their result is in); every result's
`cost_in_usd_ticks` feeds the ledger and its drift check. When a guard stops the run, the batch
is cancelled and what was done is still collected and written; an interrupted run leaves the
batch open for the next start."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from knrun.errors import ExitCode
from knrun.job import JobSpec
from knrun.pricing import ModelPrice, format_usd
from knrun.run import judge
from knrun.run.claimer import Claimer
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, RunState
from knrun.run.ledger import Ledger
from knrun.store.base import SqlUnitStore
from knrun.store.types import Unit
from knrun.xai import (
    AuthFailed,
    BadRequest,
    CreditExhausted,
    ModelUnavailable,
    PossiblyBilled,
    ServerError,
    XaiError,
)
from knrun.xai.batch import BatchApi, BatchInfo, BatchResult
from knrun.xai.client import chat_body

Record = Callable[[judge.Judged], Awaitable[None]]
CHUNK = 100  # requests per add call: far below xAI's 25 MB a call at any prompt knrun sends
ADD_GAP_S = 0.1  # between add calls: xAI allows about 1,000 per 30 s per team
BATCH_LEASE_S = 30 * 86_400.0  # as long as xAI keeps a batch's results
# The stops that end a batch too (its pending requests would be billed for a run that halted);
# any other stop (Ctrl-C, a store outage) leaves it open for the next start to collect.
CANCELS_BATCH = {ExitCode.DRIFT, ExitCode.FAILURE_RATE, ExitCode.BREAKER}


def batch_owner(batch_id: str) -> str:
    return f"batch:{batch_id}"


@dataclass
class BatchHandle:
    """The batch a run feeds: its id and what this process knows of it."""

    batch_id: str
    version: str
    awaiting: dict[str, Unit] = field(default_factory=dict)  # in the batch, no result yet
    info: BatchInfo | None = None
    submitted_all: bool = False
    closed: bool = False  # nothing of it is pending any more, and every result is in
    created: bool = False  # by this run: every one of its results is this run's

    def request_id(self, unit: Unit) -> str:
        return f"{self.version}:{unit.id}"


class BatchEngine:
    def __init__(
        self,
        *,
        job: JobSpec,
        price: ModelPrice,
        api: BatchApi,
        handle: BatchHandle,
        store: SqlUnitStore,
        config: RunConfig,
        state: RunState,
        control: Control,
        ledger: Ledger,
        record: Record,
        run_id: str,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.job, self.price, self.api, self.handle = job, price, api, handle
        self.store, self.config, self.state = store, config, state
        self.control, self.emit, self.record = control, control.emit, record
        self.ledger = ledger
        self.run_id, self._sleep = run_id, sleep
        self.owner = batch_owner(handle.batch_id)
        self._held: set[str] = set()  # request ids xAI says the batch holds
        self._cancel_sent = False  # this run cancelled the batch
        self._done_claiming = False
        self._cancelled_before = False  # the batch was cancelled before this run began
        self._cancelled_meanwhile = False  # cancelled at xAI while this run was adding to it
        self._read_from: str | None = None  # the first results page not yet read in full

    def start(self, claimer: Claimer) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self._guarded(claimer))]

    def keeps_leases(self) -> bool:
        """The batch's units stay leased to it until nothing of it is pending and every
        result is in; then what is left (cancelled requests never ran) goes back."""
        return not self.handle.closed

    async def _guarded(self, claimer: Claimer) -> None:
        try:
            await self._run(claimer)
        except XaiError as exc:
            self._stop_for(exc)
        except Exception as exc:  # a bug: stop with a message, not a traceback
            self.control.request_stop(
                f"internal error in the batch engine: {exc!r}", ExitCode.FAILURE
            )
        finally:
            self.state.in_flight = len(self.handle.awaiting)

    async def prepare(self) -> None:
        """Before the claimer claims anything: what the batch already holds, and the units an
        earlier run left leased to it (a fresh claim would be mixed up with them)."""
        try:
            info = self.handle.info = await self.api.get(self.handle.batch_id)
            self._held = await self.api.request_ids(self.handle.batch_id)
            self._cancelled_before = info.cancelled or info.cancelled_by_xai is not None
            # A cancelled batch (by the operator or xAI): collect what ran, add nothing.
            await self._take_back_own(add_missing=not self._cancelled_before)
        except XaiError as exc:
            self._stop_for(exc)  # the collector winds down: cancels if a guard, collects

    async def _run(self, claimer: Claimer) -> None:
        collector = asyncio.create_task(self._collect_until_done())
        try:
            if not self._cancelled_before and not self.control.stopping:
                await self._submit(claimer)
        except XaiError as exc:
            self._stop_for(exc)  # the collector winds down: cancels if a guard, collects
        self.handle.submitted_all = not self.control.stopping
        try:
            await collector
        finally:
            if not collector.done():
                collector.cancel()

    # -- submission -------------------------------------------------------------------------------

    async def _take_back_own(self, *, add_missing: bool) -> None:
        """Units an earlier run of this batch left leased to it: those xAI holds wait for
        their results; the others (the run died before adding them) are added now, unless
        the batch is cancelled (then they go back when the run ends)."""
        cursor: int | None = None
        while page := await self.store.claim(
            CHUNK * 5, self.owner, BATCH_LEASE_S, start=cursor, only_own=True
        ):
            cursor = page[-1].position + 1
            missing = []
            for unit in page:
                rid = self.handle.request_id(unit)
                if rid in self._held:
                    self.handle.awaiting[rid] = unit
                else:
                    missing.append(unit)
            if add_missing:
                await self._add(missing)
        if self.handle.awaiting:
            self.emit(
                Event(
                    "batch_resumed",
                    f"{len(self.handle.awaiting)} requests already in batch "
                    f"{self.handle.batch_id}: collecting them",
                )
            )
        self._publish()

    async def _submit(self, claimer: Claimer) -> None:
        chunk: list[Unit] = []
        while not self.control.stopping and not self._cancelled_meanwhile:
            unit = await self._next(claimer, wait=not chunk)
            if unit is not None:
                chunk.append(unit)
            if chunk and (unit is None or len(chunk) >= CHUNK):
                await self._add(chunk)
                chunk = []
                await self._sleep(ADD_GAP_S)
            if unit is None and claimer.queue.empty() and self._done_claiming:
                return

    async def _next(self, claimer: Claimer, *, wait: bool) -> Unit | None:
        """The next claimed unit; None when there is none now (or no more at all)."""
        if not wait and claimer.queue.empty():
            return None
        unit = await claimer.take()
        if unit is None:
            self._done_claiming = True
        return unit

    async def _add(self, units: list[Unit], *, again_if_unknown: bool = True) -> None:
        todo = [u for u in units if self.handle.request_id(u) not in self._held]
        if not todo:
            return
        requests = [(self.handle.request_id(u), self._chat_body(u)) for u in todo]
        try:
            await self.api.add(self.handle.batch_id, requests)
        except BadRequest:
            info = self.handle.info = await self.api.get(self.handle.batch_id)
            if not (info.cancelled or info.cancelled_by_xai):
                raise
            self._cancelled_meanwhile = True  # the collector says by whom
            return
        except (PossiblyBilled, ServerError) as exc:
            if not again_if_unknown:
                raise
            # Sent, and no usable answer (a timeout, a dropped connection, a 5xx that may come
            # after the add was applied): the batch may hold them. xAI's own list says which;
            # the others are added once more.
            self.emit(
                Event(
                    "batch_add_unknown", f"adding {len(todo)} requests: {exc}; re-reading the batch"
                )
            )
            self._held = await self.api.request_ids(self.handle.batch_id)
            self._awaiting([u for u in todo if self.handle.request_id(u) in self._held])
            await self._add(todo, again_if_unknown=False)
            return
        self._held.update(rid for rid, _ in requests)
        self._awaiting(todo)

    def _awaiting(self, units: list[Unit]) -> None:
        """Units the batch holds now: their results are to be collected."""
        for unit in units:
            self.handle.awaiting[self.handle.request_id(unit)] = unit
        self.state.sent += len(units)
        self._publish()

    def _chat_body(self, unit: Unit) -> dict[str, Any]:
        job = self.job
        return chat_body(
            model=job.model,
            messages=job.render(unit.inputs),
            temperature=job.temperature,
            max_completion_tokens=job.max_output_tokens,
            response_schema=job.response_schema,
            schema_name=job.schema_name,
            reasoning_effort=job.reasoning_effort,
        )

    # -- collection -------------------------------------------------------------------------------

    async def _collect_until_done(self) -> None:
        poll = self.config.batch_poll_s * self.config.time_scale  # real seconds
        while True:
            await self._collect()
            info = self.handle.info
            if self.control.stopping:
                await self._wind_down()
                return
            if self.config.batch_no_wait and self.handle.submitted_all and self.handle.awaiting:
                self.control.request_stop(
                    f"batch {self.handle.batch_id}: {len(self.handle.awaiting):,} requests "
                    "submitted and pending at xAI (results typically within 24 h); run "
                    "`knrun go --batch` again to collect them",
                    ExitCode.OK,
                )
                return
            if info is not None and info.cancelled_by_xai:
                await self._collect()
                self.handle.closed = self.handle.info is not None and self.handle.info.done
                self.control.request_stop(
                    f"xAI cancelled batch {self.handle.batch_id}: {info.cancelled_by_xai}",
                    ExitCode.BREAKER,
                )
                return
            if self.handle.submitted_all and not self.handle.awaiting:
                # Every request of the batch has its result here (the counters may lag).
                self.handle.closed = True
                final = self.handle.info = await self.api.get(self.handle.batch_id)
                self.state.batch = batch_counters(final)
                self._compare_totals(final)
                return
            if self.handle.submitted_all and info is not None and info.done:
                # Nothing pending, yet some never came back: cancelled (by the operator).
                self.handle.closed = True
                self.emit(
                    Event(
                        "batch_cancelled",
                        f"{len(self.handle.awaiting)} requests of batch {self.handle.batch_id} "
                        "were cancelled before they ran: given back",
                    )
                )
                return
            await self.control.pause(poll)  # wakes at once when a guard stops the run

    async def _wind_down(self) -> None:
        """A guard stopped the run: cancel what is pending (it would be billed), collect what
        is done. Any other stop leaves the batch open for the next start."""
        if not self._held and not self.handle.awaiting:
            self.handle.closed = True  # nothing was ever added: nothing to come back to
            return
        if self.control.exit_code in CANCELS_BATCH and not self._cancel_sent:
            self._cancel_sent = True
            with_message = self.control.reason or "the run stopped"
            try:
                self.handle.info = await self.api.cancel(self.handle.batch_id)
                self.emit(
                    Event(
                        "batch_cancelled", f"batch {self.handle.batch_id} cancelled: {with_message}"
                    )
                )
            except XaiError as exc:
                self.emit(
                    Event(
                        "batch_cancel_failed",
                        f"cancelling batch {self.handle.batch_id}: {exc}; cancel it with "
                        f"`knrun batch cancel {self.handle.batch_id}`",
                    )
                )
                return
            await self._collect()
            self.handle.closed = self.handle.info is not None and self.handle.info.done

    async def _collect(self) -> None:
        """Read the counters and page through the results that came since the last read.
        Pages already read in full are not read again: reading every page at every poll would
        cost a 15,000-unit batch 150 pages a poll. Once nothing is pending, one pass from the
        start catches any result the incremental reads missed (xAI does not document that
        results are appended in order)."""
        info = self.handle.info = await self.api.get(self.handle.batch_id)
        self.state.batch = batch_counters(info)
        if not self.handle.awaiting or info.num_success + info.num_error == 0:
            return
        await self._read_results(self._read_from)
        if self.handle.awaiting and info.done:
            await self._read_results(None, full=True)
        self._publish()

    async def _read_results(self, token: str | None, *, full: bool = False) -> None:
        while self.handle.awaiting:
            page, following = await self.api.results(self.handle.batch_id, self.job.model, token)
            self.state.batch_pages += 1
            fresh = {r.request_id: r for r in page if r.request_id in self.handle.awaiting}
            # Together: the spool commits concurrent appends as one (one fsync a page, not one
            # a result, which made collecting 15,000 results take longer than xAI did).
            await asyncio.gather(*(self._take(result) for result in fresh.values()))
            if following is None:
                return  # a partial last page: the next read starts at it again
            token = following
            if not full:
                self._read_from = following  # every page before it was read in full

    async def _take(self, result: BatchResult) -> None:
        unit = self.handle.awaiting.pop(result.request_id)
        attempt = judge.Attempt(
            self.run_id,
            self.owner,
            f"{self.handle.batch_id}:{result.request_id}",
            self.job.request_hash,
        )
        if result.unreadable:
            # A reply came and cannot be read: xAI may have billed it, so it counts at its
            # worst case, as an unreadable live reply does.
            worst = self.ledger.worst_case_ticks(self.job.render(unit.inputs))
            failed = judge.failure(
                unit,
                judge.BAD_RESPONSE,
                f"{result.error}; counted as possibly billed",
                attempt,
                possible_ticks=worst,
                expected_ticks=min(self.ledger.expected_ticks(), worst),
            )
            await self.record(judge.Judged(failed))
        elif result.reply is None:
            failed = judge.failure(unit, judge.BATCH_ERROR, result.error or "", attempt)
            await self.record(judge.Judged(failed))
        else:
            await self.record(judge.judge(result.reply, unit, self.job, self.price, attempt))

    def _compare_totals(self, info: BatchInfo) -> None:
        """xAI's own total for the batch against the results' bills. Only for a batch this run
        created (a resumed batch's earlier results were billed to earlier runs); a warning, not
        a halt: the per-result drift check has already judged each result."""
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

    def _publish(self) -> None:
        self.state.in_flight = len(self.handle.awaiting)
        self.state.peak_in_flight = max(self.state.peak_in_flight, self.state.in_flight)

    def _stop_for(self, exc: XaiError) -> None:
        if isinstance(exc, CreditExhausted):
            self.control.request_stop(f"credit exhausted: {exc}", ExitCode.BREAKER)
        elif isinstance(exc, AuthFailed | ModelUnavailable):
            self.control.request_stop(str(exc), ExitCode.USAGE)
        else:
            self.control.request_stop(f"the Batch API failed: {exc}", ExitCode.FAILURE)


def batch_counters(info: BatchInfo) -> dict[str, Any]:
    return {
        "batch_id": info.batch_id,
        "requests": info.num_requests,
        "pending": info.num_pending,
        "success": info.num_success,
        "error": info.num_error,
        "cancelled": info.num_cancelled,
        "cost_ticks": info.total_cost_ticks,
        "cancelled_by_xai": info.cancelled_by_xai,
    }
