"""The local spool: every paid result is on disk here before knrun tries to write it to the store,
and every request in flight is marked here before it is sent.

The writer reads pending entries back and deletes them once the store has them, so the spool holds
only what is not yet in the store and memory does not grow with a backlog. Entries left by a run
that died are written first at the next start: a store outage, or the process dying between
paying and writing, loses nothing. Marks left by a run that died become charges at the next start
(`settle_in_flight`): a request a kill cut off may have been billed. `knrun spool` shows what is
held, for every job and version."""

from __future__ import annotations

from pathlib import Path

from knrun.clock import utc_now
from knrun.spool.db import decode, encode
from knrun.spool.delivery import Delivering, Delivery
from knrun.spool.held import Held, Holdings
from knrun.spool.writes import InFlight, Writes
from knrun.store.types import PossibleCharge

__all__ = ["Delivery", "Held", "InFlight", "Spool", "decode", "encode"]


class Spool(Writes, Delivering, Holdings):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._init_writes()

    async def settle_in_flight(self, marks: list[InFlight]) -> list[PossibleCharge]:
        """Marks of requests that were sent and never answered (their run was cut off) become
        possible charges, at their worst case, in the spool: the next delivery writes them
        to the store's charges, and each mark goes with its charge."""
        charges = []
        for mark in marks:
            charge = PossibleCharge(
                unit_id=mark.unit_id,
                run_id=mark.run_id,
                attempt_id=mark.attempt_id,
                possible_ticks=mark.possible_ticks,
                expected_ticks=mark.expected_ticks,
                processed_at=utc_now(),
            )
            await self.append(charge, job=mark.job, version=mark.version)
            charges.append(charge)
        return charges

    async def close(self) -> None:
        if self._flusher is not None:
            await self._flusher
        await self._close_db()
