"""Feeding a batch: units from the claimer, their leases handed to the batch, then added in
chunks. A unit counts against the spend cap from the moment it is taken from the claimer's
queue (at its worst case, as a request in flight does), and until the run's first drift check
has passed, no more than `STAGE_CHECKS` x `drift_every` of this run's requests are outstanding
or judged: xAI bills a batch as it processes it, and the guards see a bill only once its result
is collected, so the bulk of the corpus waits until the first results show the prices are
true."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from knrun.job import JobSpec
from knrun.run.batch.handle import BATCH_LEASE_S, BatchHandle, Doubt
from knrun.run.claimer import Claimer
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, RunState
from knrun.run.ledger import Ledger
from knrun.store.base import SqlUnitStore
from knrun.store.types import Unit
from knrun.xai import BadRequest, PossiblyBilled, ServerError, XaiError
from knrun.xai.batch import BatchApi
from knrun.xai.client import chat_body

CHUNK = 100  # requests per add call: far below xAI's 25 MB a call at any prompt knrun sends
ADD_GAP_S = 0.1  # between add calls: xAI allows about 1,000 per 30 s per team
STAGE_CHECKS = 2  # outstanding requests before the first drift check, in drift intervals
GATE_WAIT_S = 1.0  # how often a closed gate looks again
FILL_WAIT_S = 1.0  # how long a part-filled chunk waits for more units
UNSTAGED = 10**8  # a drift interval this long (preflight's canary) means no checks, no stages


class Submitter:
    def __init__(
        self,
        *,
        api: BatchApi,
        handle: BatchHandle,
        store: SqlUnitStore,
        job: JobSpec,
        config: RunConfig,
        state: RunState,
        control: Control,
        ledger: Ledger,
        run_owner: str,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.api, self.handle, self.store, self.job = api, handle, store, job
        self.config, self.state, self.control, self.ledger = config, state, control, ledger
        self.run_owner, self._clock, self._sleep = run_owner, clock, sleep
        self.taken: list[Unit] = []  # taken from the claimer, not added yet
        self.done = False  # this run adds nothing more (but re-adds a doubtful request once)
        self.gated = False  # waiting for the first drift check before adding more

    async def run(self, claimer: Claimer) -> None:
        try:
            await self._feed(claimer)
        finally:
            self.done = True
            self.publish()

    async def _feed(self, claimer: Claimer) -> None:
        done_claiming = False
        while not self.control.stopping and not self.handle.cancelled:
            space = self._space()
            if space is not None and len(self.taken) >= space:
                if self.taken:
                    await self._flush()
                    continue
                self.gated = True
                if self.config.batch_no_wait:
                    return  # submitted what the guards allow now; a later run adds the rest
                await self._sleep(GATE_WAIT_S)
                continue
            self.gated = False
            unit = await self._take(claimer)
            done_claiming = unit is None
            if isinstance(unit, Unit):
                self.taken.append(unit)
                self.publish()
            if self.taken and (not isinstance(unit, Unit) or len(self.taken) >= CHUNK):
                await self._flush()
            if done_claiming:
                return

    async def _take(self, claimer: Claimer) -> Unit | bool | None:
        """The next unit, or None when the claimer has no more; with units in hand, False when
        none comes for a moment (the claimer waits for the cap, say: what is in hand goes in,
        and its results free the cap)."""
        if not self.taken:
            return await claimer.take()
        try:
            return await asyncio.wait_for(claimer.take(), FILL_WAIT_S * self.config.time_scale)
        except TimeoutError:
            return False

    async def _flush(self) -> None:
        chunk, self.taken = self.taken, []
        await self.add(chunk, transfer=True)
        await self._sleep(ADD_GAP_S)

    def _space(self) -> int | None:
        """Requests that may be taken now (None: no limit): until the first drift check has
        passed, this run has at most `STAGE_CHECKS` x `drift_every` requests outstanding or
        judged (the check comes at `drift_every` judged, so this always leaves room for it)."""
        every = self.config.drift_every
        if self.ledger.verified or every >= UNSTAGED:
            return None
        return max(0, STAGE_CHECKS * every - self.handle.outstanding - self.state.processed)

    async def add(self, units: list[Unit], *, transfer: bool, adds: int = 1) -> None:
        """Add units to the batch: their leases first pass to the batch (a run that dies right
        after leaves them with it, and the next start sorts out which xAI holds). A request
        with no usable answer is a doubt, never sent again blindly; a refused add gives its
        units back."""
        handle = self.handle
        if transfer:
            held = set(
                await self.store.transfer(
                    [u.id for u in units], self.run_owner, handle.owner, BATCH_LEASE_S
                )
            )
            units = [u for u in units if u.id in held]  # a lease lost meanwhile: not ours
        todo = [u for u in units if handle.request_id(u) not in handle.held]
        if not todo:
            return
        requests = [(handle.request_id(u), self._chat_body(u)) for u in todo]
        try:
            await self.api.add(handle.batch_id, requests)
        except (PossiblyBilled, ServerError) as exc:
            for unit in todo:
                handle.doubtful[handle.request_id(unit)] = Doubt(unit, self._clock(), adds)
            self.control.emit(
                Event(
                    "batch_add_unknown",
                    f"adding {len(todo)} requests: {exc}; xAI's request list will say whether "
                    "they landed",
                )
            )
            self.publish()
            return
        except XaiError as exc:
            for unit in todo:  # refused: none of them is in the batch
                handle.give_back[handle.request_id(unit)] = unit
            if isinstance(exc, BadRequest) and await self._cancelled_meanwhile():
                return
            raise
        handle.held.update(rid for rid, _ in requests)
        for unit in todo:
            handle.awaiting[handle.request_id(unit)] = unit
        self.state.sent += len(todo)
        self.publish()

    async def _cancelled_meanwhile(self) -> bool:
        info = await self.api.get(self.handle.batch_id)
        self.handle.cancelled = info.cancelled or info.cancelled_by_xai is not None
        return self.handle.cancelled

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

    def publish(self) -> None:
        """Units committed to this batch (outstanding at xAI, or taken to be added) count as in
        flight: the claimer's cap allowance reads it."""
        state = self.state
        state.in_flight = self.handle.outstanding + len(self.taken)
        state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
