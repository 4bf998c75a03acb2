"""The claimer: keeps a bounded queue of leased units fed from the store, in rowid order, within
what the spend cap allows; takes back a lost claim's units; renews the run's leases."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from knrun.errors import ExitCode, KnrunError, StoreError
from knrun.run.config import RunConfig
from knrun.run.control import Control
from knrun.run.events import Event, RunState
from knrun.run.ledger import Ledger
from knrun.store.base import SqlUnitStore
from knrun.store.schema import MAX_ROWID
from knrun.store.types import Unit


class Claimer:
    def __init__(
        self,
        *,
        store: SqlUnitStore,
        config: RunConfig,
        state: RunState,
        control: Control,
        ledger: Ledger,
        owner: str,
        lease_s: float,
        page_size: Callable[[], int] | None = None,
    ) -> None:
        self.store, self.config, self.state = store, config, state
        # Units per claim: about what the engine may have in flight now (the pacing's limit).
        self.page_size = page_size or (lambda: config.concurrency)
        self.control, self.emit, self.ledger = control, control.emit, ledger
        self.owner, self.lease_s = owner, lease_s
        # Unbounded as a container; the claimer keeps it between half and one-and-a-half pages,
        # so end-of-work markers can always be added without waiting.
        self.queue: asyncio.Queue[Unit | None] = asyncio.Queue()
        self._room = asyncio.Event()
        control.on_stop(self._room.set)
        self.claimed = 0
        self._lost_claims = 0  # claims that failed after they may have been applied

    async def take(self) -> Unit | None:
        """The next unit for a worker; None when there is no more work."""
        unit = await self.queue.get()
        self.state.queued = self.queue.qsize()
        self._room.set()
        return unit

    async def run(self, workers: int) -> None:
        try:
            await self._claim_until_done()
        except KnrunError as exc:
            self.control.request_stop(f"claiming: {exc}", exc.exit_code)
        except Exception as exc:  # a bug: stop with a message, not a traceback
            self.control.request_stop(f"internal error while claiming: {exc!r}", ExitCode.FAILURE)
        finally:
            for _ in range(workers):  # one end-of-work marker per worker
                self.queue.put_nowait(None)

    async def _claim_until_done(self) -> None:
        delay = self.config.store_retry_base_s
        # Claims go in rowid order from where the last one ended. At the end of the table a go
        # run looks once more from the start (for leases given back meanwhile); a retry run
        # does not, or one night could spend several of a unit's attempts.
        cursor: int | None = None
        while await self._room_for_a_page():
            want = self._claim_size()
            if want is None or (want == 0 and await self._cap_blocks()):
                return
            if want == 0 and self.config.batch_no_wait:
                return  # a batch run that will not wait: submitted what the cap allows
            if want == 0:  # the cap is full of committed units: wait for some to finish
                await self.control.pause(0.05)
                continue
            try:
                page = await self._claim(want, cursor)
            except StoreError as exc:
                if not exc.retryable:
                    self.control.request_stop(f"the store refused a claim: {exc}", exc.exit_code)
                    return
                # The claim may have been applied with its reply lost: its page is leased to
                # this run, and only this run can take it back before the lease runs out.
                self._lost_claims += 1
                delay = await self._store_trouble("claim", exc, delay)  # busy, an outage
                continue
            delay = self.config.store_retry_base_s
            if not page:
                if cursor is not None and not self.config.failed_only:
                    cursor = None  # past the end: look once more from the start
                    continue
                if self._lost_claims and await self._reclaim_own():
                    continue
                return  # nothing eligible is left
            # The next claim starts just past this page; past the last possible rowid, at the end.
            after = page[-1].position + 1
            cursor = after if after <= MAX_ROWID else None
            self.claimed += len(page)
            self._queue_up(page)

    async def _room_for_a_page(self) -> bool:
        """Wait until the queue falls to half a page; False once the run is stopping."""
        low_water = self.page_size() // 2
        while self.queue.qsize() > low_water and not self.control.stopping:
            self._room.clear()
            await self._room.wait()
        return not self.control.stopping

    async def _claim(self, want: int, cursor: int | None, *, own: bool = False) -> list[Unit]:
        return await self.store.claim(
            want,
            self.owner,
            self.lease_s,
            failed_only=self.config.failed_only,
            max_attempts=self.config.max_attempts,
            start=cursor,
            reasons=self.config.retry_reasons,
            own=own,
        )

    def _queue_up(self, page: list[Unit]) -> None:
        for unit in page:
            self.queue.put_nowait(unit)
        self.state.queued = self.queue.qsize()

    async def _reclaim_own(self) -> bool:
        """After a claim whose reply was lost: once everything in hand is done and written,
        any unit still leased to this run and not finished is one of that page's. Take them
        back (True when there were some)."""
        while self.state.in_flight or self.queue.qsize() or self.state.write_backlog:
            if self.control.stopping:
                return False
            await self.control.pause(0.05)
        self._lost_claims = 0
        try:
            page = await self._claim(max(self.page_size(), 1), None, own=True)
        except StoreError as exc:
            self._lost_claims += 1  # the next end of the table tries again
            self.emit(Event("store_error", f"taking back a lost claim's units: {exc}"))
            return not self.control.stopping
        if page:
            self.emit(Event("reclaimed", f"{len(page)} units of a claim whose reply was lost"))
            self._lost_claims = 1  # there may be more pages of them
        self._queue_up(page)
        return bool(page)

    def _claim_size(self) -> int | None:
        """Units to claim now: 0 to wait, None when no more may be claimed at all."""
        want = max(self.page_size(), 1)
        if self.config.max_units is not None:
            left = self.config.max_units - self.claimed
            if left <= 0:
                return None
            want = min(want, left)
        allowed = self.ledger.allowance(self.state.in_flight + self.queue.qsize())
        return want if allowed is None else min(want, allowed)

    async def _cap_blocks(self) -> bool:
        """The cap allows no claim and nothing is in flight to free any of it: stop at the cap
        unless nothing is left to claim anyway (True: the claimer is done)."""
        if self.state.in_flight + self.queue.qsize():
            return False
        if not await self._nothing_left():
            self.ledger.stop_at_cap()
        return True

    async def _nothing_left(self) -> bool:
        """No unit could be claimed now anyway (those whose results are still on their way to
        the store hold this run's lease, so they do not count)."""
        try:
            claimable = await self.store.count_claimable(
                failed_only=self.config.failed_only,
                max_attempts=self.config.max_attempts,
                reasons=self.config.retry_reasons,
            )
        except StoreError:
            return False
        return claimable == 0

    async def _store_trouble(self, what: str, exc: Exception, delay: float) -> float:
        self.state.store_errors += 1
        self.emit(Event("store_error", f"{what}: {exc}", {"retry_in_s": delay}))
        await self.control.pause(delay)
        return min(delay * 2, self.config.store_retry_max_s)

    async def heartbeat(self) -> None:
        """Renew this run's leases (queued, in flight, waiting in the spool) well before they
        run out, so a slow unit never outlives its lease and goes to a second runner."""
        every = self.lease_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                renewed = await self.store.renew(self.owner, self.lease_s)
            except StoreError as exc:  # the next beat tries again; units are bounded anyway
                self.emit(Event("store_error", f"renewing leases: {exc}"))
                continue
            self.emit(Event("leases_renewed", f"{renewed} leases", {"leases": renewed}))
