"""Delivering the spool to the store: pending entries read back oldest first, written in batches,
forgotten once the store has them; an entry the store refuses for what it holds (a constraint,
a unit whose row is gone) moves to quarantine, and a store that refuses every write (a revoked
token, a full or read-only database) leaves every entry where it is."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from knrun.errors import StoreError, StoreUnusable
from knrun.spool.db import SpoolDb, decode
from knrun.store.types import Outcome, UnitStore


@dataclass
class Delivery:
    written: int = 0
    quarantined: list[str] = field(default_factory=list)  # "<unit id>: <why>"
    lost: list[str] = field(default_factory=list)  # refused, and never in the spool to keep


class Delivering(SpoolDb):
    if TYPE_CHECKING:  # Holdings'; the Spool has both

        async def quarantine(self, seqs: Sequence[int], reason: str) -> None: ...

    async def pending(
        self, job: str, version: str, limit: int | None = None
    ) -> list[tuple[int, Outcome]]:
        """Entries not yet confirmed by the store, oldest first."""
        if limit is not None and limit <= 0:
            return []
        rows = await self._run(
            "SELECT seq, kind, payload FROM spool WHERE job = ? AND version = ? ORDER BY seq "
            "LIMIT ?",
            (job, version, -1 if limit is None else limit),
        )
        entries, unreadable = [], []
        for seq, kind, payload in rows:
            try:
                entries.append((int(str(seq)), decode(str(kind), str(payload))))
            except (TypeError, ValueError, KeyError) as exc:  # written by another knrun version
                unreadable.append((int(str(seq)), f"unreadable entry: {exc}"))
        for seq, reason in unreadable:
            await self.quarantine([seq], reason)
        return entries

    async def deliver(self, store: UnitStore, batch: list[tuple[int, Outcome]]) -> Delivery:
        """Write `batch` to the store, then forget it here. When the store refuses the batch
        for what it holds, each entry is tried alone and only the ones it refuses are
        quarantined, so one bad result cannot block the spool for ever and its neighbours go in.
        A store that refuses every write (StoreUnusable) and trouble that may pass are raised
        to the caller, with the batch kept. Entries with seq 0 never reached the spool (it
        failed): refused, they are reported as lost."""
        try:
            missing = await store.write_results([outcome for _, outcome in batch])
        except StoreError as exc:
            if exc.retryable or isinstance(exc, StoreUnusable):
                raise
            return await self._one_by_one(store, batch)
        return await self._settle(batch, missing)

    async def _settle(self, batch: list[tuple[int, Outcome]], missing: list[Outcome]) -> Delivery:
        """Forget what the store has; keep what had no row to land on, in quarantine."""
        delivery = Delivery(written=len(batch) - len(missing))
        kept = {id(outcome) for outcome in missing}
        for seq, outcome in batch:
            if id(outcome) in kept:
                why = "no row with this id in the table (deleted, or its id changed)"
                self._refused(delivery, seq, outcome, why)
                if seq:
                    await self.quarantine([seq], why)
        await self.forget([seq for seq, outcome in batch if seq and id(outcome) not in kept])
        return delivery

    async def _one_by_one(self, store: UnitStore, batch: list[tuple[int, Outcome]]) -> Delivery:
        delivery = Delivery()
        for seq, outcome in batch:
            try:
                missing = await store.write_results([outcome])
            except StoreError as exc:
                if exc.retryable or isinstance(exc, StoreUnusable):
                    raise
                self._refused(delivery, seq, outcome, str(exc))
                if seq:
                    await self.quarantine([seq], str(exc))
                continue
            settled = await self._settle([(seq, outcome)], missing)
            delivery.written += settled.written
            delivery.quarantined += settled.quarantined
            delivery.lost += settled.lost
        return delivery

    @staticmethod
    def _refused(delivery: Delivery, seq: int, outcome: Outcome, why: str) -> None:
        (delivery.quarantined if seq else delivery.lost).append(f"{outcome.unit_id}: {why}")

    async def forget(self, seqs: Sequence[int]) -> None:
        """The store has these: drop them."""
        if seqs:
            await self._run(
                "DELETE FROM spool WHERE seq IN (SELECT value FROM json_each(?))",
                (json.dumps(list(seqs)),),
            )
