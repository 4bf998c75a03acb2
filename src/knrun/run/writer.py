"""The writer: every outcome to the spool first (on disk before anything else happens), then
from the spool to the store in batches, retrying trouble that may pass; and, at the end, the
run's leases given back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from knrun.errors import ExitCode, KnrunError, StoreError, StoreUnusable
from knrun.job import JobSpec
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, RunState
from knrun.spool import Delivery, Spool
from knrun.store.base import SqlUnitStore
from knrun.store.types import Outcome, UnitFailure, UnitResult

KEEP_LEASE_S = 7 * 86_400.0  # a unit whose result waits in the spool: the next start writes it


class Writer:
    def __init__(
        self,
        *,
        store: SqlUnitStore,
        spool: Spool,
        job: JobSpec,
        config: RunConfig,
        state: RunState,
        control: Control,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.spool, self.job, self.config = store, spool, job, config
        self.state, self.control, self.emit = state, control, control.emit
        self._clock = clock
        self._ready = asyncio.Event()  # an outcome reached the spool
        self._closing = False  # the workers are done: write everything, then stop
        self._abandoned = False  # a second Ctrl-C: stop waiting for the store
        self._unusable = False  # the store refuses every write: no more tries in this run
        self._deadline: float | None = None  # set when the run winds down
        self.unspooled: list[Outcome] = []  # outcomes the spool failed to take (disk full?)
        self.quarantined: list[str] = []  # results the store refused outright, kept aside
        self.lost: list[str] = []  # results refused by the store that the spool never had

    # -- taking outcomes --------------------------------------------------------------------------

    async def spool_outcomes(self, outcomes: list[Outcome]) -> None:
        """Make outcomes durable, then wake the writer."""
        for outcome in outcomes:
            self.state.write_backlog += 1
            try:
                await self.spool.append(outcome, job=self.job.name, version=self.job.version)
            except StoreError as exc:
                # Not durable (a full disk?): still hand it to the writer, but stop.
                self.control.request_stop(f"the local spool failed: {exc}", ExitCode.FAILURE)
                self.unspooled.append(outcome)
        self._ready.set()

    def close(self) -> None:
        """The workers are done: the backlog gets one grace period to reach the store."""
        if self._deadline is None:
            self._deadline = self._clock() + self.config.write_grace_s
        self._closing = True
        self._ready.set()

    def abandon(self) -> None:
        """Stop waiting for the store now; what is left stays in the spool."""
        self._abandoned = True
        self.close()

    @property
    def unwritten(self) -> int:
        """Paid results left in the spool for the next start."""
        return self.state.write_backlog - len(self.unspooled)

    # -- writing ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Drains the spool into the store: a batch once `write_batch` results wait or
        `write_interval_s` after the first, and everything when the run closes. Results are read
        back from the spool, so a long store outage costs disk, not memory."""
        try:
            while True:
                closing = await self._batch_ready()
                await self._drain(until_empty=closing)
                if closing:
                    return
                if self._give_up():  # nothing more goes to the store in this run
                    while not self._closing:
                        self._ready.clear()
                        await self._ready.wait()
                    return
        except KnrunError as exc:  # e.g. the store lost knrun's columns: not worth retrying
            self.control.request_stop(f"writing: {exc}", exc.exit_code)
        except Exception as exc:  # a bug: what was not written stays in the spool
            self.control.request_stop(f"internal error while writing: {exc!r}", ExitCode.FAILURE)

    async def _batch_ready(self) -> bool:
        """Wait until a batch is worth sending; True once the run is closing."""
        deadline: float | None = None
        while not self._closing:
            backlog = self.state.write_backlog
            if backlog >= self.config.write_batch:
                return False
            timeout = None
            if backlog > 0:
                if deadline is None:
                    deadline = self._clock() + self.config.write_interval_s
                timeout = deadline - self._clock()
                if timeout <= 0:
                    return False
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        return True

    async def _drain(self, *, until_empty: bool) -> None:
        size = self.config.write_batch
        while not self._give_up():
            batch: list[tuple[int, Outcome]] = [(0, o) for o in self.unspooled[:size]]
            try:
                batch += await self.spool.pending(
                    self.job.name, self.job.version, limit=size - len(batch)
                )
            except StoreError as exc:  # the spool cannot be read: still write what is in memory
                self.emit(Event("spool_error", str(exc)))
                if not batch:
                    return
            if not batch or not await self._write(batch):
                return
            if len(batch) < size and not until_empty:
                return

    async def _write(self, batch: list[tuple[int, Outcome]]) -> bool:
        """Deliver one batch through the spool, retrying trouble that may pass; False if the
        run gave up on writing (what is left stays in the spool)."""
        delay = self.config.store_retry_base_s
        while not self._give_up():
            try:
                delivery = await self.spool.deliver(self.store, batch)
            except StoreUnusable as exc:
                # Every write will be refused until the operator fixes the store: stop, and keep
                # every paid result in the spool for the next start.
                self.control.request_stop(
                    f"the store refuses every write: {exc}. Paid results stay in the spool "
                    "(`knrun spool`) and are written at the next start",
                    exc.exit_code,
                )
                self._unusable = True
                return False
            except StoreError as exc:
                delay = await self._trouble(exc, delay)
                continue
            self._delivered(batch, delivery)
            return True
        return False

    def _delivered(self, batch: list[tuple[int, Outcome]], delivery: Delivery) -> None:
        del self.unspooled[: sum(1 for seq, _ in batch if not seq)]
        self.state.written += delivery.written
        self.state.write_backlog -= len(batch)
        self.emit(
            Event("written", f"{delivery.written} results", {"backlog": self.state.write_backlog})
        )
        for what in delivery.quarantined:
            self.quarantined.append(what)
            self.emit(Event("quarantined", f"the store refused a result outright: {what}"))
        for what in delivery.lost:
            self.lost.append(what)
            self.emit(Event("lost", f"a paid result could not be saved anywhere: {what}"))

    def _give_up(self) -> bool:
        """After a stop, the backlog gets `write_grace_s` to drain; what is left stays in the
        spool. A store that refuses every write gets no more tries in this run."""
        if self._abandoned or self._unusable:
            return True
        return self._deadline is not None and self._clock() > self._deadline

    async def _trouble(self, exc: Exception, delay: float) -> float:
        # A plain sleep, not the control's pause: a stopping run must not retry a struggling
        # store faster.
        self.state.store_errors += 1
        self.emit(Event("store_error", f"write: {exc}", {"retry_in_s": delay}))
        await asyncio.sleep(delay)
        return min(delay * 2, self.config.store_retry_max_s)

    # -- the end ----------------------------------------------------------------------------------

    async def release_leases(self, owner: str) -> None:
        """Give back units claimed but never finished, so the next run takes them at once.
        Units whose results still wait in the spool keep their lease, for `KEEP_LEASE_S`: a
        failure is only recorded under its run's lease, and no other runner may buy them
        again meanwhile; the next start here writes them first, then gives the leases back."""
        waiting = await self._waiting_units() if self.state.write_backlog > 0 else []
        try:
            if waiting:
                await self.store.renew(owner, KEEP_LEASE_S, waiting)
            released = await self.store.release(owner, keep=waiting)
        except Exception as exc:  # the leases expire on their own; say so and move on
            self.emit(Event("store_error", f"release: {exc}", {}))
            if waiting:
                self.emit(
                    Event(
                        "leases_kept",
                        f"{len(waiting)} results wait in the spool and their leases could not "
                        f"be extended ({exc}): start knrun here again within "
                        f"{self.config.lease_s / 60:.0f} minutes, or another runner may buy "
                        "them again",
                    )
                )
            return
        if waiting:
            self.emit(
                Event(
                    "leases_kept",
                    f"{len(waiting)} results wait in the spool: their units stay leased to this "
                    "folder for 7 days; the next start here writes them",
                )
            )
        if released:
            self.emit(Event("released", f"{released} unstarted units back to the pool", {}))

    async def _waiting_units(self) -> list[Any]:
        """The units of this run's results and failures still in the spool."""
        try:
            pending = await self.spool.pending(self.job.name, self.job.version)
        except StoreError:
            return []
        return [
            o.unit_id
            for _, o in pending
            if isinstance(o, UnitResult | UnitFailure) and o.run_id == self.state.run_id
        ]
