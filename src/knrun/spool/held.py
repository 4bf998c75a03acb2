"""What the spool holds, for the operator (`knrun spool`) and for the money figures: pending and
quarantined entries for every job and version, the money pending entries carry, and the moves:
quarantine, set aside, requeue."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from knrun.spool.db import COLUMNS, SpoolDb, decode
from knrun.store.types import AttemptRefund, Money


@dataclass(frozen=True)
class Held:
    """What the spool holds for one job and version."""

    job: str
    version: str
    pending: int
    quarantined: int


class Holdings(SpoolDb):
    async def held(self) -> list[Held]:
        """Pending and quarantined entries for every job and version."""
        rows = await self._run(
            "SELECT job, version, SUM(pending), SUM(quarantined) FROM ("
            "SELECT job, version, 1 AS pending, 0 AS quarantined FROM spool UNION ALL "
            "SELECT job, version, 0, 1 FROM quarantine) "
            "GROUP BY job, version ORDER BY job, version",
            (),
        )
        return [Held(str(j), str(v), int(str(p)), int(str(q))) for j, v, p, q in rows]

    async def quarantine_reasons(self, job: str, version: str, limit: int = 5) -> list[str]:
        rows = await self._run(
            "SELECT reason, COUNT(*) FROM quarantine WHERE job = ? AND version = ? "
            "GROUP BY reason ORDER BY COUNT(*) DESC LIMIT ?",
            (job, version, limit),
        )
        return [f"{reason} ({count})" for reason, count in rows]

    async def quarantine(self, seqs: Sequence[int], reason: str) -> None:
        ids = json.dumps(list(seqs))
        await self._move(
            "spool", "quarantine", "seq IN (SELECT value FROM json_each(?))", (ids,), reason
        )

    async def set_aside(self, job: str, version: str, reason: str) -> None:
        """The operator decided these pending entries are not to be written: keep them apart."""
        await self._move("spool", "quarantine", "job = ? AND version = ?", (job, version), reason)

    async def requeue(self, job: str, version: str) -> None:
        """Quarantined entries back to pending, for the next replay to try again."""
        await self._move("quarantine", "spool", "job = ? AND version = ?", (job, version), None)

    async def _move(
        self, source: str, target: str, where: str, params: tuple[object, ...], reason: str | None
    ) -> None:
        if target == "quarantine":
            copy = (
                f"INSERT OR REPLACE INTO quarantine ({COLUMNS}, reason, quarantined_at) "
                f"SELECT {COLUMNS}, ?, ? FROM spool WHERE {where}",
                ((reason or "")[:1000], time.time(), *params),
            )
        else:
            copy = (
                f"INSERT OR REPLACE INTO spool ({COLUMNS}) SELECT {COLUMNS} FROM quarantine "
                f"WHERE {where}",
                params,
            )
        await self._run_many([copy, (f"DELETE FROM {source} WHERE {where}", params)])

    async def quarantined(self) -> int:
        rows = await self._run("SELECT COUNT(*) FROM quarantine", ())
        return int(str(rows[0][0]))

    async def money(self, job: str, version: str, *, since: float = 0.0) -> Money:
        """What this version's pending entries cost (paid, not in the store yet), appended at
        or after `since` (Unix seconds)."""
        rows = await self._run(
            "SELECT kind, payload FROM spool WHERE job = ? AND version = ? AND created_at >= ?",
            (job, version, since),
        )
        money = Money()
        for kind, payload in rows:
            outcome = decode(str(kind), str(payload))
            if not isinstance(outcome, AttemptRefund):
                money.add(outcome)
        return money
